"""Request handlers: what each served model does with a validated request.

Each handler turns a request into a generator of :class:`Piece` (text as it is produced) that
returns an :class:`Outcome`. The app layer turns these into JSON or SSE; handlers know nothing
of HTTP. Generation checks ``cancelled()`` between pieces, so a disconnected client or a
passed deadline stops the work at the next token (plain models) or step (RankGuide).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from langchain_rankguide.engine import LoadedModel, SamplingSettings, StepEngine, StepSettings
from langchain_rankguide.errors import ConfigError, InputError, RankGuideError
from langchain_rankguide.lrm import render_prompt
from langchain_rankguide.pipeline import RunOptions
from langchain_rankguide.server.protocol import ChatCompletionRequest, CompletionRequest


class Cancelled(RankGuideError):
    """The client went away or the request deadline passed."""


@dataclass
class Piece:
    """Text produced for the response: answer ``content`` or ``reasoning`` (one step)."""

    text: str
    kind: Literal["content", "reasoning"] = "content"
    step: dict[str, Any] | None = None


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


Generation = Generator[Piece, None, Outcome]


class Handler(Protocol):
    """A served model."""

    def chat(self, request: ChatCompletionRequest, cancelled: Callable[[], bool]) -> Generation:
        """Answer a chat request."""
        ...

    def complete(self, request: CompletionRequest, cancelled: Callable[[], bool]) -> Generation:
        """Continue a raw prompt."""
        ...


class PlainModelHandler:
    """One local model served on its own (the SRM or the LRM), through the step engine."""

    def __init__(
        self, loaded: LoadedModel, *, role: str, max_tokens: int, default_tokens: int = 256
    ):
        self.loaded = loaded
        self.role = role
        self.max_tokens = max_tokens
        self.default_tokens = default_tokens

    def _generate(
        self, prompt: str, limit: int | None, request: Any, cancelled: Callable[[], bool]
    ) -> Generation:
        cap = min(limit or self.default_tokens, self.max_tokens)
        sampling = SamplingSettings(
            temperature=request.temperature, top_p=request.top_p, seed=request.seed or 0
        )
        engine = StepEngine(
            self.loaded,
            role=self.role,
            settings=StepSettings(max_step_tokens=cap),
            sampling=sampling,
        )
        engine.start(prompt)
        prompt_tokens = len(engine.ids)
        stops = request.stop_list()
        stream = engine.stream_step(max_new_tokens=cap, stop_at_delimiter=False, stop=stops)
        held: str | None = None
        try:
            while True:
                piece = next(stream)
                if cancelled():
                    raise Cancelled("request cancelled")
                if held:
                    yield Piece(held)
                held = piece
        except StopIteration as done:
            draft = done.value
        finally:
            stream.close()
        matched: str | None = None
        if draft.finish_reason == "stop":
            matched = next((s for s in stops if draft.text.endswith(s)), None)
            if held and matched:
                # OpenAI semantics: the stop string is not part of the output.
                held = held[: len(held) - len(matched)]
        if held:
            yield Piece(held)
        finish = "length" if draft.finish_reason == "max_tokens" else "stop"
        return Outcome(finish, prompt_tokens, draft.n_tokens, stop_reason=matched)

    def chat(self, request: ChatCompletionRequest, cancelled: Callable[[], bool]) -> Generation:
        """Render the messages with the model's chat template and generate."""
        messages = [m.to_template() for m in request.messages]
        prompt = self.loaded.tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=request.add_generation_prompt
            and not request.continue_final_message,
            continue_final_message=request.continue_final_message,
            **request.chat_template_kwargs,
        )
        return (yield from self._generate(str(prompt), request.token_limit(), request, cancelled))

    def complete(self, request: CompletionRequest, cancelled: Callable[[], bool]) -> Generation:
        """Continue the raw prompt (the client applied any chat template)."""
        return (yield from self._generate(request.prompt, request.max_tokens, request, cancelled))


class RankGuideHandler:
    """The whole collaboration served as one model: answer in content, steps as reasoning."""

    def __init__(self, graph: Any, *, max_tokens: int):
        self.graph = graph
        self.max_tokens = max_tokens

    def _run(
        self,
        graph_input: dict[str, Any],
        request: Any,
        limit: int | None,
        cancelled: Callable[[], bool],
    ) -> Generation:
        extras = request.rankguide.model_dump(exclude_none=True) if request.rankguide else {}
        if "policy" in extras:
            try:  # a policy this server cannot run (no calibration) is the request's problem
                self.graph.pipeline.router(RunOptions(policy=extras["policy"]))
            except ConfigError as exc:
                raise InputError(f"rankguide.policy: {exc}") from None
        self.graph.pipeline.check_options(RunOptions.from_mapping(extras))
        configurable: dict[str, Any] = {"thread_id": uuid.uuid4().hex, **extras}
        if request.seed is not None:
            configurable.setdefault("seed", request.seed)
        if limit is not None:
            configurable["thinking_budget"] = min(limit, self.max_tokens)
        state: dict[str, Any] = {}
        stream = self.graph.stream(
            graph_input, {"configurable": configurable}, stream_mode=["custom", "values"]
        )
        try:
            for mode, event in stream:
                if cancelled():
                    raise Cancelled("request cancelled")
                if mode == "custom" and event.get("type") == "rankguide.step":
                    step = event["step"]
                    if not step["is_answer"]:
                        yield Piece(step["text"], "reasoning", step)
                elif mode == "values":
                    state = event
        finally:
            stream.close()
            self.graph.pipeline.end_session(configurable["thread_id"])
        answer = state.get("answer") or ""
        if answer:
            yield Piece(answer, "content")
        usage = state.get("usage") or {}
        prompt_tokens = sum(u["prefill_tokens"] for u in usage.values())
        completion_tokens = sum(u["decode_tokens"] for u in usage.values())
        finish = "stop" if state.get("stop_reason") in ("answer", "eos") else "length"
        vendor = {
            "steps": state.get("steps", []),
            "usage_by_model": usage,
            "answer_author": state.get("answer_author"),
            "stop_reason": state.get("stop_reason"),
            "correct": state.get("correct"),
        }
        return Outcome(finish, prompt_tokens, completion_tokens, vendor)

    def chat(self, request: ChatCompletionRequest, cancelled: Callable[[], bool]) -> Generation:
        """Run the collaboration on the conversation."""
        messages = [m.to_template() for m in request.messages]
        return (
            yield from self._run({"messages": messages}, request, request.token_limit(), cancelled)
        )

    def complete(self, request: CompletionRequest, cancelled: Callable[[], bool]) -> Generation:
        """Run the collaboration on the prompt as a question."""
        return (
            yield from self._run(
                {"question": request.prompt}, request, request.max_tokens, cancelled
            )
        )


def reasoning_text(pieces: list[Piece]) -> str:
    """Join the reasoning pieces of a finished generation."""
    return "".join(p.text for p in pieces if p.kind == "reasoning")


__all__ = [
    "Cancelled",
    "Generation",
    "Handler",
    "Outcome",
    "Piece",
    "PlainModelHandler",
    "RankGuideHandler",
    "reasoning_text",
    "render_prompt",
]
