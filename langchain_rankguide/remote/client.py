"""A small OpenAI-compatible HTTP client (vLLM, SGLang, Ollama, hosted APIs) on ``httpx``.

One :class:`OpenAICompatibleClient` holds one connection pool for synchronous calls
(``httpx.Client``) and one for asynchronous calls (``httpx.AsyncClient``), each created on first
use. A call takes a :class:`~langchain_rankguide.remote.wire.Request` (built with
:func:`~langchain_rankguide.remote.wire.completions_request` or
:func:`~langchain_rankguide.remote.wire.chat_request`) and either returns one result
(:meth:`~OpenAICompatibleClient.send`, :meth:`~OpenAICompatibleClient.asend`) or yields SSE
chunks (:meth:`~OpenAICompatibleClient.stream`, :meth:`~OpenAICompatibleClient.astream`);
:meth:`~OpenAICompatibleClient.completions` and :meth:`~OpenAICompatibleClient.chat` build and
send in one step. The drivers here only move bytes: the body and its parsing live in
:mod:`~langchain_rankguide.remote.wire`, and every attempt goes through the policy of
:mod:`~langchain_rankguide.remote.retry`, so sync, async, plain and streamed calls retry
alike. When the attempts run out (or at the first failure that is not retried) a call raises
:class:`~langchain_rankguide.remote.errors.LRMUnavailableError` naming the URL and the status.

The API key is a :class:`pydantic.SecretStr` (or a callable returning one, read at each
request, which is how :meth:`OpenAICompatibleClient.from_config` reads the configured
environment variable); it is sent as ``Authorization: Bearer`` and never logged, never put in
an error message or a ``repr``, and scrubbed from error text a server sends back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import SecretStr

from langchain_rankguide.remote.errors import safe_url
from langchain_rankguide.remote.retry import (
    Attempts,
    Failure,
    RetryPolicy,
    status_failure,
    transport_failure,
)
from langchain_rankguide.remote.wire import (
    CompletionResult,
    MalformedBody,
    Request,
    SSEDecoder,
    StreamChunk,
    StreamParser,
    Usage,
    aggregate_stream,
    chat_request,
    completions_request,
    error_message,
    parse_completion,
    parse_stream_event,
)

if TYPE_CHECKING:
    from langchain_rankguide.config.models import OpenAICompatibleLRMConfig

__all__ = [
    "ApiKey",
    "CompletionResult",
    "OpenAICompatibleClient",
    "RetryPolicy",
    "SSEDecoder",
    "StreamChunk",
    "Usage",
    "aggregate_stream",
    "parse_completion",
    "parse_stream_event",
]

ApiKey = SecretStr | Callable[[], SecretStr | None] | None
"""A key, a callable returning one at request time (``None`` = no key), or no key."""


class _Call:
    """One call in flight: where it goes, with which headers, and its attempts so far."""

    def __init__(self, url: str, headers: dict[str, str], attempts: Attempts) -> None:
        self.url = url
        self.headers = headers
        self.attempts = attempts
        self.started = time.perf_counter()

    def done(self, result: CompletionResult) -> CompletionResult:
        result.attempts = self.attempts.number
        result.latency_s = time.perf_counter() - self.started
        return result


def _read(response: httpx.Response, *, chat: bool) -> CompletionResult | Failure:
    """A whole response's result, or how it failed."""
    if response.status_code >= 300:
        return _status_failure(response)
    try:
        return parse_completion(response.json(), chat=chat)
    except ValueError as exc:  # json.JSONDecodeError and MalformedBody
        reason = f"malformed response body ({exc})"
        return Failure(status=response.status_code, reason=reason, retryable=True)


def _status_failure(response: httpx.Response) -> Failure:
    reason = error_message(response.text, response.reason_phrase)
    return status_failure(response.status_code, reason, response.headers.get("retry-after"))


