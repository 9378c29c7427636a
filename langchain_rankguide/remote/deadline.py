"""Overall deadlines of remote LRM calls, enforced on every socket read and write.

``httpx`` timeouts bound each read, not a request: a server that sends one byte every two
seconds never trips a five-second read timeout, and a reply then takes as long as the server
likes. A :class:`Clock` holds two deadlines (see ``docs/serving.md``):

* the **request** deadline (``lrm.timeouts.request``): one HTTP request, from connecting to the
  last byte of the reply; a request past it is retried like a timeout;
* the **call** deadline (``lrm.timeouts.step``): one call (a step or a judge score), with every
  attempt and every wait between attempts; past it the call fails without another attempt.

While a read or write runs under :meth:`Clock.active`, the network backend installed by
:func:`sync_transport` / :func:`async_transport` cuts that read's timeout to what is left of the
deadline, so the request fails at the deadline, not one read timeout later; the headers of a
reply are bounded as well as its body. With a transport passed in by the caller (tests, proxies)
the client still checks the clock between reads.
"""

from __future__ import annotations

import math
import ssl
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx

from langchain_rankguide.remote.errors import LRMDeadlineError
from langchain_rankguide.remote.retry import Failure

_DEADLINE: ContextVar[float | None] = ContextVar("rankguide_lrm_deadline", default=None)
"""The monotonic time the running read or write must end by (``None``: no deadline).

Set only around one blocking operation at a time (never across a ``yield``), so it cannot leak
into the caller's code between the chunks of a stream."""


class Clock:
    """The deadlines of one call and of its current attempt.

    Args:
        request_s: seconds one HTTP request may take in all; ``None`` for no bound.
        call_s: seconds the whole call may take, retries and waits included; ``None`` for no
            bound.
    """

    def __init__(self, request_s: float | None, call_s: float | None) -> None:
        self.request_s = request_s
        self.call_s = call_s
        now = time.monotonic()
        self.call_end = now + call_s if call_s is not None else math.inf
        self.attempt_end = self.call_end

    def begin_attempt(self) -> None:
        """Start the request deadline of a new attempt (never past the call's)."""
        end = time.monotonic() + self.request_s if self.request_s is not None else math.inf
        self.attempt_end = min(end, self.call_end)

    def call_left(self) -> float:
        """Seconds left to the whole call (``inf`` without a call deadline)."""
        return self.call_end - time.monotonic()

    def passed(self) -> Failure | None:
        """How the attempt failed if one of its deadlines has passed, else ``None``."""
        now = time.monotonic()
        if now >= self.call_end:
            reason = f"the call took longer than lrm.timeouts.step ({self.call_s:g} s)"
            return Failure(None, reason, retryable=False, error=LRMDeadlineError)
        if now >= self.attempt_end:
            reason = f"the request took longer than lrm.timeouts.request ({self.request_s:g} s)"
            return Failure(None, reason, retryable=True, error=LRMDeadlineError)
        return None

    def timeout(self, base: httpx.Timeout) -> httpx.Timeout:
        """``base`` with each phase cut to what is left of the attempt."""
        left = max(0.001, self.attempt_end - time.monotonic())

        def cut(value: float | None) -> float | None:
            return left if value is None else min(value, left)

        if math.isinf(left):
            return base
        return httpx.Timeout(
            connect=cut(base.connect),
            read=cut(base.read),
            write=cut(base.write),
            pool=cut(base.pool),
        )

    @contextmanager
    def active(self) -> Iterator[None]:
        """Hold the attempt's deadline for the reads and writes made inside the block."""
        token = _DEADLINE.set(None if math.isinf(self.attempt_end) else self.attempt_end)
        try:
            yield
        finally:
            _DEADLINE.reset(token)


def _cut(timeout: float | None, error: type[Exception]) -> float | None:
    """``timeout`` cut to what is left of the active deadline; ``error`` when none is left."""
    end = _DEADLINE.get()
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise error("the overall deadline passed")
    return left if timeout is None else min(timeout, left)


# --------------------------------------------------------------------------- sync backend


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _cut(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _cut(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        timeout = _cut(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        timeout = _cut(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        timeout = _cut(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


# --------------------------------------------------------------------------- async backend


class _AsyncStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, _cut(timeout, httpcore.ReadTimeout))

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, _cut(timeout, httpcore.WriteTimeout))

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        timeout = _cut(timeout, httpcore.ConnectTimeout)
        return _AsyncStream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _AsyncBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        timeout = _cut(timeout, httpcore.ConnectTimeout)
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _AsyncStream(stream)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        timeout = _cut(timeout, httpcore.ConnectTimeout)
        return _AsyncStream(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# --------------------------------------------------------------------------- transports


def _wrap_backend(transport: Any, wrapper: type[Any]) -> None:
    # httpx does not take a network backend, so the one its pool holds is wrapped in place. An
    # httpx whose pool looks different keeps its own backend: the client's checks between
    # reads still hold the deadline, one read timeout late at worst.
    pool = getattr(transport, "_pool", None)
    inner = getattr(pool, "_network_backend", None)
    if pool is not None and inner is not None:
        pool._network_backend = wrapper(inner)


def sync_transport() -> httpx.HTTPTransport:
    """The default ``httpx`` transport, with reads and writes held to the active deadline."""
    transport = httpx.HTTPTransport()
    _wrap_backend(transport, _Backend)
    return transport


def async_transport() -> httpx.AsyncHTTPTransport:
    """The async counterpart of :func:`sync_transport`."""
    transport = httpx.AsyncHTTPTransport()
    _wrap_backend(transport, _AsyncBackend)
    return transport
