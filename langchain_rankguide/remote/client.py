"""A small OpenAI-compatible HTTP client (vLLM, SGLang, Ollama, hosted APIs) on ``httpx``.

One :class:`OpenAICompatibleClient` holds one connection pool for synchronous calls
(``httpx.Client``) and one for asynchronous calls (``httpx.AsyncClient``), each created on first
use. Every request goes through the same retry policy:

* **Retried**: connection errors (refused, reset, DNS), connect/read/write timeouts, a
  connection dropped before the response was complete, HTTP 429 and every 5xx, and a 2xx
  response whose body is not the JSON an OpenAI-compatible server returns ("malformed"; a
  proxy or an overloaded server can send a truncated or HTML body, and generation requests
  are idempotent, so another attempt is safe).
* **Not retried**: any other 4xx (bad request, wrong key, unknown model): it would fail again.
* **Delays**: ``min(backoff_max_s, backoff_base_s * 2**(n - 1))`` before retry ``n``, times a
  random factor in ``[1 - jitter, 1 + jitter]``. A ``Retry-After`` header (seconds or an HTTP
  date) on a 429/503 raises the delay to at least its value, up to ``retry_after_max_s``.

When the attempts run out (or at the first non-retried failure) the call raises
:class:`~langchain_rankguide.remote.errors.LRMUnavailableError` naming the URL and the status.

The API key is a :class:`pydantic.SecretStr` (or a callable returning one, read at each
request, which is how :meth:`OpenAICompatibleClient.from_config` reads the configured
environment variable); it is sent as ``Authorization: Bearer`` and never logged, never put in
an error message or a ``repr``, and scrubbed from error text a server sends back.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import SecretStr

from langchain_rankguide.remote.errors import LRMStreamCutError, LRMUnavailableError

if TYPE_CHECKING:
    from langchain_rankguide.config.models import OpenAICompatibleLRMConfig, RetryConfig

logger = logging.getLogger("langchain_rankguide.remote")

ApiKey = SecretStr | Callable[[], SecretStr | None] | None
"""A key, a callable returning one at request time (``None`` = no key), or no key."""

_ERROR_TEXT_LIMIT = 300


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class RetryPolicy:
    """How failed requests are retried.

    Attributes:
        max_attempts: attempts per request, the first included (1 = no retry).
        backoff_base_s: delay before the first retry; doubles with each retry.
        backoff_max_s: upper bound of one computed delay.
        jitter: random fraction (0..1) added to or taken from each computed delay, so many
            workers retrying together do not hit the server in lockstep.
        retry_after_max_s: the longest ``Retry-After`` honoured; a server asking for more
            gets this much (so a misconfigured server cannot stall a run for hours).
    """

    max_attempts: int = 3
    backoff_base_s: float = 0.5
    backoff_max_s: float = 8.0
    jitter: float = 0.1
    retry_after_max_s: float = 60.0

    @classmethod
    def from_config(cls, config: RetryConfig) -> RetryPolicy:
        """Build the policy from the ``lrm.retries`` configuration section."""
        return cls(
            max_attempts=config.max_attempts,
            backoff_base_s=config.backoff_base_s,
            backoff_max_s=config.backoff_max_s,
            jitter=config.jitter,
        )

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry).

        Args:
            retry: which retry is next, from 1.
            retry_after: the server's ``Retry-After`` in seconds, if it sent one.

        Returns:
            The jittered exponential delay, raised to ``retry_after`` when that is longer.
        """
        base = min(self.backoff_max_s, self.backoff_base_s * 2 ** (retry - 1))
        if self.jitter:
            base *= 1.0 + random.uniform(-self.jitter, self.jitter)
        if retry_after is not None:
            base = max(base, min(retry_after, self.retry_after_max_s))
        return max(0.0, base)


# --------------------------------------------------------------------------- results


class Usage(dict[str, int]):
    """Token usage as the server reported it: ``prompt_tokens``, ``completion_tokens``.

    ``cached_tokens`` is present when the server reported prompt tokens served from its prefix
    cache (``usage.prompt_tokens_details.cached_tokens``).
    """


