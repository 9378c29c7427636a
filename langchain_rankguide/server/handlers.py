"""Request handlers: what each served model does with a validated request.

Each handler turns a request into a generator of :class:`Piece` (text as it is produced) that
returns an :class:`Outcome`. The app layer turns these into JSON or SSE; handlers know nothing
of HTTP. Generation checks ``cancelled()`` between pieces, so a disconnected client or a
passed deadline stops the work at the next token (plain models) or step (RankGuide).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from jinja2 import TemplateError

from langchain_rankguide.answer_format import AnswerFormat
from langchain_rankguide.checkpoints import thread_lease
from langchain_rankguide.engine import (
    LoadedModel,
    SamplingSettings,
    StepEngine,
    StepSettings,
    StepToken,
)
from langchain_rankguide.engine.grammar import (
    CLOSING_OVERRUN,
    INSTALL_HINT,
    llguidance_available,
)
from langchain_rankguide.engine.templates import TemplateInfo, describe_tools
from langchain_rankguide.engine.triggered_grammar import answer_hooks
from langchain_rankguide.errors import ConfigError, InputError, RankGuideError
from langchain_rankguide.lrm import render_prompt
from langchain_rankguide.pipeline import RunOptions
from langchain_rankguide.schemas import sum_usage
from langchain_rankguide.server.output import (
    Generation,
    Outcome,
    Piece,
    ReplyParser,
    logprob_entry,
)
from langchain_rankguide.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    FieldError,
)

if TYPE_CHECKING:
    from langchain_rankguide.app import RankGuideApp


class Cancelled(RankGuideError):
    """The client went away or the request deadline passed."""


class Handler(Protocol):
    """A served model."""

    def check(self, request: ChatCompletionRequest | CompletionRequest) -> None:
        """Refuse (``InputError``, a ``FieldError`` naming the field) what cannot be honoured.

        Called before any generation, so a streamed request is refused with a 400 too.
        """
        ...

    def chat(self, request: ChatCompletionRequest, cancelled: Callable[[], bool]) -> Generation:
        """Answer a chat request."""
        ...

    def complete(self, request: CompletionRequest, cancelled: Callable[[], bool]) -> Generation:
        """Continue a raw prompt."""
        ...


def check_plain(request: ChatCompletionRequest | CompletionRequest) -> None:
    """What a plain model cannot honour: a format without the grammar engine (llguidance).

    Tools, ``tool_choice``, ``response_format`` and log-probs are otherwise all honoured.
    """
    if isinstance(request, ChatCompletionRequest):
        request.logprob_alternatives()  # top_logprobs without logprobs is refused
    output = request.answer_format()
    if output is not None and output.constrained and not llguidance_available():
        param = "response_format" if output.response_format is not None else "tool_choice"
        raise FieldError(
            param, f"needs constrained decoding, which this server lacks ({INSTALL_HINT})"
        )


class PlainModelHandler:
    """One local model served on its own (the SRM or the LRM), through the step engine.

    Tools reach the chat template (or the system message, for a template without ``tools``);
    a forced ``tool_choice`` and a ``response_format`` are decoded under their grammar; the
    reply is parsed into content and tool calls; ``logprobs`` are the model's own.
    """

    def __init__(
        self, loaded: LoadedModel, *, role: str, max_tokens: int, default_tokens: int = 256
    ):
        self.loaded = loaded
        self.role = role
        self.max_tokens = max_tokens
        self.default_tokens = default_tokens

    def check(self, request: ChatCompletionRequest | CompletionRequest) -> None:
        """See :func:`check_plain`."""
        check_plain(request)

    def _generate(
        self, prompt: str, limit: int | None, request: Any, cancelled: Callable[[], bool]
    ) -> Generation:
        cap = min(limit or self.default_tokens, self.max_tokens)
        sampling = SamplingSettings(
            temperature=request.temperature, top_p=request.top_p, seed=request.seed or 0
        )
        output = request.answer_format()
        engine = StepEngine(
            self.loaded,
            role=self.role,
            settings=StepSettings(max_step_tokens=cap),
            sampling=sampling,
        )
        engine.start(prompt)
        prompt_tokens = len(engine.ids)
        tokenizer, eos = self.loaded.tokenizer, self.loaded.eos_token_ids
        processors, criteria = answer_hooks(output, tokenizer, eos, cap)
        tokens = engine.stream_tokens(
            max_new_tokens=cap,
            stop_at_delimiter=False,
            stop=request.stop_list(),
            logits_processors=processors,
            stopping_criteria=criteria,
            overrun=CLOSING_OVERRUN if processors else 0,
        )
        reply = _PlainReply(self.loaded.tokenizer, output, prompt, request.logprob_alternatives())
        try:
            yield from reply.follow(tokens, cancelled)
        finally:
            tokens.close()
        return reply.outcome(prompt_tokens)

    def chat(self, request: ChatCompletionRequest, cancelled: Callable[[], bool]) -> Generation:
        """Render the messages (and tools) with the model's chat template and generate."""
        messages = [m.to_template() for m in request.messages]
        output = request.answer_format()
        tools = output.offered_tools if output is not None else None
        kwargs = dict(request.chat_template_kwargs)
        if tools:
            if TemplateInfo.of(self.loaded.tokenizer, with_tools=True).tools:
                kwargs["tools"] = tools
            else:
                messages = describe_tools(messages, tools)
        try:
            prompt = self.loaded.tokenizer.apply_chat_template(
                messages,
                tokenize=False,
                add_generation_prompt=request.add_generation_prompt
                and not request.continue_final_message,
                continue_final_message=request.continue_final_message,
                **kwargs,
            )
        except (TypeError, ValueError, TemplateError) as exc:
            # A request's template kwargs can shadow what the template calls: that is the
            # request's fault (400), not the server's.
            raise InputError(f"the chat template cannot render this request: {exc}") from None
        return (yield from self._generate(str(prompt), request.token_limit(), request, cancelled))

    def complete(self, request: CompletionRequest, cancelled: Callable[[], bool]) -> Generation:
        """Continue the raw prompt (the client applied any chat template)."""
        return (yield from self._generate(request.prompt, request.max_tokens, request, cancelled))


