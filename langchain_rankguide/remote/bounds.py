"""The size bound of a remote LRM's reply, enforced while the reply is read.

A request for ``max_tokens`` tokens cannot honestly need more than a few kilobytes per token,
JSON envelope, log-probs and SSE framing included; a server that sends megabytes for a
64-token step is broken or hostile. The bound is ``base_bytes + bytes_per_token * max_tokens``
(``lrm.reply_limit``); the readers here count the bytes as they arrive and stop at the bound
with :class:`BoundHit`, so the client never holds more than that (see ``docs/serving.md``).
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from langchain_rankguide.remote.errors import LRMReplyTooLargeError
from langchain_rankguide.remote.retry import Failure

if TYPE_CHECKING:
    from langchain_rankguide.config.models import ReplyLimitConfig

UNSTATED_MAX_TOKENS = 32768
"""The ``max_tokens`` a bound assumes for a request body that states none."""

ERROR_BODY_BYTES = 65536
"""How much of an error reply is read for its message; the rest is dropped unread."""

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class BoundHit(Exception):
    """A reply broke a bound (its size, a deadline) while it was read.

    Attributes:
        failure: how the attempt failed, for :class:`~langchain_rankguide.remote.retry.Attempts`.
    """

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


@dataclass(frozen=True)
class ReplyLimit:
    """The largest reply accepted for a request, scaled by its ``max_tokens``.

    Attributes:
        bytes_per_token: bytes allowed per requested token.
        base_bytes: bytes allowed on top, whatever ``max_tokens`` is.
    """

    bytes_per_token: int = 2048
    base_bytes: int = 65536

    @classmethod
    def from_config(cls, config: ReplyLimitConfig) -> ReplyLimit:
        """Build the bound from the ``lrm.reply_limit`` configuration section."""
        return cls(bytes_per_token=config.bytes_per_token, base_bytes=config.base_bytes)

    def cap(self, max_tokens: object) -> int:
        """The byte bound of a reply to a request asking for ``max_tokens`` tokens."""
        tokens = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else None
        return self.base_bytes + self.bytes_per_token * (tokens or UNSTATED_MAX_TOKENS)


def too_large(cap: int) -> BoundHit:
    """The error of a reply over ``cap`` bytes."""
    reason = f"the reply is longer than {cap} bytes, the bound for its max_tokens (lrm.reply_limit)"
    return BoundHit(Failure(200, reason, retryable=False, error=LRMReplyTooLargeError))


class BoundedBody:
    """Collects a whole reply body, refusing more than ``cap`` bytes.

    Args:
        cap: the most bytes accepted.
        truncate: stop collecting at the bound instead of raising (for error replies, whose
            message is all that is read).
    """

    def __init__(self, cap: int, *, truncate: bool = False) -> None:
        self.cap = cap
        self.truncate = truncate
        self.full = False
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> None:
        """Take the next bytes of the body.

        Raises:
            BoundHit: the body passed the bound (unless ``truncate``).
        """
        room = self.cap - self._size
        if len(data) > room:
            if not self.truncate:
                raise too_large(self.cap)
            data, self.full = data[:room], True
        self._parts.append(data)
        self._size += len(data)

    @property
    def data(self) -> bytes:
        """The bytes collected."""
        return b"".join(self._parts)


class BoundedLines:
    r"""Splits a streamed reply into lines, refusing more than ``cap`` bytes in all.

    Lines end at ``\n``, ``\r\n`` or ``\r``, as in Server-Sent Events. The count covers every
    byte, so a "line" that never ends is bounded too.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._size = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""

    def feed(self, data: bytes) -> list[str]:
        """Take the next bytes; return the lines they complete (without their line breaks).

        Raises:
            BoundHit: the reply passed the bound.
        """
        self._size += len(data)
        if self._size > self.cap:
            raise too_large(self.cap)
        text = self._pending + self._decoder.decode(data)
        # A "\r" at the end may be the first half of "\r\n": keep it until the next bytes.
        keep_cr = text.endswith("\r")
        parts = _LINE_BREAK.split(text[:-1] if keep_cr else text)
        self._pending = parts.pop() + ("\r" if keep_cr else "")
        return parts

    def close(self) -> list[str]:
        """The reply ended: return its last line when it had no line break."""
        text = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        return [line for line in _LINE_BREAK.split(text) if line] if text else []
