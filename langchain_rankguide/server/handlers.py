"""Request handlers: what each served model does with a validated request.

Each handler turns a request into a generator of :class:`Piece` (text as it is produced) that
returns an :class:`Outcome`. The app layer turns these into JSON or SSE; handlers know nothing
of HTTP. Generation checks ``cancelled()`` between pieces, so a disconnected client or a
passed deadline stops the work at the next token (plain models) or step (RankGuide).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from jinja2 import TemplateError

from langchain_rankguide.checkpoints import thread_lease
from langchain_rankguide.engine import LoadedModel, SamplingSettings, StepEngine, StepSettings
from langchain_rankguide.errors import ConfigError, InputError, RankGuideError
from langchain_rankguide.lrm import render_prompt
from langchain_rankguide.pipeline import RunOptions
from langchain_rankguide.schemas import sum_usage
from langchain_rankguide.server.protocol import ChatCompletionRequest, CompletionRequest

if TYPE_CHECKING:
    from langchain_rankguide.app import RankGuideApp


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
        try:
            prompt = self.loaded.tokenizer.apply_chat_template(
                messages,
                tokenize=False,
                add_generation_prompt=request.add_generation_prompt
                and not request.continue_final_message,
                continue_final_message=request.continue_final_message,
                **request.chat_template_kwargs,
            )
        except (TypeError, ValueError, TemplateError) as exc:
            # A request's template kwargs can shadow what the template calls: that is the
            # request's fault (400), not the server's.
            raise InputError(f"the chat template cannot render this request: {exc}") from None
        return (yield from self._generate(str(prompt), request.token_limit(), request, cancelled))

    def complete(self, request: CompletionRequest, cancelled: Callable[[], bool]) -> Generation:
        """Continue the raw prompt (the client applied any chat template)."""
        return (yield from self._generate(request.prompt, request.max_tokens, request, cancelled))


class RankGuideHandler:
    """The whole collaboration served as one model: answer in content, steps as reasoning.

    Args:
        app: the run stream requests go through.
        max_tokens: the server's largest ``max_tokens``.
        durable: the same pipeline with a checkpointer, for requests naming a
            ``rankguide.thread_id`` (``None``: the server keeps no checkpoints).
    """

    def __init__(self, app: RankGuideApp, *, max_tokens: int, durable: RankGuideApp | None = None):
        self.app = app
        self.max_tokens = max_tokens
        self.durable = durable

    def _options(self, request: Any, limit: int | None) -> RunOptions:
        """The request's run options, refused (as the request's fault) if they cannot run."""
        extras = request.rankguide.model_dump(exclude_none=True) if request.rankguide else {}
        extras.pop("thread_id", None)
        pipeline = self.app.pipeline
        if "policy" in extras:
            try:  # a policy this server cannot run (no calibration) is the request's problem
                pipeline.router(RunOptions(policy=extras["policy"]))
            except ConfigError as exc:
                raise InputError(f"rankguide.policy: {exc}") from None
        if request.seed is not None:
            extras.setdefault("seed", request.seed)
        if limit is not None:
            extras["thinking_budget"] = min(limit, self.max_tokens)
        options = RunOptions.from_mapping(extras)
        pipeline.check_options(options)
        return options

    def _thread(self, request: Any) -> str | None:
        """The request's ``rankguide.thread_id``, refused when this server keeps no checkpoints."""
        thread_id = request.rankguide.thread_id if request.rankguide else None
        if thread_id is not None and self.durable is None:
            raise InputError(
                "rankguide.thread_id: this server keeps no checkpoints; start it with "
                "--checkpoint or a checkpoint section in its config"
            )
        return thread_id

    def _run(
        self,
        graph_input: dict[str, Any],
        request: Any,
        limit: int | None,
        cancelled: Callable[[], bool],
    ) -> Generation:
        options = self._options(request, limit)
        thread_id = self._thread(request)
        if thread_id is None or self.durable is None:
            return (yield from self._steps(self.app, graph_input, options, None, cancelled))
        with thread_lease(self.durable.checkpointer, thread_id):
            return (
                yield from self._steps(self.durable, graph_input, options, thread_id, cancelled)
            )

    def _steps(
        self,
        app: RankGuideApp,
        graph_input: dict[str, Any],
        options: RunOptions,
        thread_id: str | None,
        cancelled: Callable[[], bool],
    ) -> Generation:
        with app.stream(graph_input, options, run_id=thread_id) as run:
            # A resumed or finished run's earlier steps first: the reply is the whole run.
            for step in run.prior_steps:
                if not step["is_answer"]:
                    yield Piece(step["text"], "reasoning", step)
            for event in run:
                if cancelled():
                    raise Cancelled("request cancelled")
                # A withdrawn step was streamed already; its rewrite follows as a new step.
                if not event.withdrawn and not event.step["is_answer"]:
                    yield Piece(event.step["text"], "reasoning", event.step)
        result = run.result
        if result.answer:
            yield Piece(result.answer, "content")
        total = sum_usage(result.usage.values())
        finish = result.finish_reason
        vendor = {
            "steps": result.steps,
            "usage_by_model": result.usage,
            "answer_author": result.answer_author,
            "stop_reason": result.stop_reason,
            "correct": result.correct,
        }
        if thread_id is not None:
            vendor["thread_id"] = thread_id
        return Outcome(finish, total["prefill_tokens"], total["decode_tokens"], vendor)

    def chat(self, request: ChatCompletionRequest, cancelled: Callable[[], bool]) -> Generation:
        """Run the collaboration on the conversation."""
        messages = [m.to_template() for m in request.messages]
        graph_input: dict[str, Any] = {"prompt": messages}
        if request.rankguide is not None and request.rankguide.thread_id is not None:
            # Named like a question run, so that asking a finished thread again returns its
            # result and another conversation on it is refused.
            users = [m for m in messages if m.get("role") == "user"]
            graph_input["question"] = str(users[-1].get("content") or "") if users else ""
        return (yield from self._run(graph_input, request, request.token_limit(), cancelled))

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
