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
import contextlib
import json
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Generator,
    Iterator,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import SecretStr

from langchain_rankguide.remote.bounds import (
    ERROR_BODY_BYTES,
    BoundedBody,
    BoundedLines,
    BoundHit,
    ReplyLimit,
)
from langchain_rankguide.remote.deadline import Clock, async_transport, sync_transport
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
    "ReplyLimit",
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
    """One call in flight: where it goes, with which headers, its bounds and its attempts."""

    def __init__(
        self, url: str, headers: dict[str, str], attempts: Attempts, clock: Clock, cap: int
    ) -> None:
        self.url = url
        self.headers = headers
        self.attempts = attempts
        self.clock = clock
        self.cap = cap
        self.started = time.perf_counter()

    def done(self, result: CompletionResult) -> CompletionResult:
        """The result with its attempt count and latency, and the key scrubbed from its text.

        A server that echoes the API key back must not put it into step records, traces,
        checkpoints or served replies: nothing downstream ever sees the raw reply.
        """
        result.attempts = self.attempts.number
        result.latency_s = time.perf_counter() - self.started
        result.text = self.attempts.redact(result.text)
        if result.reasoning is not None:
            result.reasoning = self.attempts.redact(result.reasoning)
        return result

    def transport_failure(self, exc: httpx.TransportError, status: int | None = None) -> Failure:
        """How a transport error failed the attempt: a deadline that passed says so."""
        return self.clock.passed() or transport_failure(exc, status)

    def check(self) -> None:
        """Raise :class:`BoundHit` once a deadline has passed (between reads)."""
        if (failure := self.clock.passed()) is not None:
            raise BoundHit(failure)


def _body_reader(response: httpx.Response, cap: int) -> BoundedBody:
    """Where a reply's body is collected: all of it up to ``cap``, or an error's first bytes."""
    if response.status_code < 300:
        return BoundedBody(cap)
    return BoundedBody(min(cap, ERROR_BODY_BYTES), truncate=True)


def _read(response: httpx.Response, body: BoundedBody, *, chat: bool) -> CompletionResult | Failure:
    """A whole response's result, or how it failed."""
    if response.status_code >= 300:
        return _status_failure(response, body.data)
    try:
        return parse_completion(json.loads(body.data), chat=chat)
    except (ValueError, RecursionError) as exc:  # JSON errors and MalformedBody
        reason = f"malformed response body ({exc})"
        return Failure(status=response.status_code, reason=reason, retryable=True)


def _status_failure(response: httpx.Response, data: bytes) -> Failure:
    text = data.decode(response.encoding or "utf-8", errors="replace")
    reason = error_message(text, response.reason_phrase)
    return status_failure(response.status_code, reason, response.headers.get("retry-after"))


def _lines_to_chunks(
    data: bytes, lines: BoundedLines, parser: StreamParser
) -> Iterator[StreamChunk]:
    """The chunks of the events that ``data`` completes (up to ``data: [DONE]``)."""
    for line in lines.feed(data):
        if (chunk := parser.feed(line)) is not None:
            yield chunk
        if parser.done:
            return


def _last_chunks(lines: BoundedLines, parser: StreamParser) -> Iterator[StreamChunk]:
    """The chunks of a body that ended without a final line break or blank line."""
    if parser.done:
        return
    for line in lines.close():
        if (chunk := parser.feed(line)) is not None:
            yield chunk
    if (chunk := parser.close()) is not None:
        yield chunk