@dataclass
class CompletionResult:
    """One generation, non-streamed or aggregated from a stream.

    Attributes:
        text: the generated text (for chat: the message ``content``; ``""`` when absent).
        finish_reason: the server's ``finish_reason`` (``"stop"``, ``"length"``, ...), or
            ``None`` when it gave none.
        usage: ``prompt_tokens`` / ``completion_tokens`` (plus ``cached_tokens`` when
            reported); empty when the server sent no usage.
        reasoning: reasoning text a server split off (``reasoning_content`` in older vLLM and
            SGLang, ``reasoning`` in newer vLLM); ``None`` when absent.
        matched_stop: which stop string ended generation, when the server says: vLLM's
            ``stop_reason`` or SGLang's ``matched_stop`` (a string, or a token id for EOS).
        matched_stop_reported: ``True`` when the server sent one of those fields (even
            ``null``, which vLLM uses for EOS), so ``matched_stop`` can be trusted.
        top_logprobs: for the first generated token, token -> log-probability of the most
            likely alternatives, when log-probs were requested and returned.
        raw: the decoded response body (the last chunk for streams).
        attempts: attempts made, the first included.
        latency_s: wall time, retries included.
    """

    text: str
    finish_reason: str | None
    usage: Usage = field(default_factory=Usage)
    reasoning: str | None = None
    matched_stop: str | int | None = None
    matched_stop_reported: bool = False
    top_logprobs: dict[str, float] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    attempts: int = 1
    latency_s: float = 0.0


@dataclass
class StreamChunk:
    """One decoded SSE event of a streamed generation.

    Attributes:
        text: new text in this event (chat: ``delta.content``).
        reasoning: new reasoning text (``delta.reasoning_content`` / ``delta.reasoning``).
        finish_reason: set on the event that ends the choice.
        usage: set on the usage event (``stream_options.include_usage``).
        matched_stop: vLLM ``stop_reason`` / SGLang ``matched_stop`` when sent.
        matched_stop_reported: whether one of those fields was present.
        raw: the decoded event.
    """

    text: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    matched_stop: str | int | None = None
    matched_stop_reported: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


def aggregate_stream(chunks: Iterable[StreamChunk]) -> CompletionResult:
    """Join the chunks of a stream into one :class:`CompletionResult`."""
    text: list[str] = []
    reasoning: list[str] = []
    result = CompletionResult(text="", finish_reason=None)
    for chunk in chunks:
        text.append(chunk.text)
        reasoning.append(chunk.reasoning)
        if chunk.finish_reason is not None:
            result.finish_reason = chunk.finish_reason
        if chunk.matched_stop_reported:
            result.matched_stop = chunk.matched_stop
            result.matched_stop_reported = True
        if chunk.usage is not None:
            result.usage = chunk.usage
        result.raw = chunk.raw
    result.text = "".join(text)
    result.reasoning = "".join(reasoning) or None
    return result


class _Malformed(ValueError):
    """The body is not what an OpenAI-compatible server returns."""


