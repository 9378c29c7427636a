"""What a served reply is made of: text pieces, tool calls, per-token log-probs, the end.

Handlers produce :class:`Piece` objects and end with an :class:`Outcome`; the app layer turns
them into JSON or SSE. Replies with tools or a response format are parsed by the chat models'
output parser (:class:`~langchain_rankguide.chat_models.messages.OutputStream`) into content
and OpenAI tool calls (:class:`ReplyParser`); per-token log-probs are OpenAI's chat entries
(:func:`logprob_entry`), turned into the completions shape by :func:`completion_logprobs`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from langchain_rankguide.answer_format import AnswerFormat
from langchain_rankguide.chat_models.messages import OutputDelta, OutputStream, new_tool_call_id
from langchain_rankguide.engine import StepToken


@dataclass
class Piece:
    """Part of a reply: answer ``content``, ``reasoning`` (a step) or a ``tool_call``.

    Attributes:
        text: the text (empty for a tool call).
        kind: what it is.
        step: a RankGuide step record (reasoning pieces of the ``rankguide`` model).
        call: an OpenAI tool call (``{"id", "type": "function", "function": {"name",
            "arguments"}}``, arguments as JSON text).
        logprobs: OpenAI chat log-prob entries of the tokens generated since the last piece.
    """

    text: str
    kind: Literal["content", "reasoning", "tool_call"] = "content"
    step: dict[str, Any] | None = None
    call: dict[str, Any] | None = None
    logprobs: list[dict[str, Any]] | None = None


@dataclass
class Outcome:
    """How a generation ended."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    vendor: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    stop_reason: str | None = None
    """The stop string that ended generation; ``None`` for end-of-sequence or length (sent
    as vLLM's ``stop_reason``, so a client can tell a matched delimiter from EOS)."""
    logprobs: list[dict[str, Any]] | None = None
    """Log-prob entries of tokens no piece carried (those of a matched stop string)."""


Generation = Generator[Piece, None, Outcome]

_FLOOR = -9999.0
"""Sent for a log-probability that is not finite (JSON has no infinities)."""


def _entry(tokenizer: Any, token_id: int, logprob: float) -> dict[str, Any]:
    text = str(tokenizer.decode([token_id], skip_special_tokens=False))
    value = logprob if math.isfinite(logprob) else _FLOOR
    return {"token": text, "logprob": value, "bytes": list(text.encode("utf-8"))}


def logprob_entry(tokenizer: Any, token: StepToken, top: int) -> dict[str, Any]:
    """OpenAI's chat log-prob entry of a generated token, with its ``top`` likeliest peers.

    The probabilities are the model's own, before any logits processor (a grammar, sampling
    settings), as OpenAI and vLLM report them.
    """
    entry = _entry(tokenizer, token.id, token.logprob)
    alternatives: list[dict[str, Any]] = []
    if top > 0:
        values, ids = torch.topk(token.logprobs.float().cpu(), min(top, token.logprobs.numel()))
        alternatives = [
            _entry(tokenizer, int(i), float(v)) for v, i in zip(values, ids, strict=True)
        ]
    return {**entry, "top_logprobs": alternatives}


def completion_logprobs(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The completions API's ``logprobs`` object for chat entries."""
    offsets, at = [], 0
    for entry in entries:
        offsets.append(at)
        at += len(entry["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [
            {alt["token"]: alt["logprob"] for alt in e["top_logprobs"]} for e in entries
        ],
        "text_offset": offsets,
    }


class ReplyParser:
    """Generated text as pieces: plain content, or parsed for tool calls under a format.

    Args:
        tokenizer: the writer's tokenizer (its ``response_template`` when it has one), or
            ``None`` (a remote model).
        output: the reply's format; ``None`` or one without tools or grammar: plain text.
        prompt: the rendered prompt (an open ``<think>`` there matters to the parser).
    """

    def __init__(self, tokenizer: Any, output: AnswerFormat | None, prompt: str = "") -> None:
        self.calls = 0
        """Tool calls found so far."""
        self._stream: OutputStream | None = None
        if output is not None and (output.offered_tools or output.constrained):
            self._stream = OutputStream(
                tokenizer, prompt=prompt, tools=output.offered_tools, own_format=output.constrained
            )

    def feed(self, text: str) -> list[Piece]:
        """Pieces completed by more generated text."""
        if self._stream is None:
            return [Piece(text)] if text else []
        return self._pieces(self._stream.feed(text))

    def finish(self) -> list[Piece]:
        """Pieces left at the end of generation."""
        return [] if self._stream is None else self._pieces(self._stream.finish())

    def _pieces(self, deltas: Sequence[OutputDelta]) -> list[Piece]:
        pieces = []
        for delta in deltas:
            if delta.kind == "tool_call":
                function = {"name": delta.name, "arguments": json.dumps(delta.arguments)}
                call = {"id": new_tool_call_id(), "type": "function", "function": function}
                pieces.append(Piece("", "tool_call", call=call))
                self.calls += 1
            elif delta.kind == "invalid_tool_call":
                # OpenAI has no invalid calls: the markup stays in the content, nothing is lost.
                pieces.append(Piece(delta.text))
            elif delta.text:
                pieces.append(Piece(delta.text, delta.kind))
        return pieces
