"""Pieces both chat models share: checks, stop strings, usage, async, tools, structured output."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.chat_models import generate_from_stream
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.output_parsers import (
    JsonOutputKeyToolsParser,
    JsonOutputParser,
    PydanticOutputParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

from langchain_rankguide.answer_format import AnswerFormat
from langchain_rankguide.engine.grammar import require_llguidance
from langchain_rankguide.engine.stopping import partial_marker_length
from langchain_rankguide.schemas import Usage

T = TypeVar("T")

IGNORED_HOSTED_PARAMS = frozenset({"api_key", "max_retries", "base_url", "organization"})
"""Hosted-API constructor parameters a local model has no use for (accepted, with a warning)."""


def warn_unknown(owner: str, names: Iterable[str], *, where: str) -> None:
    """Warn about parameters that will not be used, so nothing is ignored silently."""
    names = sorted(names)
    if names:
        warnings.warn(
            f"{owner} ignores {', '.join(repr(n) for n in names)} ({where})",
            UserWarning,
            stacklevel=4,
        )


def pop_unknown_init_kwargs(cls: type[Any], values: Any, *, owner: str) -> Any:
    """Drop (with one warning) constructor keywords that are neither fields nor aliases."""
    if not isinstance(values, dict):
        return values
    known: set[str] = set()
    for name, info in cls.model_fields.items():
        known.add(name)
        if info.alias:
            known.add(info.alias)
    unknown = [k for k in values if k not in known]
    if unknown:
        hosted = [k for k in unknown if k in IGNORED_HOSTED_PARAMS]
        other = [k for k in unknown if k not in IGNORED_HOSTED_PARAMS]
        if hosted:
            warn_unknown(owner, hosted, where="a local model needs no API key, URL or retries")
        if other:
            warn_unknown(owner, other, where="not a parameter of this model")
        values = {k: v for k, v in values.items() if k in known}
    return values


class StopMatcher:
    r"""Cut streamed text at the first stop string, matching on decoded text.

    Text that could still become the start of a stop string is held back (as the step engine's
    :class:`~langchain_rankguide.engine.StopStrings` does), so a stop string spread over several
    tokens (``"\n\nUser:"``) is never partly emitted. For text that does not come from one
    engine step (``ChatRankGuide``'s answer).
    """

    def __init__(self, stops: Sequence[str] | None) -> None:
        self.stops = [s for s in (stops or []) if s]
        self._held = ""
        self.hit: str | None = None
        """The stop string that ended the text, once one did."""

    def push(self, text: str) -> str:
        """Add text; return what can be emitted now (nothing more once a stop string matched)."""
        if self.hit is not None:
            return ""
        buffer = self._held + text
        best: tuple[int, str] | None = None
        for stop in self.stops:
            at = buffer.find(stop)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, stop)
        if best is not None:
            self.hit = best[1]
            self._held = ""
            return buffer[: best[0]]
        keep = partial_marker_length(buffer, self.stops)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """Release held-back text at the end of generation."""
        held, self._held = self._held, ""
        return held if self.hit is None else ""


def json_field(value: Any) -> Any:
    """A field value as serialized JSON data: paths as text, pydantic configs as their data."""
    if isinstance(value, Path):
        return str(value)
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump) and not hasattr(value, "to_json"):
        return model_dump(mode="json")
    return value


def usage_metadata(
    input_tokens: int, output_tokens: int, reasoning_tokens: int | None = None
) -> UsageMetadata:
    """LangChain's usage record (totals documented on each chat model)."""
    usage = UsageMetadata(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=input_tokens + output_tokens,
    )
    if reasoning_tokens is not None:
        usage["output_token_details"] = {"reasoning": reasoning_tokens}
    return usage


def plain_usage(usage: Mapping[str, Usage]) -> dict[str, dict[str, int]]:
    """Per-model usage as plain JSON dicts (the shared usage shape)."""
    return {
        model: {
            "prefill_tokens": int(u["prefill_tokens"]),
            "decode_tokens": int(u["decode_tokens"]),
        }
        for model, u in usage.items()
    }


_DONE = object()


async def iterate_in_thread(iterator: Iterator[T]) -> AsyncIterator[T]:
    """Drive a blocking iterator from async code, one ``next`` per worker-thread call.

    The event loop never blocks, and no thread outlives the iteration: each step runs in
    ``asyncio.to_thread`` (which carries the context, so callbacks and tracing still work), and
    the iterator is closed -- freeing the model's KV cache -- when the consumer stops early.
    """
    try:
        while True:
            item = await asyncio.to_thread(next, iterator, _DONE)
            if item is _DONE:
                return
            yield item  # type: ignore[misc]
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            try:
                await asyncio.to_thread(close)
            except ValueError:
                # Cancelled while a step was still running in its thread: the generator is
                # closed when it is collected instead.
                pass


class StreamFirstChatModel(BaseChatModel):
    """Stream-first plumbing shared by the chat models (as ``ChatOllama`` does).

    Subclasses implement one chunk generator, :meth:`_chunks`; streaming, generation and
    their async forms all derive from it (async runs the generator one chunk at a time in
    a worker thread, so the event loop never blocks).

    Token counts (``get_num_tokens``, ``get_num_tokens_from_messages``) use the model's own
    tokenizer, loaded alone from local files (:meth:`_count_tokenizer`), never a hub one.

    Both models pickle and serialize (``dumpd``/``dumps``, revived by ``load``/``loads`` with
    ``valid_namespaces=["langchain_rankguide"]``): what is kept is the configuration (the
    fields); locks, loaded models and caches stay behind and load again on first use. No
    field holds a secret: hosted-API keys given to the constructor are dropped, and a remote
    LRM's key is read from the environment variable its configuration names, at each call.

    Tools and structured output (:meth:`bind_tools`, :meth:`with_structured_output`) are the
    same for both: a forced ``tool_choice`` or a schema is decoded under a grammar
    (:mod:`langchain_rankguide.engine.grammar`), so the output always parses.
    """

    _TRANSIENT: ClassVar[frozenset[str]] = frozenset()
    """Private attributes left out of a pickle (locks, loaded things); rebuilt empty."""

    # ------------------------------------------------------------------ serialization

    @classmethod
    def is_lc_serializable(cls) -> bool:
        """The models serialize with LangChain's ``dumpd`` (their configuration only)."""
        return True

    @property
    def lc_secrets(self) -> dict[str, str]:
        """No field is a secret (see the class docstring)."""
        return {}

    def to_json(self) -> Any:
        """LangChain's serialized form, with paths and configuration objects as JSON data."""
        serialized = super().to_json()
        if serialized.get("type") == "constructor":
            kwargs = serialized["kwargs"]  # type: ignore[typeddict-item]
            for key, value in list(kwargs.items()):
                kwargs[key] = json_field(value)
        return serialized

    def __getstate__(self) -> dict[Any, Any]:
        state = dict(super().__getstate__())
        private = state.get("__pydantic_private__") or {}
        state["__pydantic_private__"] = {
            k: v for k, v in private.items() if k not in self._TRANSIENT
        }
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        for name in self._TRANSIENT:
            default = self.__private_attributes__[name].get_default(call_default_factory=True)
            setattr(self, name, default)

    # ------------------------------------------------------------------ token counts

    def _count_tokenizer(self) -> Any:
        """The tokenizer that counts this model's tokens (its own, loaded without weights)."""
        raise NotImplementedError

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` by the model's own tokenizer (no special tokens added)."""
        if self.custom_get_token_ids is not None:
            return self.custom_get_token_ids(text)
        return list(self._count_tokenizer().encode(text, add_special_tokens=False))

    def _chunks(
        self, messages: list[BaseMessage], stop: list[str] | None, **kwargs: Any
    ) -> Iterator[ChatGenerationChunk]:
        raise NotImplementedError

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._chunks(messages, stop, **kwargs):
            if run_manager is not None:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        async for chunk in iterate_in_thread(self._chunks(messages, stop, **kwargs)):
            if run_manager is not None:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return generate_from_stream(self._chunks(messages, stop, **kwargs))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        chunks = [c async for c in iterate_in_thread(self._chunks(messages, stop, **kwargs))]
        return generate_from_stream(iter(chunks))

    # ------------------------------------------------------------------ tools and structure
    # Both models decode a forced tool call or a structured output under the same grammar
    # (langchain_rankguide.engine.grammar); ChatRankGuide's is written by the answer's author.

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer tools to the model (rendered through the chat template; see the class).

        Args:
            tools: LangChain tools, pydantic models, functions or OpenAI-format dicts.
            tool_choice: ``None``/``"auto"`` (the model decides; calls are parsed from its
                output), ``"none"``, ``"any"``/``"required"``/``True`` (one call to some tool,
                enforced by constrained decoding), or a tool name (a call to that tool).
            **kwargs: further call keywords.
        """
        formatted = [convert_to_openai_tool(tool) for tool in tools]
        # Fail at binding, not at the first call, on a choice that cannot be honoured.
        AnswerFormat.of(formatted, tool_choice).check()
        return super().bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | Any]:
        """Return a runnable whose output is validated against ``schema``.

        Decoding is constrained by llguidance in every method, so the output always parses:
        ``json_schema`` (default) constrains the reply to the schema; ``function_calling``
        forces a ``<tool_call>`` to a tool made from the schema; ``json_mode`` constrains to the
        schema as well (the grammar engine can, so nothing is left to the prompt).

        Args:
            schema: a pydantic model (v2 or v1), a TypedDict, or a JSON schema / OpenAI tool
                dict. Pydantic models come back as instances, the rest as dicts.
            method: see above.
            include_raw: return ``{"raw": AIMessage, "parsed": ..., "parsing_error": ...}``.
            strict: accepted for compatibility; decoding is always strict.
            **kwargs: further call keywords bound to the model.

        Raises:
            ImportError: llguidance is not installed (``langchain-rankguide[structured]``).
        """
        require_llguidance("with_structured_output")
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        trace = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
        parser: Runnable[Any, Any]
        if method == "function_calling":
            tool = convert_to_openai_tool(schema)
            name = tool["function"]["name"]
            llm = self.bind_tools(
                [schema], tool_choice=name, ls_structured_output_format=trace, **kwargs
            )
            if is_pydantic:
                parser = PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
            else:
                parser = JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
        elif method in ("json_schema", "json_mode"):
            json_schema = convert_to_json_schema(schema)
            llm = self.bind(
                response_format={"type": "json_schema", "json_schema": {"schema": json_schema}},
                ls_structured_output_format=trace,
                **kwargs,
            )
            if is_pydantic:
                parser = PydanticOutputParser(pydantic_object=schema)  # type: ignore[arg-type]
            else:
                parser = JsonOutputParser()
        else:
            raise ValueError(
                f"unknown method {method!r}; use json_schema, function_calling or json_mode"
            )
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        )
        failed = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks([failed], exception_key="parsing_error")