def _first_choice(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _Malformed("the body is not a JSON object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _Malformed("no 'choices' list")
    return choices[0]


def _usage(body: Mapping[str, Any]) -> Usage:
    raw = body.get("usage")
    usage = Usage()
    if not isinstance(raw, Mapping):
        return usage
    for key in ("prompt_tokens", "completion_tokens"):
        value = raw.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            usage[key] = value
    details = raw.get("prompt_tokens_details")
    if isinstance(details, Mapping) and isinstance(details.get("cached_tokens"), int):
        usage["cached_tokens"] = int(details["cached_tokens"])
    return usage


def _matched_stop(choice: Mapping[str, Any]) -> tuple[str | int | None, bool]:
    for key in ("stop_reason", "matched_stop"):
        if key in choice:
            value = choice[key]
            if value is None or isinstance(value, (str, int)):
                return value, True
    return None, False


def _reasoning(message: Mapping[str, Any]) -> str | None:
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _top_logprobs(choice: Mapping[str, Any]) -> dict[str, float] | None:
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, Mapping):
        return None
    # Completions: {"top_logprobs": [{token: logprob, ...}, ...]}.
    top = logprobs.get("top_logprobs")
    if isinstance(top, list) and top and isinstance(top[0], Mapping):
        return {str(k): float(v) for k, v in top[0].items() if isinstance(v, (int, float))}
    # Chat: {"content": [{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}]}.
    content = logprobs.get("content")
    if isinstance(content, list) and content and isinstance(content[0], Mapping):
        first = content[0]
        found: dict[str, float] = {}
        for item in first.get("top_logprobs") or []:
            if isinstance(item, Mapping) and isinstance(item.get("logprob"), (int, float)):
                found[str(item.get("token"))] = float(item["logprob"])
        if isinstance(first.get("logprob"), (int, float)):
            found.setdefault(str(first.get("token")), float(first["logprob"]))
        return found or None
    return None


def parse_completion(body: Any, *, chat: bool) -> CompletionResult:
    """Read a non-streamed ``/completions`` or ``/chat/completions`` response body.

    Raises:
        ValueError: the body lacks the fields every OpenAI-compatible server sends.
    """
    choice = _first_choice(body)
    reasoning: str | None = None
    if chat:
        message = choice.get("message")
        if not isinstance(message, Mapping):
            raise _Malformed("the choice has no 'message' object")
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise _Malformed("'message.content' is not a string")
        text = content or ""
        reasoning = _reasoning(message)
    else:
        text_value = choice.get("text")
        if not isinstance(text_value, str):
            raise _Malformed("the choice has no 'text' string")
        text = text_value
    finish = choice.get("finish_reason")
    matched, reported = _matched_stop(choice)
    return CompletionResult(
        text=text,
        finish_reason=finish if isinstance(finish, str) else None,
        usage=_usage(body),
        reasoning=reasoning,
        matched_stop=matched,
        matched_stop_reported=reported,
        top_logprobs=_top_logprobs(choice),
        raw=body,
    )


def parse_stream_event(event: Any, *, chat: bool) -> StreamChunk:
    """Read one decoded SSE event of a streamed response.

    Raises:
        ValueError: the event is not a streamed completion chunk.
    """
    if not isinstance(event, dict):
        raise _Malformed("a stream event is not a JSON object")
    usage = _usage(event) if isinstance(event.get("usage"), Mapping) else None
    choices = event.get("choices")
    if not isinstance(choices, list):
        raise _Malformed("a stream event has no 'choices' list")
    chunk = StreamChunk(usage=usage, raw=event)
    if not choices:
        return chunk  # the usage-only event
    choice = choices[0]
    if not isinstance(choice, Mapping):
        raise _Malformed("a stream choice is not an object")
    if chat:
        delta = choice.get("delta") or {}
        if not isinstance(delta, Mapping):
            raise _Malformed("a stream choice has no 'delta' object")
        content = delta.get("content")
        chunk.text = content if isinstance(content, str) else ""
        chunk.reasoning = _reasoning(delta) or ""
    else:
        text = choice.get("text")
        chunk.text = text if isinstance(text, str) else ""
    finish = choice.get("finish_reason")
    chunk.finish_reason = finish if isinstance(finish, str) else None
    chunk.matched_stop, chunk.matched_stop_reported = _matched_stop(choice)
    return chunk


# --------------------------------------------------------------------------- helpers


def _safe_url(url: str) -> str:
    """Drop ``user:password@`` from a URL before it goes into a message."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _redact(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "***")
    return text


def _error_text(response: httpx.Response) -> str:
    """Return the server's error message (OpenAI ``error.message``, ``detail``, or the text)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    message: Any = None
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping):
            message = error.get("message")
        elif isinstance(error, str):
            message = error
        message = message or body.get("detail") or body.get("message")
    if not message:
        message = response.text.strip() or response.reason_phrase
    text = " ".join(str(message).split())
    return text[:_ERROR_TEXT_LIMIT] + ("..." if len(text) > _ERROR_TEXT_LIMIT else "")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _describe(exc: httpx.TransportError) -> str:
    detail = str(exc) or "no detail"
    return f"{type(exc).__name__}: {detail}"


@dataclass
class _Failure:
    status: int | None
    reason: str
    retryable: bool
    retry_after: float | None = None


def _status_failure(response: httpx.Response) -> _Failure:
    status = response.status_code
    return _Failure(
        status=status,
        reason=_error_text(response),
        retryable=status == 429 or status >= 500,
        retry_after=_retry_after(response) if status in (429, 503) else None,
    )


class SSEDecoder:
    """Incremental Server-Sent Events decoder: feed lines, get each event's data.

    ``data:`` lines of one event are joined with newlines; comments (``:``) and other fields
    (``event:``, ``id:``, ``retry:``) are ignored, as OpenAI-compatible servers use none of them.
    """

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        """Take one line (without its newline); return an event's data when the event ends."""
        if not line:
            return self.flush()
        if line.startswith(":"):
            return None  # a comment / keep-alive
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None

    def flush(self) -> str | None:
        """Return the pending event's data (at a blank line or the end of the stream)."""
        if not self._data:
            return None
        data, self._data = "\n".join(self._data), []
        return data


