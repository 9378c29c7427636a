"""A tool call the model opens itself (``tool_choice="auto"``) follows the tools' grammar."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoTokenizer

from langchain_rankguide import ChatSteeredHuggingFace
from langchain_rankguide.answer_format import AnswerFormat
from langchain_rankguide.demo.tools import make_dialogue
from langchain_rankguide.engine.grammar import (
    GrammarMatcher,
    JsonStringState,
    grammar_vocab,
    json_constraint,
    llguidance_available,
    tool_call_constraint,
)
from langchain_rankguide.engine.loading import demo_model_dir
from langchain_rankguide.engine.stopping import StepProgress
from langchain_rankguide.engine.triggered_grammar import (
    FreeTextBudget,
    triggered_grammar_hooks,
)

pytestmark = pytest.mark.skipif(
    not llguidance_available(), reason="llguidance (the [structured] extra) is not installed"
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(demo_model_dir("lrm"))


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def allowed(processor, input_ids: list[int], width: int) -> set[int]:
    scores = processor(input_ids, torch.zeros(width))
    return {i for i in range(width) if scores[i] > float("-inf")}


def test_the_grammar_switches_on_at_the_opening_markup_and_off_after_the_call(tokenizer):
    width = len(tokenizer)
    constraint = tool_call_constraint([WEATHER], opened=True)
    [grammar], _ = triggered_grammar_hooks(constraint, tokenizer, [tokenizer.eos_token_id], 64)
    prompt = ids(tokenizer, "<|user|>hi<|end|><|assistant|>")
    assert len(allowed(grammar, prompt, width)) == width  # free text: nothing masked
    text = prompt + ids(tokenizer, "Sure. ")
    assert len(allowed(grammar, text, width)) == width and not grammar.active
    text += ids(tokenizer, "<tool_call>")
    # The only tool's name and the keys are forced: one token is allowed.
    first = allowed(grammar, text, width)
    assert grammar.active and len(first) == 1
    assert tokenizer.decode(list(first)).startswith("{")
    call = '{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    for token in ids(tokenizer, call):
        assert token in allowed(grammar, text, width)
        text.append(token)
    assert len(allowed(grammar, text, width)) == width  # free again after the call
    assert not grammar.active and grammar.calls == 1


def test_the_markup_is_found_by_its_text_whatever_the_pieces(tokenizer):
    constraint = tool_call_constraint([WEATHER], opened=True)
    [grammar], _ = triggered_grammar_hooks(constraint, tokenizer, [tokenizer.eos_token_id], 64)
    prompt = ids(tokenizer, "<|assistant|>")
    # One character per token, not the fused <tool_call> token the tokenizer would choose.
    spelled = [ids(tokenizer, ch)[0] for ch in "<tool_call>"]
    assert len(spelled) == len("<tool_call>")
    grammar(prompt, torch.zeros(len(tokenizer)))  # the first call marks where the reply starts
    grammar(prompt + spelled, torch.zeros(len(tokenizer)))
    assert grammar.active


def test_free_text_stops_at_the_budget_but_an_open_call_may_run_past_it(tokenizer):
    constraint = tool_call_constraint([WEATHER], opened=True)
    [grammar], [budget] = triggered_grammar_hooks(
        constraint, tokenizer, [tokenizer.eos_token_id], 4
    )
    assert isinstance(budget, FreeTextBudget)
    prompt = ids(tokenizer, "<|assistant|>")
    words = ids(tokenizer, "a b c d")
    grammar(prompt, torch.zeros(len(tokenizer)))
    stop = budget(StepProgress(token_ids=words, text="a b c d", searched=0))
    assert stop is not None and stop.reason == "max_tokens"
    opened = ids(tokenizer, "ab<tool_call>{")
    grammar(prompt + opened[:-1], torch.zeros(len(tokenizer)))
    assert grammar.active
    assert budget(StepProgress(token_ids=opened, text="", searched=0)) is None


def test_closing_mode_closes_an_open_string_even_when_the_model_wants_a_brace(tokenizer):
    """Inside a string ``}`` is content: closing on it looped until the overrun ran out."""
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    eos = [tokenizer.eos_token_id]
    matcher = GrammarMatcher(json_constraint(schema), grammar_vocab(tokenizer, eos), eos)
    matcher.consume(ids(tokenizer, '{"a": "x'))
    scores = torch.zeros(len(tokenizer))
    scores[ids(tokenizer, "}")] = 10.0  # the model's favourite
    assert tokenizer.decode([matcher.closing_choice(scores)]).startswith('"')
    assert matcher.closing_cost(16) <= 3  # '"', '}' (or one token for both), then done
    assert JsonStringState().after('{"a": "b\\"}').inside


def test_answer_format_gives_the_call_grammar_only_for_auto_with_tools():
    assert AnswerFormat.of([WEATHER]).call_grammar() is not None
    assert AnswerFormat.of([WEATHER], "none").call_grammar() is None
    assert AnswerFormat.of([WEATHER], "any").call_grammar() is None  # its own grammar
    assert AnswerFormat.of().call_grammar() is None


def valid_call(call: dict, tools: list[dict]) -> bool:
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    if call["name"] not in schemas:
        return False
    properties = schemas[call["name"]]["properties"]
    kinds = {"string": str, "integer": int}
    return set(call["args"]) == set(properties) and all(
        isinstance(value, kinds[properties[key]["type"]]) for key, value in call["args"].items()
    )


def test_every_call_the_demo_lrm_opens_is_valid_against_the_offered_tools():
    """Unconstrained, the demo LRM names tools that are not offered (docs/demo.md)."""
    chat = ChatSteeredHuggingFace(model="demo:lrm", temperature=0, max_tokens=96)
    rng = random.Random("test-triggered-grammar")
    for _ in range(4):
        dialogue = make_dialogue(rng, with_result=False)
        reply = chat.bind_tools(dialogue.tools).invoke(dialogue.messages[0]["content"])
        assert reply.tool_calls and not reply.invalid_tool_calls
        assert all(valid_call(call, dialogue.tools) for call in reply.tool_calls)
        assert reply.response_metadata["finish_reason"] == "tool_calls"
