r"""``ChatRankGuide``: the SRM + LRM collaboration behind the LangChain chat-model interface.

Each call runs the conversation through the run stream
(:class:`~langchain_rankguide.app.RankGuideApp`, over the RankGuide LangGraph graph) and
returns what a reasoning model returns: the final answer as
``content``, the committed reasoning steps in ``additional_kwargs["reasoning_content"]``, and
the step records (author, decision, signals, latency, ...) in ``response_metadata["steps"]``.

Streaming yields one chunk per committed reasoning step (as reasoning content), then the
answer's tokens. Steps stream as the guard commits them, never before: an SRM draft the guard
rejects is never shown.

Example:
    >>> from langchain_rankguide.chat_models import ChatRankGuide
    >>> chat = ChatRankGuide()  # the embedded demo pair; nothing loads yet
    >>> chat.model_name
    'rankguide:demo:srm+demo:lrm'
    >>> reply = chat.invoke("Start at 72. Subtract 39. What is the result?")  # doctest: +SKIP
    >>> reply.content, reply.additional_kwargs["reasoning_content"]  # doctest: +SKIP
    ('33', '72 - 39 = 33, total 33.\n\n')
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from langchain_rankguide.answer_format import AnswerFormat
from langchain_rankguide.chat_models._common import (
    StopMatcher,
    StreamFirstChatModel,
    pop_unknown_init_kwargs,
    usage_metadata,
    warn_unknown,
)
from langchain_rankguide.chat_models.generation import OutputChunks
from langchain_rankguide.chat_models.messages import OutputStream, chat_shape, to_chat_dicts
from langchain_rankguide.engine import MODELS, ModelRegistry
from langchain_rankguide.engine.text import token_pieces
from langchain_rankguide.pipeline import RunOptions

if TYPE_CHECKING:
    from langchain_rankguide.app import RankGuideApp

PROVIDER = "rankguide"
MODEL_PREFIX = "rankguide:"

CALL_KEYS = frozenset(
    {
        "model",
        "temperature",
        "max_tokens",
        "timeout",
        "chat_template_kwargs",
        "model_kwargs",
        "policy",
        "threshold",
        "seed",
        "steering",
        "steering_vector",
        "steering_scale",
        "tools",
        "tool_choice",
        "response_format",
    }
)
"""Keyword arguments a call may override (plus ``stop``)."""

_RUN_OPTIONS = ("policy", "threshold", "seed", "steering", "steering_vector", "steering_scale")
_INERT_CALL_KEYS = frozenset({"stream", "parallel_tool_calls", "strict"})


def parse_model_name(name: str) -> tuple[str, str]:
    """Split ``rankguide:<srm>+<lrm>`` into the two model references.

    Raises:
        ValueError: for a name of another form.
    """
    body = name[len(MODEL_PREFIX) :] if name.startswith(MODEL_PREFIX) else None
    if not body or "+" not in body:
        raise ValueError(f"model must look like 'rankguide:<srm>+<lrm>', got {name!r}")
    srm, lrm = body.split("+", 1)
    if not srm or not lrm:
        raise ValueError(f"model must look like 'rankguide:<srm>+<lrm>', got {name!r}")
    return srm, lrm


def model_name_of(config: Any) -> str:
    """``rankguide:<srm>+<lrm>`` of a configuration."""
    return f"{MODEL_PREFIX}{config.srm.model}+{config.lrm.model}"


class ChatRankGuide(StreamFirstChatModel):
    r"""RankGuide (an SRM and an LRM collaborating step by step) as a LangChain chat model.

    Construction reads the configuration (a YAML path, a ``RankGuideConfig`` or the embedded
    demo defaults) but loads no weights; models load on the first call through the shared
    registry.

    Results:
        ``content``: the final answer (the answer step without its marker; when the run ends at
        EOS without a marked answer, the last step). Empty when the run stopped first (budget,
        step cap, repetition): ``finish_reason`` then says why.
        ``additional_kwargs["reasoning_content"]``: the committed reasoning steps, concatenated.
        ``usage_metadata``: ``input_tokens`` = prompt tokens (SRM tokenizer),
        ``output_tokens`` = tokens of the committed steps (reasoning plus answer: what
        ``max_tokens`` bounds), ``output_token_details["reasoning"]`` = the reasoning part,
        ``total_tokens`` = input + output.
        ``response_metadata``: ``model_name``, ``model_provider`` (``"rankguide"``),
        ``finish_reason`` (``length`` when ``max_tokens`` -- the thinking budget -- cut the
        run, also when an answer was then forced, or the step cap did before any answer;
        ``timeout``; else ``stop``: see :func:`~langchain_rankguide.schemas.chat_finish_reason`),
        ``stop_reason`` (the graph's), ``steps`` (step records without token ids),
        ``answer_author``, ``correct`` (demo verifier or ``None``), and ``usage_by_model``:
        what each model really processed,
        ``{"srm": {"prefill_tokens", "decode_tokens"}, "lrm": {...}}``, discarded drafts
        included.

    Per-call keywords: :data:`CALL_KEYS` and ``stop`` (applied to the answer text).
    """

    model_config = ConfigDict(populate_by_name=True, protected_namespaces=())

    model_name: str | None = Field(default=None, alias="model")
    """``rankguide:<srm>+<lrm>``; ``None`` = the configuration's pair. Overrides its models."""
    config: Any = None
    """A YAML path, a ``RankGuideConfig`` (or its data), or ``None`` for the demo defaults."""
    temperature: float | None = Field(default=None, ge=0.0)
    """Sampling temperature of both models (``None``: the configuration's)."""
    max_tokens: int | None = Field(default=None, ge=1)
    """Bound on reasoning plus answer tokens (``None``: the configuration's thinking budget)."""
    stop: list[str] | None = None
    """Stop strings, matched on the answer's decoded text."""
    streaming: bool = False
    """Stream by default when invoked."""
    timeout: float | None = Field(default=None, gt=0)
    """Wall-clock limit of one call in seconds, checked after each committed step (the run then
    ends with ``finish_reason="timeout"``); ``None`` = none."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Configuration overrides, nested or dotted (``{"routing.policy": "srm"}``)."""
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra chat-template variables for both models (merged over the configuration's)."""
    policy: str | None = None
    """Routing policy of every run (``None``: the configuration's)."""
    threshold: float | None = None
    """Escalation threshold (``None``: the configuration's or the calibration's)."""
    seed: int | None = None
    """Run seed (``None``: the configuration's)."""
    steering: bool | None = None
    """Steer the SRM (``None``: the configuration's ``steering.enabled``)."""
    steering_vector: str | None = None
    """Steering vector file (``None``: the configuration's)."""
    steering_scale: float | None = None
    """Steering scale (``None``: the configuration's)."""
    registry: ModelRegistry = Field(default=MODELS, exclude=True, repr=False)
    """Where models load and are shared (the process-wide registry by default)."""

    _base: Any = PrivateAttr(default=None)
    _apps: dict[str, Any] = PrivateAttr(default_factory=dict)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _TRANSIENT: ClassVar[frozenset[str]] = frozenset({"_apps", "_lock"})

    @model_validator(mode="before")
    @classmethod
    def _drop_unknown(cls, values: Any) -> Any:
        return pop_unknown_init_kwargs(cls, values, owner=cls.__name__)

    @model_validator(mode="after")
    def _read_config(self) -> ChatRankGuide:
        from langchain_rankguide.config import RankGuideConfig, load_config, parse_config

        if isinstance(self.config, RankGuideConfig):
            self._base = self.config
        elif self.config is None:
            self._base = _default_config()
        elif isinstance(self.config, Mapping):  # a configuration's data, as serialized
            self._base = parse_config(dict(self.config), source="ChatRankGuide config")
        else:
            self._base = load_config(self.config)
        if self.model_name is None:
            self.model_name = model_name_of(self._base)
        else:
            parse_model_name(self.model_name)
        return self

    @classmethod
    def from_config(cls, path: str | Path | None = None, **fields: Any) -> ChatRankGuide:
        """Build the chat model from a RankGuide YAML file (``None``: the demo defaults)."""
        return cls(config=str(path) if path is not None else None, **fields)

    # ------------------------------------------------------------------ LangChain hooks

    @property
    def _llm_type(self) -> str:
        return "rankguide"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "policy": self.policy or self._base.routing.policy,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = PROVIDER
        params["ls_model_name"] = str(kwargs.get("model") or self.model_name)
        temperature = kwargs.get("temperature", self.temperature)
        params["ls_temperature"] = (
            temperature if temperature is not None else self._base.sampling.temperature
        )
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        params["ls_max_tokens"] = (
            max_tokens if max_tokens is not None else self._base.steps.thinking_budget
        )
        if stop or self.stop:
            params["ls_stop"] = list(stop or self.stop or [])
        return params

    # ------------------------------------------------------------------ runs

    def _overrides(self, merged: Mapping[str, Any]) -> dict[str, Any]:
        from langchain_rankguide.config import merge_overrides

        base = self._base
        overrides: dict[str, Any] = merge_overrides(
            dict(self.model_kwargs), dict(merged.get("model_kwargs") or {})
        )
        name = str(merged.get("model") or self.model_name)
        srm, lrm = parse_model_name(name)
        if srm != base.srm.model:
            overrides = merge_overrides(overrides, {"srm": {"model": srm}})
        if lrm != base.lrm.model:
            overrides = merge_overrides(overrides, {"lrm": {"model": lrm}})
        temperature = merged.get("temperature", self.temperature)
        if temperature is not None:
            overrides = merge_overrides(overrides, {"sampling": {"temperature": temperature}})
        max_tokens = merged.get("max_tokens", self.max_tokens)
        # A chat reply needs an answer: a run that stops without one gets a forced answer, whose
        # tokens are reserved inside max_tokens so reasoning plus answer stay within it.
        steps: dict[str, Any] = {"force_answer": True}
        if max_tokens is not None:
            reserve = max(1, min(base.steps.answer_max_tokens, int(max_tokens) // 4))
            budget = max(1, int(max_tokens) - reserve)
            steps.update(
                thinking_budget=budget,
                max_step_tokens=min(base.steps.max_step_tokens, budget),
                answer_max_tokens=reserve,
            )
        overrides = merge_overrides(overrides, {"steps": steps})
        template = {**self.chat_template_kwargs, **dict(merged.get("chat_template_kwargs") or {})}
        if template:
            kwargs = {**base.prompt.chat_template_kwargs, **template}
            overrides = merge_overrides(overrides, {"prompt": {"chat_template_kwargs": kwargs}})
        return overrides

    def _app(self, overrides: Mapping[str, Any]) -> RankGuideApp:
        """The run stream for one set of overrides (cached; models are shared anyway)."""
        from langchain_rankguide.app import RankGuideApp
        from langchain_rankguide.config import merge_overrides, parse_config
        from langchain_rankguide.pipeline import RankGuidePipeline

        key = json.dumps(overrides, sort_keys=True, default=str)
        with self._lock:
            app = self._apps.get(key)
            if app is None:
                config = self._base
                if overrides:
                    data = merge_overrides(config.model_dump(mode="json"), overrides)
                    config = parse_config(data, source="ChatRankGuide overrides")
                app = RankGuideApp(RankGuidePipeline(config, registry=self.registry))
                self._apps[key] = app
            return app

    def _run_options(self, merged: Mapping[str, Any]) -> RunOptions:
        """The call's run options: per-call keywords over the model's fields."""
        values: dict[str, Any] = {}
        for name in _RUN_OPTIONS:
            value = merged.get(name)
            values[name] = getattr(self, name) if value is None else value
        values["output"] = _answer_format(merged)
        return RunOptions(**values)

    def _messages(self, pipeline: Any, messages: list[BaseMessage]) -> list[dict[str, Any]]:
        """Chat dicts with the configured system prompt, step instruction and user template."""
        return pipeline.chat_messages(to_chat_dicts(messages))

    def _prompt_dicts(
        self, pipeline: Any, messages: list[BaseMessage], tokenizer: Any
    ) -> list[dict[str, Any]]:
        """The run's prompt messages, in the shape the SRM's chat template renders."""
        template_kwargs = dict(pipeline.config.prompt.chat_template_kwargs)
        return chat_shape(
            tokenizer, self._messages(pipeline, messages), template_kwargs=template_kwargs
        )

    # ------------------------------------------------------------------ token counts

    def _count_tokenizer(self) -> Any:
        return self._app(self._overrides({})).pipeline.srm_tokenizer

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Tokens of the SRM's prompt for ``messages`` and ``tools``: a call's ``input_tokens``.

        The configured prompt applies and the SRM's chat template renders it, with the SRM's
        tokenizer loaded alone (no weights, no hub).
        """
        pipeline = self._app(self._overrides({})).pipeline
        tokenizer = pipeline.srm_tokenizer
        offered = [convert_to_openai_tool(t) for t in tools] if tools else None
        dicts = self._prompt_dicts(pipeline, messages, tokenizer)
        return len(pipeline.srm_prompt_ids(dicts, tokenizer, tools=offered))

    def _chunks(
        self, messages: list[BaseMessage], stop: list[str] | None, **kwargs: Any
    ) -> Iterator[ChatGenerationChunk]:
        """The one generator behind invoke, stream, batch and their async forms."""
        merged = dict(kwargs)
        unknown = {k for k in merged if k not in CALL_KEYS and k not in _INERT_CALL_KEYS} - {
            k for k in merged if k.startswith("ls_")
        }
        warn_unknown(type(self).__name__, unknown, where="unknown call keyword")
        app = self._app(self._overrides(merged))
        pipeline = app.pipeline
        config = pipeline.config
        options = self._run_options(merged)
        srm_tokenizer = pipeline.srm.tokenizer
        dicts = self._prompt_dicts(pipeline, messages, srm_tokenizer)
        tools = options.offered_tools
        prompt_tokens = len(pipeline.srm_prompt_ids(dicts, srm_tokenizer, tools=tools))
        stops = StopMatcher(stop if stop is not None else self.stop)
        answer = _AnswerText(pipeline, options.output, stops)
        markers = list(config.steps.answer_markers)
        answer_record: dict[str, Any] | None = None
        reasoning_tokens = 0
        timeout = merged.get("timeout") or self.timeout
        started = time.monotonic()
        timed_out = False
        with app.stream({"prompt": dicts}, options) as run:
            for event in run:
                if event.withdrawn:  # streamed already; the LRM's rewrite follows
                    continue
                record = event.step
                if record.get("is_answer") or record.get("finish_reason") == "eos":
                    answer_record = record
                    yield from answer.chunks(record, _answer_of(record["text"], markers))
                else:
                    reasoning_tokens += int(record.get("tokens", 0))
                    yield ChatGenerationChunk(
                        message=AIMessageChunk(
                            content="", additional_kwargs={"reasoning_content": record["text"]}
                        )
                    )
                if timeout is not None and time.monotonic() - started > timeout:
                    timed_out = True
                    break
        result = run.result
        stop_reason = result.stop_reason or "answer"
        finish: str = result.finish_reason
        if timed_out:
            stop_reason, finish = "timeout", "timeout"
        elif answer.tool_calls and finish == "stop":
            finish = "tool_calls"
        answer_tokens = int(answer_record.get("tokens", 0)) if answer_record else 0
        metadata: dict[str, Any] = {
            "model_name": str(merged.get("model") or self.model_name),
            "model_provider": PROVIDER,
            "finish_reason": finish,
            "stop_reason": stop_reason,
            "steps": [{k: v for k, v in s.items() if k != "token_ids"} for s in result.steps],
            "answer_author": answer_record.get("author") if answer_record else None,
            "correct": result.correct,
            "usage_by_model": result.usage,
        }
        if stops.hit is not None:
            metadata["stop"] = stops.hit
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=usage_metadata(
                    prompt_tokens, reasoning_tokens + answer_tokens, reasoning_tokens
                ),
                response_metadata=metadata,
                chunk_position="last",
            )
        )


@functools.cache
def _default_config() -> Any:
    """The embedded demo configuration, parsed once (it is immutable)."""
    from langchain_rankguide.config import load_config

    return load_config(None)


class _AnswerText:
    """The answer step as content chunks: cut at the first stop string, parsed for calls.

    Without tools or a structured output the answer is plain text, one chunk per token of its
    author; with them it goes through the chat models' output parser (tool calls, content).
    """

    def __init__(self, pipeline: Any, output: AnswerFormat | None, stops: StopMatcher) -> None:
        self.pipeline = pipeline
        self.output = output
        self.stops = stops
        self.tool_calls = 0
        """Tool calls found in the answer."""

    def chunks(self, record: Mapping[str, Any], answer: str) -> Iterator[ChatGenerationChunk]:
        """The answer's chunks (``record``: its step record)."""
        tokenizer = self.pipeline.step_tokenizer(str(record.get("author")))
        parsed = self._parser(tokenizer)
        for piece in token_pieces(tokenizer, answer):
            emitted = self.stops.push(piece)
            if emitted:
                yield from self._text(emitted, parsed)
            if self.stops.hit is not None:
                break
        tail = self.stops.flush()
        if tail:
            yield from self._text(tail, parsed)
        if parsed is not None:
            yield from parsed.finish()
            self.tool_calls += parsed.tool_calls

    def _parser(self, tokenizer: Any) -> OutputChunks | None:
        output = self.output
        if output is None or not (output.offered_tools or output.constrained):
            return None
        stream = OutputStream(
            tokenizer, prompt="", tools=output.offered_tools, own_format=output.constrained
        )
        return OutputChunks(stream)

    @staticmethod
    def _text(text: str, parsed: OutputChunks | None) -> Iterator[ChatGenerationChunk]:
        if parsed is None:
            yield ChatGenerationChunk(message=AIMessageChunk(content=text))
        else:
            yield from parsed.feed(text)


def _answer_format(merged: Mapping[str, Any]) -> AnswerFormat | None:
    """The call's tools, ``tool_choice`` and ``response_format`` (``None``: none given).

    Raises:
        ValueError: a choice that cannot be honoured (see :meth:`AnswerFormat.check`).
    """
    tools, choice, response_format = (
        merged.get(k) for k in ("tools", "tool_choice", "response_format")
    )
    if not tools and choice is None and not response_format:
        return None
    output = AnswerFormat.of(tools, choice, response_format)
    output.check()
    return output


def _answer_of(text: str, markers: list[str]) -> str:
    from langchain_rankguide.graph import answer_of

    return answer_of(text, markers)