class _PlainReply:
    """A plain model's tokens as pieces: parsed text, tool calls, log-prob entries, the end."""

    def __init__(
        self, tokenizer: Any, output: AnswerFormat | None, prompt: str, top: int | None
    ) -> None:
        self.tokenizer = tokenizer
        self.parser = ReplyParser(tokenizer, output, prompt)
        self.top = top
        self.generated = 0
        self.finish = "length"
        self.matched: str | None = None
        self._entries: list[dict[str, Any]] = []

    def follow(self, tokens: Iterator[StepToken], cancelled: Callable[[], bool]) -> Iterator[Piece]:
        """Consume the step loop, yielding pieces as their text is released."""
        shown = 0
        for token in tokens:
            if cancelled():
                raise Cancelled("request cancelled")
            self.generated += 1  # an EOS token counts as generated, as it always has
            stop = token.stop
            if self.top is not None and (stop is None or stop.reason != "eos"):
                self._entries.append(logprob_entry(self.tokenizer, token, self.top))
            yield from self._with_entries(self.parser.feed(token.reply_text(shown)))
            shown += len(token.released)
            if stop is not None:
                self.finish = "length" if stop.reason == "max_tokens" else "stop"
                self.matched = stop.marker if stop.reason == "stop" else None
                break
        yield from self._with_entries(self.parser.finish())

    def _with_entries(self, pieces: list[Piece]) -> Iterator[Piece]:
        for piece in pieces:
            if self.top is not None:
                piece.logprobs, self._entries = self._entries, []
            yield piece

    def outcome(self, prompt_tokens: int) -> Outcome:
        """How the reply ended (``tool_calls`` when it called one)."""
        finish = "tool_calls" if self.parser.calls and self.finish == "stop" else self.finish
        leftover = self._entries if self.top is not None else None
        return Outcome(
            finish, prompt_tokens, self.generated, stop_reason=self.matched, logprobs=leftover
        )


class RankGuideHandler:
    """The whole collaboration served as one model: answer in content, steps as reasoning.

    Tools, ``tool_choice`` and ``response_format`` become the run's answer format: the
    reasoning is routed as always and the answer's author writes the final output under the
    grammar (see :mod:`langchain_rankguide.graph`). Log-probs are refused: the reply is written
    by two models with different tokenizers, not sampled as one sequence.

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

    def check(self, request: ChatCompletionRequest | CompletionRequest) -> None:
        """Refuse log-probs and what the run's options cannot honour, before the run."""
        top = getattr(request, "top_logprobs", None)
        if top is not None or request.logprob_alternatives() is not None:
            raise FieldError(
                "logprobs",
                "the rankguide model's reply is written step by step by two models with "
                "different tokenizers, so it has no log-probs; ask the srm or lrm model for them",
            )
        check_plain(request)
        self._options(request, None)

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
        options = replace(RunOptions.from_mapping(extras), output=request.answer_format())
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
        # With tools offered, a run that ends at EOS without a marked answer ended with its
        # reply (a model calls a tool that way), as ChatRankGuide reads it.
        eos_replies = options.output is not None and bool(options.output.offered_tools)
        eos_step: dict[str, Any] | None = None
        with app.stream(graph_input, options, run_id=thread_id) as run:
            # A resumed or finished run's earlier steps first: the reply is the whole run.
            for step in run.prior_steps:
                if not step["is_answer"]:
                    yield Piece(step["text"], "reasoning", step)
            for event in run:
                if cancelled():
                    raise Cancelled("request cancelled")
                if event.withdrawn:  # streamed already; its rewrite follows as a new step
                    continue
                step = event.step
                if eos_replies and not step["is_answer"] and step["finish_reason"] == "eos":
                    eos_step = step
                elif not step["is_answer"]:
                    yield Piece(step["text"], "reasoning", step)
        result = run.result
        reply, author = result.answer, result.answer_author
        if reply is None and eos_step is not None:
            reply, author = eos_step["text"].strip(), eos_step["author"]
        parser = ReplyParser(self.app.pipeline.step_tokenizer(str(author)), options.output)
        if reply:
            yield from parser.feed(reply)
        yield from parser.finish()
        total = sum_usage(result.usage.values())
        finish: str = result.finish_reason
        if parser.calls and finish == "stop":
            finish = "tool_calls"
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
    "check_plain",
    "reasoning_text",
    "render_prompt",
]
