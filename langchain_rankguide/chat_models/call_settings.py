"""What one call of ``ChatSteeredHuggingFace`` runs with: call keywords and their spellings.

The chat model merges its fields, ``model_kwargs`` and the call's own keywords into one
:class:`CallSettings`; this module knows the keywords and the token budget a call gets. The
spellings of ``tool_choice`` and ``response_format`` are in ``langchain_rankguide.answer_format``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from langchain_rankguide.answer_format import AnswerFormat
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
    def answer_format(self) -> AnswerFormat:
        """The shape of the reply: tools, ``tool_choice`` and ``response_format``."""
        return AnswerFormat.of(self.tools, self.tool_choice, self.response_format)

    @property
    def offered_tools(self) -> list[dict[str, Any]] | None:
        """The tools shown to the chat template (none when ``tool_choice="none"``)."""
        return self.answer_format.offered_tools

    def token_budget(self, context_length: int | None, prompt_length: int) -> int:
        """Tokens this call may generate: ``max_tokens`` (or the default), within the context."""
        budget = self.max_tokens or DEFAULT_MAX_TOKENS
        if context_length is not None and context_length > prompt_length:
            budget = min(budget, context_length - prompt_length)
        return max(1, budget)