class OpenAICompatibleClient:
    r"""Calls ``/completions`` and ``/chat/completions`` of an OpenAI-compatible server.

    Args:
        base_url: the server URL including the API prefix, e.g. ``http://localhost:8000/v1``.
        model: the model name sent when a request names none.
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
        return f"{type(self).__name__}(base_url={safe_url(self.base_url)!r}, api_key={keyed})"

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

    # ------------------------------------------------------------------ shortcuts

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

        The arguments are those of
        :func:`~langchain_rankguide.remote.wire.completions_request`.

        Raises:
            LRMUnavailableError: the request failed after the retries.
        """
        request = completions_request(
            prompt,
            max_tokens=max_tokens,
            model=model,
            stop=stop,
            temperature=temperature,
            logprobs=logprobs,
            extra_body=extra_body,
        )
        return self.send(request)

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
        """Generate with ``POST {base_url}/chat/completions``, continuing a final assistant turn.

        The arguments are those of :func:`~langchain_rankguide.remote.wire.chat_request`.

        Raises:
            LRMUnavailableError: the request failed after the retries.
        """
        request = chat_request(
            messages,
            max_tokens=max_tokens,
            model=model,
            stop=stop,
            temperature=temperature,
            continue_final_message=continue_final_message,
            add_generation_prompt=add_generation_prompt,
            top_logprobs=top_logprobs,
            extra_body=extra_body,
        )
        return self.send(request)

    # ------------------------------------------------------------------ whole responses

    def send(self, request: Request) -> CompletionResult:
        """Send ``request`` and return its result, retrying as the policy allows.

        Raises:
            LRMUnavailableError: the request failed after the retries.
            ValueError: neither the request nor the client names a model.
        """
        request = self._resolve(request)
        call = self._start(request)
        while True:
            try:
                response = self.sync_client.post(call.url, json=request.body, headers=call.headers)
            except httpx.TransportError as exc:
                outcome: CompletionResult | Failure = transport_failure(exc)
            else:
                outcome = _read(response, chat=request.chat)
            if isinstance(outcome, CompletionResult):
                return call.done(outcome)
            time.sleep(call.attempts.wait(outcome))

    async def asend(self, request: Request) -> CompletionResult:
        """Async :meth:`send`, on the async pool."""
        request = self._resolve(request)
        call = self._start(request)
        while True:
            try:
                response = await self.async_client.post(
                    call.url, json=request.body, headers=call.headers
                )
            except httpx.TransportError as exc:
                outcome: CompletionResult | Failure = transport_failure(exc)
            else:
                outcome = _read(response, chat=request.chat)
            if isinstance(outcome, CompletionResult):
                return call.done(outcome)
            await asyncio.sleep(call.attempts.wait(outcome))

    # ------------------------------------------------------------------ streams

    def stream(self, request: Request) -> Iterator[StreamChunk]:
        """Send ``request`` as an SSE stream, one :class:`StreamChunk` per event.

        A final usage event is asked for (``stream_options``) unless the body sets its own.
        Failures before the first chunk is handed out are retried like any request; after
        that, a stream that ends before ``[DONE]`` and before a ``finish_reason`` (or that
        carries an error event or an unreadable event) raises
        :class:`~langchain_rankguide.remote.errors.LRMStreamCutError`.

        Raises:
            ValueError: neither the request nor the client names a model.
        """
        return self._stream(self._resolve(request).streamed())

    def astream(self, request: Request) -> AsyncIterator[StreamChunk]:
        """Async :meth:`stream`, on the async pool."""
        return self._astream(self._resolve(request).streamed())

    def _stream(self, request: Request) -> Iterator[StreamChunk]:
        call = self._start(request, stream=True)
        while True:
            parser = StreamParser(chat=request.chat)
            try:
                with self.sync_client.stream(
                    "POST", call.url, json=request.body, headers=call.headers
                ) as response:
                    if response.status_code < 300:
                        for line in response.iter_lines():
                            if (chunk := parser.feed(line)) is not None:
                                yield chunk
                            if parser.done:
                                break
                        if (chunk := parser.close()) is not None:
                            yield chunk
                    else:
                        response.read()
                    failure = _stream_outcome(response, parser)
            except (httpx.TransportError, MalformedBody) as exc:
                failure = _stream_failure(exc, parser)
            if failure is None:
                return
            time.sleep(call.attempts.wait(failure, partial=_handed_out(parser)))

    async def _astream(self, request: Request) -> AsyncIterator[StreamChunk]:
        call = self._start(request, stream=True)
        while True:
            parser = StreamParser(chat=request.chat)
            try:
                async with self.async_client.stream(
                    "POST", call.url, json=request.body, headers=call.headers
                ) as response:
                    if response.status_code < 300:
                        async for line in response.aiter_lines():
                            if (chunk := parser.feed(line)) is not None:
                                yield chunk
                            if parser.done:
                                break
                        if (chunk := parser.close()) is not None:
                            yield chunk
                    else:
                        await response.aread()
                    failure = _stream_outcome(response, parser)
            except (httpx.TransportError, MalformedBody) as exc:
                failure = _stream_failure(exc, parser)
            if failure is None:
                return
            await asyncio.sleep(call.attempts.wait(failure, partial=_handed_out(parser)))

    # ------------------------------------------------------------------ plumbing

    def _resolve(self, request: Request) -> Request:
        if request.body.get("model") is not None:
            return request
        if not self.model:
            raise ValueError("no model named: pass model= to the call or to the client")
        return Request(request.path, {**request.body, "model": self.model}, request.chat)

    def _start(self, request: Request, *, stream: bool = False) -> _Call:
        # The key is read here, at each call, so a rotated key takes effect at once.
        key = self._api_key() if callable(self._api_key) else self._api_key
        secret = key.get_secret_value() if key is not None else None
        headers = {"Accept": "text/event-stream" if stream else "application/json"}
        headers.update(self._headers)
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        url = self.base_url + request.path
        return _Call(url, headers, Attempts(self.retry, url, secret))


def _stream_outcome(response: httpx.Response, parser: StreamParser) -> Failure | None:
    """How a stream read to its end failed, or ``None`` when it ended properly."""
    if response.status_code >= 300:
        return _status_failure(response)
    if parser.complete:
        return None
    return Failure(200, "the stream ended before [DONE] and finish_reason", retryable=True)


def _stream_failure(exc: httpx.TransportError | MalformedBody, parser: StreamParser) -> Failure:
    """How a stream failed while it was read."""
    if isinstance(exc, MalformedBody):
        return Failure(200, str(exc), retryable=True)
    return transport_failure(exc, 200 if parser.started else None)


def _handed_out(parser: StreamParser) -> str | None:
    """The text a stream handed out, or ``None`` when none was (a retry is then safe)."""
    return parser.partial if parser.started else None
