"""One reply of ``ChatSteeredHuggingFace``, streamed through the step engine's step loop.

The whole reply is one engine step (``stop_at_delimiter=False``): per-call stop strings are the
engine's :class:`~langchain_rankguide.engine.StopStrings`, a grammar (structured output, a
forced tool call) is a logits processor plus a stopping criterion, and steering is an
intervention. What the engine releases is parsed into content, reasoning and tool calls and
turned into LangChain chunks; the last chunk carries usage and metadata.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessageChunk
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk

from langchain_rankguide.chat_models._common import plain_usage, usage_metadata
from langchain_rankguide.chat_models.call_settings import CallSettings
from langchain_rankguide.chat_models.messages import OutputDelta, OutputStream, new_tool_call_id
from langchain_rankguide.chat_models.step_signals import StepSignals
from langchain_rankguide.engine import (
    CaptureSettings,
    LoadedModel,
    StepEngine,
    StepSettings,
    StepToken,
)
from langchain_rankguide.engine.grammar import (
    CLOSING_OVERRUN,
    Constraint,
)
from langchain_rankguide.engine.triggered_grammar import answer_hooks

PROVIDER = "huggingface"

_HIDDEN_NEEDS = frozenset({"step_hidden", "window_hidden", "multi_layer"})

_FINISH = {"eos": "stop", "stop": "stop", "max_tokens": "length"}
"""Engine finish reasons as chat finish reasons (anything else reads as ``stop``)."""


def reply_constraint(call: CallSettings) -> Constraint | None:
    """The grammar a call's output must follow: its answer format's (``None``: free text)."""
    return call.answer_format.constraint()


def signal_capture(
    loaded: LoadedModel, names: Sequence[str], layers: Sequence[int] | None
) -> CaptureSettings:
    """Capture hidden states only when a requested signal needs them."""
    from langchain_rankguide.signals import required_captures

    if not names or not (required_captures(names) & _HIDDEN_NEEDS):
        return CaptureSettings()
    return CaptureSettings(layers=tuple(layers or [loaded.num_layers // 2]), step_hidden=True)


def silent_ids(tokenizer: Any) -> frozenset[int]:
    """Ids whose text is not reply text: special tokens (role markers a model may babble).

    As in vLLM's default; a tokenizer's own response template sees them, since its markers may
    be special tokens.
    """
    if getattr(tokenizer, "response_template", None) is not None:
        return frozenset()
    return frozenset(int(i) for i in getattr(tokenizer, "all_special_ids", []))


@dataclass
class ReplyPlan:
    """Everything one reply is generated from, prepared by the chat model.

    Attributes:
        call: the call's settings.
        loaded: the model.
        prompt: the rendered chat prompt.
        prompt_ids: its token ids.
        delimiter: the step delimiter (per-step signals).
        signal_layers: layers captured for hidden-state signals (``None``: the middle one).
        interventions: applied around every forward pass (steering).
        steering: what is reported under ``response_metadata["steering"]`` (with the handle).
        started: ``time.monotonic()`` when the call began (the timeout counts from it).
    """

    call: CallSettings
    loaded: LoadedModel
    prompt: str
    prompt_ids: list[int]
    delimiter: str
    signal_layers: Sequence[int] | None
    interventions: list[Any]
    steering: dict[str, Any] | None
    started: float


def stream_reply(plan: ReplyPlan) -> Iterator[ChatGenerationChunk]:
    """Generate the reply as chunks: text and tool calls as they come, then the last chunk."""
    call, loaded = plan.call, plan.loaded
    constraint = reply_constraint(call)
    signals = call.signals if constraint is None else ()
    budget = call.token_budget(loaded.context_length, len(plan.prompt_ids))
    processors, criteria = answer_hooks(
        call.answer_format, loaded.tokenizer, loaded.eos_token_ids, budget
    )
    cap = budget + CLOSING_OVERRUN if processors else budget
    engine = StepEngine(
        loaded,
        role="srm",
        settings=StepSettings(delimiter=plan.delimiter, max_step_tokens=cap),
        capture=signal_capture(loaded, signals, plan.signal_layers),
        sampling=call.sampling,
        interventions=plan.interventions,
    )
    engine.start_ids(plan.prompt_ids)
    tokens = engine.stream_tokens(
        max_new_tokens=cap,
        stop_at_delimiter=False,
        stop=call.stop,
        logits_processors=processors,
        stopping_criteria=criteria,
        silent_ids=silent_ids(loaded.tokenizer),
    )
    offered = call.offered_tools
    output = OutputStream(
        loaded.tokenizer,
        prompt=plan.prompt,
        tools=offered if constraint is None or constraint.calls_tools else None,
        own_format=constraint is not None,
    )
    reply = ReplyChunks(output, StepSignals(signals, plan.delimiter))
    try:
        yield from reply.follow(tokens, call.timeout, plan.started)
    finally:
        tokens.close()
    yield reply.last_chunk(plan, engine)


class OutputChunks:
    """Parsed reply text as message chunks: content, reasoning, tool calls.

    Args:
        output: the parser of the reply text (content, reasoning, tool calls).
    """

    def __init__(self, output: OutputStream) -> None:
        self.output = output
        self.tool_calls = 0
        """Tool-call chunks sent so far (each call's ``index``)."""

    def feed(self, text: str) -> Iterator[ChatGenerationChunk]:
        """Parse more reply text; yield what it completed."""
        yield from self._chunks(self.output.feed(text))

    def finish(self) -> Iterator[ChatGenerationChunk]:
        """Flush the parser at the end of the reply."""
        yield from self._chunks(self.output.finish())

    def _chunks(self, deltas: Sequence[OutputDelta]) -> Iterator[ChatGenerationChunk]:
        for delta in deltas:
            message = self._message(delta)
            if message is not None:
                yield ChatGenerationChunk(message=message)

    def _message(self, delta: OutputDelta) -> AIMessageChunk | None:
        if delta.kind in ("content", "reasoning"):
            if not delta.text:
                return None
            if delta.kind == "content":
                return AIMessageChunk(content=delta.text)
            return AIMessageChunk(content="", additional_kwargs={"reasoning_content": delta.text})
        if delta.kind == "tool_call":
            args = json.dumps(delta.arguments, ensure_ascii=False)
        else:
            # A JSON string never parses as arguments, so LangChain files the call under
            # invalid_tool_calls with the raw markup kept.
            args = json.dumps(delta.text or "", ensure_ascii=False)
        chunk = tool_call_chunk(
            name=delta.name, args=args, id=new_tool_call_id(), index=self.tool_calls
        )
        self.tool_calls += 1
        return AIMessageChunk(content="", tool_call_chunks=[chunk])


class ReplyChunks:
    """Turn the engine's tokens into message chunks: parsed text, tool calls, the end.

    Args:
        output: the parser of the reply text (content, reasoning, tool calls).
        steps: per-step signals of the reply.
    """

    def __init__(self, output: OutputStream, steps: StepSignals) -> None:
        self.parsed = OutputChunks(output)
        self.steps = steps
        self.generated = 0
        self.finish = "length"
        self.stop_string: str | None = None

    def follow(
        self, tokens: Iterator[StepToken], timeout: float | None, started: float
    ) -> Iterator[ChatGenerationChunk]:
        """Consume the step loop until it stops (or the call's time is up)."""
        text, shown = "", 0
        for token in tokens:
            self.generated += 1
            stop = token.stop
            if stop is None or stop.reason != "eos":
                self.steps.add(token)
            yield from self.parsed.feed(token.reply_text(shown))
            text += token.text
            shown += len(token.released)
            if stop is not None:
                self.finish = _FINISH.get(stop.reason, "stop")
                if stop.reason == "stop" and stop.marker is not None:
                    self.stop_string = stop.marker
                break
            if timeout is not None and time.monotonic() - started > timeout:
                # Text held back at a possible stop string is reply text after all.
                yield from self.parsed.feed(text[shown:])
                self.finish = "timeout"
                break
        yield from self.parsed.finish()
        self.steps.close()

    def last_chunk(self, plan: ReplyPlan, engine: StepEngine) -> ChatGenerationChunk:
        """The closing chunk: usage, finish reason, per-step signals, steering."""
        called = self.parsed.tool_calls
        finish = "tool_calls" if called and self.finish == "stop" else self.finish
        metadata: dict[str, Any] = {
            "model_name": plan.call.model,
            "model_provider": PROVIDER,
            "finish_reason": finish,
            "usage_by_model": plain_usage({"srm": engine.usage}),
            "steps": self.steps.records,
        }
        if self.stop_string is not None:
            metadata["stop"] = self.stop_string
        if plan.steering is not None:
            steering = dict(plan.steering)
            handle = steering.pop("handle")
            metadata["steering"] = {**steering, "steered_positions": handle.steered_positions}
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=usage_metadata(len(plan.prompt_ids), self.generated),
                response_metadata=metadata,
                chunk_position="last",
            )
        )