class _SSEState:
    """Tracks one stream: what was handed out, and whether it ended properly."""

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.done = False
        self.finished = False
        self.yielded = False
        self.partial: list[str] = []

    def decode(self, payload: str) -> StreamChunk | None:
        if payload.strip() == "[DONE]":
            self.done = True
            return None
        try:
            event = json.loads(payload)
        except ValueError as exc:
            raise _Malformed(f"a stream event is not JSON ({exc})") from None
        if isinstance(event, Mapping) and event.get("error") is not None:
            error = event["error"]
            message = error.get("message") if isinstance(error, Mapping) else error
            raise _Malformed(f"the server sent an error event: {message}")
        chunk = parse_stream_event(event, chat=self.chat)
        if chunk.finish_reason is not None:
            self.finished = True
        self.partial.append(chunk.text)
        return chunk

    def feed(self, decoder: SSEDecoder, line: str) -> StreamChunk | None:
        payload = decoder.feed(line)
        return None if payload is None else self.decode(payload)

    def flush(self, decoder: SSEDecoder) -> StreamChunk | None:
        payload = decoder.flush()
        return None if payload is None or self.done else self.decode(payload)

    @property
    def complete(self) -> bool:
        return self.done or self.finished


# --------------------------------------------------------------------------- client


class OpenAICompatibleClient:
    r"""Calls ``/completions`` and ``/chat/completions`` of an OpenAI-compatible server.

    Args:
        base_url: the server URL including the API prefix, e.g. ``http://localhost:8000/v1``.
        api_key: a :class:`~pydantic.SecretStr`, a callable returning one at each request, or
            ``None`` for no ``Authorization`` header.
        connect_timeout_s: seconds to wait for a connection.
        read_timeout_s: seconds to wait for data (each read; for streams, between events).
        retry: the retry policy (default :class:`RetryPolicy`).
        headers: extra headers sent with every request.
        transport: an ``httpx`` transport for the sync pool (tests, proxies).
        async_transport: an ``httpx`` transport for the async pool.

    Example:
        >>> client = OpenAICompatibleClient("http://127.0.0.1:8000/v1")  # doctest: +SKIP
        >>> client.completions("2 + 2 =", max_tokens=4, stop=["\n"]).text  # doctest: +SKIP
        ' 4'
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: ApiKey = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 120.0,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._api_key = api_key
        self.timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
        self.retry = retry or RetryPolicy()
        self._headers = dict(headers or {})
        self._transport = transport
        self._async_transport = async_transport
        self._client: httpx.Client | None = None
        self._aclient: httpx.AsyncClient | None = None

    @classmethod
    def from_config(cls, config: OpenAICompatibleLRMConfig) -> OpenAICompatibleClient:
        """Build a client from the ``lrm`` section (``provider: openai_compatible``).

        The key is read from ``api_key_env`` at each request, so rotating the variable's value
        takes effect without a restart; an unset variable raises
        :class:`~langchain_rankguide.errors.ConfigError` when a request is made.
        """
        api_key: ApiKey = None
        if config.api_key_env is not None:
            api_key = config.api_key
        return cls(
            config.base_url,
            model=config.model,
            api_key=api_key,
            connect_timeout_s=config.timeouts.connect,
            read_timeout_s=config.timeouts.read,
            retry=RetryPolicy.from_config(config.retries),
        )

    def __repr__(self) -> str:
        keyed = "set" if self._api_key is not None else "none"
        return f"{type(self).__name__}(base_url={_safe_url(self.base_url)!r}, api_key={keyed})"

    # ------------------------------------------------------------------ pools

    @property
    def sync_client(self) -> httpx.Client:
        """The synchronous connection pool (created on first use)."""
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout, transport=self._transport)
        return self._client

    @property
    def async_client(self) -> httpx.AsyncClient:
        """The asynchronous connection pool (created on first use)."""
        if self._aclient is None:
            self._aclient = httpx.AsyncClient(timeout=self.timeout, transport=self._async_transport)
        return self._aclient

    def close(self) -> None:
        """Close the synchronous pool (use :meth:`aclose` in async code to close both)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        """Close both pools."""
        self.close()
        if self._aclient is not None:
            await self._aclient.aclose()
            self._aclient = None

    def __enter__(self) -> OpenAICompatibleClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> OpenAICompatibleClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ request bodies

    @staticmethod
    def _body(
        core: dict[str, Any],
        *,
        temperature: float | None,
        extras: Mapping[str, Any],
        extra_body: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        # extra_body may override sampling and vendor extras, never what this client relies on
        # (model, prompt/messages, max_tokens, stop, stream).
        body: dict[str, Any] = {}
        if temperature is not None:
            body["temperature"] = temperature
        body.update(extras)
        body.update(extra_body or {})
        body.update(core)
        return body

    def completions_body(
        self,
        model: str,
        prompt: str,
        *,
        max_tokens: int,
        stop: Sequence[str] | None = None,
        temperature: float | None = None,
        logprobs: int | None = None,
        extra_body: Mapping[str, Any] | None = None,
        stream: bool = False,
    ) -> dict[str, Any]:
        """Build the JSON body of a ``/completions`` request (see :meth:`completions`)."""
        extras: dict[str, Any] = {}
        if logprobs is not None:
            extras["logprobs"] = logprobs
        core: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": max_tokens}
        if stop:
            core["stop"] = list(stop)
        if stream:
            core["stream"] = True
        return self._body(core, temperature=temperature, extras=extras, extra_body=extra_body)

    def chat_body(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        max_tokens: int,
        stop: Sequence[str] | None = None,
        temperature: float | None = None,
        continue_final_message: bool | None = None,
        add_generation_prompt: bool | None = None,
        top_logprobs: int | None = None,
        extra_body: Mapping[str, Any] | None = None,
        stream: bool = False,
    ) -> dict[str, Any]:
        """Build the JSON body of a ``/chat/completions`` request (see :meth:`chat`)."""
        continuing = bool(messages) and messages[-1].get("role") == "assistant"
        if continue_final_message is None:
            continue_final_message = continuing
        extras: dict[str, Any] = {}
        # Sent only when they differ from the OpenAI behaviour, so a strict server that
        # rejects unknown fields still accepts ordinary requests.
        if continue_final_message or add_generation_prompt is not None:
            extras["continue_final_message"] = continue_final_message
            extras["add_generation_prompt"] = (
                add_generation_prompt
                if add_generation_prompt is not None
                else not continue_final_message
            )
        if top_logprobs is not None:
            extras["logprobs"] = True
            extras["top_logprobs"] = top_logprobs
        core: dict[str, Any] = {
            "model": model,
            "messages": [dict(m) for m in messages],
            "max_tokens": max_tokens,
        }
        if stop:
            core["stop"] = list(stop)
        if stream:
            core["stream"] = True
        return self._body(core, temperature=temperature, extras=extras, extra_body=extra_body)

    # ------------------------------------------------------------------ public calls

    def completions(
        self,
        prompt: str,
        *,
        max_tokens: int,
        model: str | None = None,
        stop: Sequence[str] | None = None,
        temperature: float | None = None,
        logprobs: int | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> CompletionResult:
        """Continue ``prompt`` with ``POST {base_url}/completions``.

        Args:
            prompt: the raw text to continue (already templated).
            max_tokens: most tokens to generate.
            model: the model name as the server knows it (default: the client's ``model``).
            stop: stop strings; servers strip the matched one from the text.
            temperature: sampling temperature (``None`` = the server's default).
            logprobs: ask for this many top log-probs per token.
            extra_body: vendor extras merged into the body.

        Raises:
            LRMUnavailableError: the request failed after the retries.
        """
        body = self.completions_body(
            self._model(model),
            prompt,
            max_tokens=max_tokens,
            stop=stop,
            temperature=temperature,
            logprobs=logprobs,
            extra_body=extra_body,
        )
        return self._call("/completions", body, chat=False)

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        max_tokens: int,
        model: str | None = None,
        stop: Sequence[str] | None = None,
        temperature: float | None = None,
        continue_final_message: bool | None = None,
        add_generation_prompt: bool | None = None,
        top_logprobs: int | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> CompletionResult:
        """Generate with ``POST {base_url}/chat/completions``.

        A trailing assistant message is continued: ``continue_final_message: true`` and
        ``add_generation_prompt: false`` are sent as vendor extras (vLLM and SGLang honour
        them; a server that ignores them answers in a new assistant turn instead).

        Args:
            messages: OpenAI-style chat messages.
            max_tokens: most tokens to generate.
            model: the model name as the server knows it (default: the client's ``model``).
            stop: stop strings.
            temperature: sampling temperature (``None`` = the server's default).
            continue_final_message: continue the last message (default: when it is the
                assistant's).
            add_generation_prompt: default ``not continue_final_message``.
            top_logprobs: ask for this many top log-probs per token.
            extra_body: vendor extras merged into the body.

        Raises:
            LRMUnavailableError: the request failed after the retries.
        """
        body = self.chat_body(
            self._model(model),
            messages,
            max_tokens=max_tokens,
            stop=stop,
            temperature=temperature,
            continue_final_message=continue_final_message,
            add_generation_prompt=add_generation_prompt,
            top_logprobs=top_logprobs,
            extra_body=extra_body,
        )
        return self._call("/chat/completions", body, chat=True)

    async def acompletions(
        self,
        prompt: str,
        *,
        max_tokens: int,
        model: str | None = None,
        stop: Sequence[str] | None = None,
        temperature: float | None = None,
        logprobs: int | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> CompletionResult:
        """Async :meth:`completions`, on the async pool."""
        body = self.completions_body(
            self._model(model),
            prompt,
            max_tokens=max_tokens,
            stop=stop,
            temperature=temperature,
            logprobs=logprobs,
            extra_body=extra_body,
        )
        return await self._acall("/completions", body, chat=False)

    async def achat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        max_tokens: int,
        model: str | None = None,
        stop: Sequence[str] | None = None,
        temperature: float | None = None,
        continue_final_message: bool | None = None,
        add_generation_prompt: bool | None = None,
        top_logprobs: int | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> CompletionResult:
        """Async :meth:`chat`, on the async pool."""
        body = self.chat_body(
            self._model(model),
            messages,
            max_tokens=max_tokens,
            stop=stop,
            temperature=temperature,
            continue_final_message=continue_final_message,
            add_generation_prompt=add_generation_prompt,
            top_logprobs=top_logprobs,
            extra_body=extra_body,
        )
        return await self._acall("/chat/completions", body, chat=True)

    def stream_completions(
        self,
        prompt: str,
        *,
        max_tokens: int,
        model: str | None = None,
        stop: Sequence[str] | None = None,
        temperature: float | None = None,
        include_usage: bool = True,
        extra_body: Mapping[str, Any] | None = None,
    ) -> Iterator[StreamChunk]:
        """Stream :meth:`completions` over SSE, one :class:`StreamChunk` per event.

        Failures before the first chunk is handed out are retried like any request; after
        that, a stream that ends before ``[DONE]`` and before a ``finish_reason`` (or that
        carries an error event or an unreadable event) raises
        :class:`~langchain_rankguide.remote.errors.LRMStreamCutError`.
        """
        body = self.completions_body(
            self._model(model),
            prompt,
            max_tokens=max_tokens,
            stop=stop,
            temperature=temperature,
            extra_body=extra_body,
            stream=True,
        )
        if include_usage:
            body.setdefault("stream_options", {"include_usage": True})
        return self._stream("/completions", body, chat=False)

    def stream_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        max_tokens: int,
        model: str | None = None,
        stop: Sequence[str] | None = None,
        temperature: float | None = None,
        continue_final_message: bool | None = None,
        add_generation_prompt: bool | None = None,
        include_usage: bool = True,
        extra_body: Mapping[str, Any] | None = None,
    ) -> Iterator[StreamChunk]:
        """Stream :meth:`chat` over SSE (see :meth:`stream_completions` for failures)."""
        body = self.chat_body(
            self._model(model),
            messages,
            max_tokens=max_tokens,
            stop=stop,
            temperature=temperature,
            continue_final_message=continue_final_message,
            add_generation_prompt=add_generation_prompt,
            extra_body=extra_body,
            stream=True,
        )
        if include_usage:
            body.setdefault("stream_options", {"include_usage": True})
        return self._stream("/chat/completions", body, chat=True)

    def astream_completions(
        self,
        prompt: str,
        *,
        max_tokens: int,
        model: str | None = None,
        stop: Sequence[str] | None = None,
        temperature: float | None = None,
        include_usage: bool = True,
        extra_body: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[StreamChunk]:
        """Async :meth:`stream_completions`."""
        body = self.completions_body(
            self._model(model),
            prompt,
            max_tokens=max_tokens,
            stop=stop,
            temperature=temperature,
            extra_body=extra_body,
            stream=True,
        )
        if include_usage:
            body.setdefault("stream_options", {"include_usage": True})
        return self._astream("/completions", body, chat=False)

    def astream_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        max_tokens: int,
        model: str | None = None,
        stop: Sequence[str] | None = None,
        temperature: float | None = None,
        continue_final_message: bool | None = None,
        add_generation_prompt: bool | None = None,
        include_usage: bool = True,
        extra_body: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[StreamChunk]:
        """Async :meth:`stream_chat`."""
        body = self.chat_body(
            self._model(model),
            messages,
            max_tokens=max_tokens,
            stop=stop,
            temperature=temperature,
            continue_final_message=continue_final_message,
            add_generation_prompt=add_generation_prompt,
            extra_body=extra_body,
            stream=True,
        )
        if include_usage:
            body.setdefault("stream_options", {"include_usage": True})
        return self._astream("/chat/completions", body, chat=True)

    # ------------------------------------------------------------------ plumbing

    def _model(self, model: str | None) -> str:
        chosen = model or self.model
        if not chosen:
            raise ValueError("no model named: pass model= to the call or to the client")
        return chosen

    def _url(self, path: str) -> str:
        return self.base_url + path

    def _secret(self) -> str | None:
        key = self._api_key() if callable(self._api_key) else self._api_key
        return key.get_secret_value() if key is not None else None

    def _request_headers(self, secret: str | None, *, stream: bool = False) -> dict[str, str]:
        headers = {"Accept": "text/event-stream" if stream else "application/json"}
        headers.update(self._headers)
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        return headers

    def _error(
        self, url: str, failure: _Failure, attempts: int, secret: str | None
    ) -> LRMUnavailableError:
        return LRMUnavailableError(
            _safe_url(url),
            failure.status,
            attempts,
            _redact(failure.reason, secret),
            retryable=failure.retryable,
        )

    def _next_delay(
        self, url: str, failure: _Failure, attempt: int, secret: str | None
    ) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` if the call must give up."""
        if not failure.retryable or attempt >= self.retry.max_attempts:
            return None
        delay = self.retry.delay(attempt, failure.retry_after)
        logger.warning(
            "LRM request to %s failed (attempt %d/%d, %s: %s); retrying in %.2f s",
            _safe_url(url),
            attempt,
            self.retry.max_attempts,
            f"HTTP {failure.status}" if failure.status is not None else "no response",
            _redact(failure.reason, secret),
            delay,
        )
        return delay

    @staticmethod
    def _decode(response: httpx.Response, *, chat: bool) -> CompletionResult | _Failure:
        if response.status_code >= 300:
            return _status_failure(response)
        try:
            return parse_completion(response.json(), chat=chat)
        except ValueError as exc:  # json.JSONDecodeError and _Malformed
            reason = f"malformed response body ({exc})"
            return _Failure(status=response.status_code, reason=reason, retryable=True)

    def _call(self, path: str, body: dict[str, Any], *, chat: bool) -> CompletionResult:
        url = self._url(path)
        started = time.perf_counter()
        secret = self._secret()
        headers = self._request_headers(secret)
        attempt = 0
        while True:
            attempt += 1
            outcome: CompletionResult | _Failure
            try:
                response = self.sync_client.post(url, json=body, headers=headers)
            except httpx.UnsupportedProtocol as exc:
                outcome = _Failure(None, _describe(exc), retryable=False)
            except httpx.TransportError as exc:
                outcome = _Failure(None, _describe(exc), retryable=True)
            else:
                outcome = self._decode(response, chat=chat)
            if isinstance(outcome, CompletionResult):
                outcome.attempts = attempt
                outcome.latency_s = time.perf_counter() - started
                return outcome
            delay = self._next_delay(url, outcome, attempt, secret)
            if delay is None:
                raise self._error(url, outcome, attempt, secret)
            time.sleep(delay)

    async def _acall(self, path: str, body: dict[str, Any], *, chat: bool) -> CompletionResult:
        url = self._url(path)
        started = time.perf_counter()
        secret = self._secret()
        headers = self._request_headers(secret)
        attempt = 0
        while True:
            attempt += 1
            outcome: CompletionResult | _Failure
            try:
                response = await self.async_client.post(url, json=body, headers=headers)
            except httpx.UnsupportedProtocol as exc:
                outcome = _Failure(None, _describe(exc), retryable=False)
            except httpx.TransportError as exc:
                outcome = _Failure(None, _describe(exc), retryable=True)
            else:
                outcome = self._decode(response, chat=chat)
            if isinstance(outcome, CompletionResult):
                outcome.attempts = attempt
                outcome.latency_s = time.perf_counter() - started
                return outcome
            delay = self._next_delay(url, outcome, attempt, secret)
            if delay is None:
                raise self._error(url, outcome, attempt, secret)
            await asyncio.sleep(delay)

    def _cut(
        self, url: str, state: _SSEState, attempt: int, reason: str, secret: str | None
    ) -> LRMStreamCutError:
        return LRMStreamCutError(
            _safe_url(url),
            200,
            attempt,
            _redact(reason, secret),
            partial="".join(state.partial),
        )

    def _stream(self, path: str, body: dict[str, Any], *, chat: bool) -> Iterator[StreamChunk]:
        url = self._url(path)
        secret = self._secret()
        headers = self._request_headers(secret, stream=True)
        attempt = 0
        while True:
            attempt += 1
            state = _SSEState(chat)
            failure: _Failure
            try:
                with self.sync_client.stream("POST", url, json=body, headers=headers) as response:
                    if response.status_code >= 300:
                        response.read()
                        failure = _status_failure(response)
                    else:
                        decoder = SSEDecoder()
                        for line in response.iter_lines():
                            chunk = state.feed(decoder, line)
                            if state.done:
                                break
                            if chunk is not None:
                                state.yielded = True
                                yield chunk
                        else:
                            chunk = state.flush(decoder)
                            if chunk is not None:
                                state.yielded = True
                                yield chunk
                        if state.complete:
                            return
                        failure = _Failure(
                            200, "the stream ended before [DONE] and finish_reason", True
                        )
            except httpx.UnsupportedProtocol as exc:
                failure = _Failure(None, _describe(exc), retryable=False)
            except httpx.TransportError as exc:
                failure = _Failure(200 if state.yielded else None, _describe(exc), retryable=True)
            except _Malformed as exc:
                failure = _Failure(200, str(exc), retryable=True)
            if state.yielded:
                # Text was handed out: a retry would repeat it, so the caller decides.
                raise self._cut(url, state, attempt, failure.reason, secret)
            delay = self._next_delay(url, failure, attempt, secret)
            if delay is None:
                raise self._error(url, failure, attempt, secret)
            time.sleep(delay)

    async def _astream(
        self, path: str, body: dict[str, Any], *, chat: bool
    ) -> AsyncIterator[StreamChunk]:
        url = self._url(path)
        secret = self._secret()
        headers = self._request_headers(secret, stream=True)
        attempt = 0
        while True:
            attempt += 1
            state = _SSEState(chat)
            failure: _Failure
            try:
                async with self.async_client.stream(
                    "POST", url, json=body, headers=headers
                ) as response:
                    if response.status_code >= 300:
                        await response.aread()
                        failure = _status_failure(response)
                    else:
                        decoder = SSEDecoder()
                        async for line in response.aiter_lines():
                            chunk = state.feed(decoder, line)
                            if state.done:
                                break
                            if chunk is not None:
                                state.yielded = True
                                yield chunk
                        else:
                            chunk = state.flush(decoder)
                            if chunk is not None:
                                state.yielded = True
                                yield chunk
                        if state.complete:
                            return
                        failure = _Failure(
                            200, "the stream ended before [DONE] and finish_reason", True
                        )
            except httpx.UnsupportedProtocol as exc:
                failure = _Failure(None, _describe(exc), retryable=False)
            except httpx.TransportError as exc:
                failure = _Failure(200 if state.yielded else None, _describe(exc), retryable=True)
            except _Malformed as exc:
                failure = _Failure(200, str(exc), retryable=True)
            if state.yielded:
                raise self._cut(url, state, attempt, failure.reason, secret)
            delay = self._next_delay(url, failure, attempt, secret)
            if delay is None:
                raise self._error(url, failure, attempt, secret)
            await asyncio.sleep(delay)