class OpenAICompatibleClient:
    r"""Calls ``/completions`` and ``/chat/completions`` of an OpenAI-compatible server.

    Args:
        base_url: the server URL including the API prefix, e.g. ``http://localhost:8000/v1``.
        model: the model name sent when a request names none.
        api_key: a :class:`~pydantic.SecretStr`, a callable returning one at each request, or
            ``None`` for no ``Authorization`` header.
        connect_timeout_s: seconds to wait for a connection.
        read_timeout_s: seconds to wait for data (each read; for streams, between events).
        request_timeout_s: seconds one HTTP request may take in all, from connecting to the
            last byte however slowly it comes (then retried like a timeout); ``None``: no bound.
        call_timeout_s: seconds one call may take with all its attempts and the waits between
            them; ``None``: no bound. Past either deadline the call raises
            :class:`~langchain_rankguide.remote.errors.LRMDeadlineError`.
        reply_limit: the size bound of a reply, scaled by the request's ``max_tokens``
            (default :class:`~langchain_rankguide.remote.bounds.ReplyLimit`); a longer reply
            raises :class:`~langchain_rankguide.remote.errors.LRMReplyTooLargeError`.
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
        request_timeout_s: float | None = None,
        call_timeout_s: float | None = None,
        reply_limit: ReplyLimit | None = None,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._api_key = api_key
        self.timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
        self.request_timeout_s = request_timeout_s
        self.call_timeout_s = call_timeout_s
        self.reply_limit = reply_limit or ReplyLimit()
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
            request_timeout_s=config.timeouts.request,
            call_timeout_s=config.timeouts.step,
            reply_limit=ReplyLimit.from_config(config.reply_limit),
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
            transport = self._transport or sync_transport()
            self._client = httpx.Client(timeout=self.timeout, transport=transport)
        return self._client

    @property
    def async_client(self) -> httpx.AsyncClient:
        """The asynchronous connection pool (created on first use)."""
        if self._aclient is None:
            transport = self._async_transport or async_transport()
            self._aclient = httpx.AsyncClient(timeout=self.timeout, transport=transport)
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

        The reply is read as it arrives and never past its size bound; the request and the
        whole call are held to their deadlines.

        Raises:
            LRMUnavailableError: the request failed after the retries.
            LRMReplyTooLargeError: the reply passed its size bound.
            LRMDeadlineError: the request or the call passed its deadline.
            ValueError: neither the request nor the client names a model.
        """
        request = self._resolve(request)
        call = self._start(request)
        while True:
            outcome = self._attempt(call, request)
            if isinstance(outcome, CompletionResult):
                return call.done(outcome)
            time.sleep(call.attempts.wait(outcome))

    async def asend(self, request: Request) -> CompletionResult:
        """Async :meth:`send`, on the async pool."""
        request = self._resolve(request)
        call = self._start(request)
        while True:
            outcome = await self._aattempt(call, request)
            if isinstance(outcome, CompletionResult):
                return call.done(outcome)
            await asyncio.sleep(call.attempts.wait(outcome))

    def _attempt(self, call: _Call, request: Request) -> CompletionResult | Failure:
        call.clock.begin_attempt()
        timeout = call.clock.timeout(self.timeout)
        try:
            with (
                call.clock.active(),
                self.sync_client.stream(
                    "POST", call.url, json=request.body, headers=call.headers, timeout=timeout
                ) as response,
            ):
                body = _body_reader(response, call.cap)
                for data in response.iter_bytes():
                    body.feed(data)
                    call.check()
                    if body.full:
                        break
            return _read(response, body, chat=request.chat)
        except httpx.TransportError as exc:
            return call.transport_failure(exc)
        except BoundHit as hit:
            return hit.failure

    async def _aattempt(self, call: _Call, request: Request) -> CompletionResult | Failure:
        call.clock.begin_attempt()
        timeout = call.clock.timeout(self.timeout)
        try:
            with call.clock.active():
                async with self.async_client.stream(
                    "POST", call.url, json=request.body, headers=call.headers, timeout=timeout
                ) as response:
                    body = _body_reader(response, call.cap)
                    async for data in response.aiter_bytes():
                        body.feed(data)
                        call.check()
                        if body.full:
                            break
            return _read(response, body, chat=request.chat)
        except httpx.TransportError as exc:
            return call.transport_failure(exc)
        except BoundHit as hit:
            return hit.failure

    # ------------------------------------------------------------------ streams

    def stream(self, request: Request) -> Iterator[StreamChunk]:
        """Send ``request`` as an SSE stream, one :class:`StreamChunk` per event.

        A final usage event is asked for (``stream_options``) unless the body sets its own.
        Failures before the first chunk is handed out are retried like any request; after
        that, a stream that ends before ``[DONE]`` and before a ``finish_reason`` (or that
        carries an error event or an unreadable event) raises
        :class:`~langchain_rankguide.remote.errors.LRMStreamCutError`. The stream is bounded
        like :meth:`send`: past its size bound or a deadline it raises
        :class:`~langchain_rankguide.remote.errors.LRMReplyTooLargeError` or
        :class:`~langchain_rankguide.remote.errors.LRMDeadlineError` (text already handed out
        is then incomplete).

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
            failure = yield from self._stream_attempt(call, request, parser)
            if failure is None:
                return
            time.sleep(call.attempts.wait(failure, partial=_handed_out(parser)))

    def _stream_attempt(
        self, call: _Call, request: Request, parser: StreamParser
    ) -> Generator[StreamChunk, None, Failure | None]:
        # The deadline is held around each blocking read only, never across a yield.
        call.clock.begin_attempt()
        client = self.sync_client
        built = client.build_request(
            "POST",
            call.url,
            json=request.body,
            headers=call.headers,
            timeout=call.clock.timeout(self.timeout),
        )
        try:
            with call.clock.active():
                response = client.send(built, stream=True)
            try:
                if response.status_code >= 300:
                    return self._error_failure(call, response)
                lines, raw = BoundedLines(call.cap), response.iter_bytes()
                while not parser.done:
                    with call.clock.active():
                        data = next(raw, None)
                    if data is None:
                        break
                    yield from _lines_to_chunks(data, lines, parser)
                    call.check()
                yield from _last_chunks(lines, parser)
            finally:
                response.close()
        except (httpx.TransportError, MalformedBody) as exc:
            return _stream_failure(exc, parser, call)
        except BoundHit as hit:
            return hit.failure
        return _stream_outcome(parser)

    def _error_failure(self, call: _Call, response: httpx.Response) -> Failure:
        body = _body_reader(response, call.cap)
        with call.clock.active():
            for data in response.iter_bytes():
                body.feed(data)
                if body.full:
                    break
        return _status_failure(response, body.data)

    async def _aerror_failure(self, call: _Call, response: httpx.Response) -> Failure:
        body = _body_reader(response, call.cap)
        with call.clock.active():
            async for data in response.aiter_bytes():
                body.feed(data)
                if body.full:
                    break
        return _status_failure(response, body.data)

    async def _astream(self, request: Request) -> AsyncIterator[StreamChunk]:
        call = self._start(request, stream=True)
        while True:
            parser = StreamParser(chat=request.chat)
            failure: Failure | None = None
            # Closed here, not by the garbage collector, when the caller stops reading early.
            async with contextlib.aclosing(self._astream_attempt(call, request, parser)) as items:
                async for item in items:
                    if isinstance(item, Failure):
                        failure = item
                    else:
                        yield item
            if failure is None:
                return
            await asyncio.sleep(call.attempts.wait(failure, partial=_handed_out(parser)))

    async def _astream_attempt(
        self, call: _Call, request: Request, parser: StreamParser
    ) -> AsyncGenerator[StreamChunk | Failure, None]:
        """Like :meth:`_stream_attempt`; the failure, if any, comes as the last item."""
        call.clock.begin_attempt()
        client = self.async_client
        built = client.build_request(
            "POST",
            call.url,
            json=request.body,
            headers=call.headers,
            timeout=call.clock.timeout(self.timeout),
        )
        failure: Failure | None
        try:
            with call.clock.active():
                response = await client.send(built, stream=True)
            try:
                if response.status_code >= 300:
                    failure = await self._aerror_failure(call, response)
                else:
                    lines, raw = BoundedLines(call.cap), response.aiter_bytes()
                    while not parser.done:
                        with call.clock.active():
                            data = await anext(raw, None)
                        if data is None:
                            break
                        for chunk in _lines_to_chunks(data, lines, parser):
                            yield chunk
                        call.check()
                    for chunk in _last_chunks(lines, parser):
                        yield chunk
                    failure = _stream_outcome(parser)
            finally:
                await response.aclose()
        except (httpx.TransportError, MalformedBody) as exc:
            failure = _stream_failure(exc, parser, call)
        except BoundHit as hit:
            failure = hit.failure
        if failure is not None:
            yield failure

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
        # An uncompressed reply is counted against its size bound as it arrives; a compressed
        # one could inflate far past the bound inside a single read.
        headers["Accept-Encoding"] = "identity"
        headers.update(self._headers)
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        url = self.base_url + request.path
        clock = Clock(self.request_timeout_s, self.call_timeout_s)
        attempts = Attempts(self.retry, url, secret, clock)
        return _Call(
            url, headers, attempts, clock, self.reply_limit.cap(request.body.get("max_tokens"))
        )


def _stream_outcome(parser: StreamParser) -> Failure | None:
    """How a stream read to its end failed, or ``None`` when it ended properly."""
    if parser.complete:
        return None
    return Failure(200, "the stream ended before [DONE] and finish_reason", retryable=True)


def _stream_failure(
    exc: httpx.TransportError | MalformedBody, parser: StreamParser, call: _Call
) -> Failure:
    """How a stream failed while it was read."""
    if isinstance(exc, MalformedBody):
        return Failure(200, str(exc), retryable=True)
    return call.transport_failure(exc, 200 if parser.started else None)


def _handed_out(parser: StreamParser) -> str | None:
    """The text a stream handed out, or ``None`` when none was (a retry is then safe)."""
    return parser.partial if parser.started else None
