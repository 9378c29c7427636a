"""What one call of ``ChatSteeredHuggingFace`` runs with: call keywords and their spellings.

The chat model merges its fields, ``model_kwargs`` and the call's own keywords into one
:class:`CallSettings`; this module knows the keywords, the accepted spellings of
``tool_choice`` and ``response_format``, and the token budget a call gets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from langchain_rankguide.engine import SamplingSettings

DEFAULT_MAX_TOKENS = 512
"""Tokens generated when neither the model nor the call sets ``max_tokens``."""

DEFAULT_SIGNALS: tuple[str, ...] = (
    "entropy.first_token",
    "logprob.mean",
    "step.tokens",
    "reflection.cue",
)
"""Per-step signals reported by default (cheap: no hidden states are captured for them)."""

CALL_KEYS = frozenset(
    {
        "model",
        "temperature",
        "max_tokens",
        "top_p",
        "top_k",
        "seed",
        "timeout",
        "chat_template_kwargs",
        "steering",
        "steering_vector",
        "steering_scale",
        "steering_positions",
        "signals",
        "tools",
        "tool_choice",
        "response_format",
    }
)
"""Keyword arguments a call (``invoke(..., **kwargs)``, ``bind``) may override."""

INERT_CALL_KEYS = frozenset({"stream", "parallel_tool_calls", "strict", "n"})
"""Accepted for compatibility with code written for hosted models; they change nothing here."""

Positions = Literal["delimiter", "generated", "all"]


def normalise_tool_choice(choice: Any) -> str | None:
    """Map the accepted ``tool_choice`` spellings to ``None``/``"none"``/``"any"``/a tool name."""
    if choice in (None, "auto", False):
        return None
    if choice is True or choice in ("any", "required"):
        return "any"
    if choice == "none":
        return "none"
    if isinstance(choice, Mapping):
        if choice.get("type") in ("any", "required"):
            return "any"
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        if isinstance(name, str):
            return name
    if isinstance(choice, str):
        return choice
    raise ValueError(f"unsupported tool_choice {choice!r}")


def response_schema(response_format: Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON schema of an OpenAI-style ``response_format`` (``None``: any JSON object)."""
    kind = response_format.get("type")
    if kind == "json_object":
        schema = response_format.get("schema")
        return dict(schema) if isinstance(schema, Mapping) else None
    if kind == "json_schema":
        inner = response_format.get("json_schema", response_format)
        schema = inner.get("schema")
        if isinstance(schema, Mapping):
            return dict(schema)
    raise ValueError(f"unsupported response_format {dict(response_format)!r}")


@dataclass
class CallSettings:
    """Everything one call runs with: model fields, then ``model_kwargs``, then call kwargs."""

    model: str
    temperature: float
    top_p: float
    top_k: int
    seed: int
    max_tokens: int | None
    timeout: float | None
    stop: list[str]
    template_kwargs: dict[str, Any]
    steering: bool
    steering_vector: Any
    steering_scale: float
    steering_positions: Positions
    signals: tuple[str, ...]
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | None = None
    response_format: dict[str, Any] | None = None

    @property
    def sampling(self) -> SamplingSettings:
        """Engine sampling settings."""
        return SamplingSettings(
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, seed=self.seed
        )

    @property
    def offered_tools(self) -> list[dict[str, Any]] | None:
        """The tools shown to the chat template (none when ``tool_choice="none"``)."""
        return self.tools if self.tool_choice != "none" else None

    def token_budget(self, context_length: int | None, prompt_length: int) -> int:
        """Tokens this call may generate: ``max_tokens`` (or the default), within the context."""
        budget = self.max_tokens or DEFAULT_MAX_TOKENS
        if context_length is not None and context_length > prompt_length:
            budget = min(budget, context_length - prompt_length)
        return max(1, budget)
