"""Connection-level bounds of ``rankguide serve``: how long a client may take to send a request.

uvicorn bounds the idle time between two requests (``timeout_keep_alive``) and the size of the
request head (``h11_max_incomplete_event_size``), but not the time a client takes to send it: a
client that opens a connection and sends its headers one byte at a time holds the connection
(and a file descriptor) for ever, so a few thousand of them lock everyone out. The protocol here
gives each request ``read_timeout_s`` from its first byte (or from the connection's opening) to
complete its headers; a client that has not is answered 408 and disconnected. The body is the
app's to time (:func:`~langchain_rankguide.server.app.read_body`); once the app has answered, a
body still trickling in is cut off the same way. See ``docs/reliability.md``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from langchain_rankguide.server.protocol import error_body

MAX_HEADER_BYTES = 16 * 1024
"""Largest request line plus headers; a larger head is refused with 400 by uvicorn."""

KEEP_ALIVE_S = 5
"""Seconds an idle kept-alive connection stays open between requests."""


def _timeout_response(seconds: float) -> bytes:
    body = json.dumps(
        error_body(f"request headers not received within {seconds:g} s", "timeout_error")
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on receiving each request.

    Subclasses made by :func:`timed_protocol` set :attr:`read_timeout_s`.
    """

    read_timeout_s: float = 30.0
    _request_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock: a connection that never sends a request is closed in time too."""
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        """Start the clock at a request's first byte; stop it once the request is in."""
        if self._request_timer is None and self.conn.their_state is h11.IDLE:
            self._arm()
        super().data_received(data)
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the clock."""
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._request_timer = self.loop.call_later(self.read_timeout_s, self._timed_out)

    def _disarm(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    def _timed_out(self) -> None:
        self._request_timer = None
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        if state is h11.IDLE:  # the headers are not in (h11 cannot answer yet: raw bytes)
            self.transport.write(_timeout_response(self.read_timeout_s))
            self.transport.close()
        elif state is h11.SEND_BODY:
            if self.cycle is not None and not self.cycle.response_complete:
                self._arm()  # the app is reading the body under its own deadline
            else:
                self.transport.close()  # answered, and the body still trickles in


def timed_protocol(read_timeout_s: float) -> type[TimedH11Protocol]:
    """A :class:`TimedH11Protocol` class giving each request ``read_timeout_s`` seconds.

    The default is the class itself, which pickles by name, as the workers of
    ``rankguide serve --workers N`` need (their uvicorn settings travel pickled).
    """
    if read_timeout_s == TimedH11Protocol.read_timeout_s:
        return TimedH11Protocol
    return type("TimedH11Protocol", (TimedH11Protocol,), {"read_timeout_s": read_timeout_s})


def uvicorn_settings(read_timeout_s: float) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` that bound slow and idle clients.

    Args:
        read_timeout_s: seconds a client has to send a request's headers.
    """
    return {
        "http": timed_protocol(read_timeout_s),
        "timeout_keep_alive": KEEP_ALIVE_S,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
    }
