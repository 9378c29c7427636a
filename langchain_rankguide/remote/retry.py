"""When a failed LRM request is retried, how long to wait, and the error when it is not.

* **Retried**: connection errors (refused, reset, DNS), connect/read/write timeouts, a
  connection dropped before the response was complete, HTTP 429 and every 5xx, and a 2xx
  response whose body is not the JSON an OpenAI-compatible server returns ("malformed"; a
  proxy or an overloaded server can send a truncated or HTML body, and generation requests
  are idempotent, so another attempt is safe).
* **Not retried**: any other 4xx (bad request, wrong key, unknown model): it would fail again;
  and an unsupported URL scheme.
* **Bounds** (:mod:`~langchain_rankguide.remote.bounds`, :mod:`.deadline`): a reply longer
  than its size bound is not retried (``LRMReplyTooLargeError``); a request past
  ``lrm.timeouts.request`` is retried like a timeout, but no retry is made once the wait would
  reach the call's deadline, ``lrm.timeouts.step`` (``LRMDeadlineError``).
* **Delays**: ``min(backoff_max_s, backoff_base_s * 2**(n - 1))`` before retry ``n``, times a
  random factor in ``[1 - jitter, 1 + jitter]``. A ``Retry-After`` header (seconds or an HTTP
  date) on a 429/503 raises the delay to at least its value, up to ``retry_after_max_s``.

Nothing here does I/O or sleeps: :class:`Attempts` tells the sync and the async client how
long to wait, so both follow one policy.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from langchain_rankguide.remote.errors import (
    LRMDeadlineError,
    LRMStreamCutError,
    LRMUnavailableError,
    redact,
    safe_url,
)

if TYPE_CHECKING:
    from langchain_rankguide.config.models import RetryConfig
    from langchain_rankguide.remote.deadline import Clock

logger = logging.getLogger("langchain_rankguide.remote")


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


@dataclass(frozen=True)
class Failure:
    """One failed attempt: what the error will say and whether the policy may retry it.

    Attributes:
        status: the HTTP status, or ``None`` when no response came.
        reason: the server's error message, the transport error, or why the body was unread.
        retryable: whether another attempt may succeed.
        retry_after: the server's ``Retry-After`` in seconds, when it sent one that counts.
        error: the error raised when this failure ends the call (a subclass of
            :class:`~langchain_rankguide.remote.errors.LRMUnavailableError` for a bound hit).
    """

    status: int | None
    reason: str
    retryable: bool
    retry_after: float | None = None
    error: type[LRMUnavailableError] = LRMUnavailableError


def parse_retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (a number, or an HTTP date); ``None`` if none."""
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


def status_failure(status: int, reason: str, retry_after: str | None = None) -> Failure:
    """Classify an error status: 429 and 5xx are retried, ``Retry-After`` counts on 429/503.

    Args:
        status: the HTTP status (300 or more).
        reason: the server's error message.
        retry_after: the raw ``Retry-After`` header, if any.
    """
    return Failure(
        status=status,
        reason=reason,
        retryable=status == 429 or status >= 500,
        retry_after=parse_retry_after(retry_after) if status in (429, 503) else None,
    )


def transport_failure(exc: httpx.TransportError, status: int | None = None) -> Failure:
    """Classify a transport error: all are retried but an unsupported URL scheme.

    Args:
        exc: the error ``httpx`` raised.
        status: the status already received (a stream dropped after its headers), if any.
    """
    detail = str(exc) or "no detail"
    retryable = not isinstance(exc, httpx.UnsupportedProtocol)
    return Failure(status, f"{type(exc).__name__}: {detail}", retryable=retryable)


class Attempts:
    """The attempts of one request: counts them, and says how long to wait or why to give up.

    Errors and log lines name the URL without credentials and never the key: ``secret`` is
    scrubbed from any reason a server sends back.

    Args:
        policy: the retry policy.
        url: the endpoint called.
        secret: the API key sent with the request, if any.
        clock: the call's deadlines; no retry is made that could not start before the call's
            deadline.
    """

    def __init__(
        self, policy: RetryPolicy, url: str, secret: str | None, clock: Clock | None = None
    ) -> None:
        self.policy = policy
        self.url = safe_url(url)
        self.number = 1
        self.clock = clock
        self._secret = secret

    def redact(self, text: str) -> str:
        """``text`` with the request's API key replaced by ``***``."""
        return redact(text, self._secret)

    def wait(self, failure: Failure, *, partial: str | None = None) -> float:
        """Seconds to wait before the next attempt, which is then counted.

        Args:
            failure: how this attempt failed.
            partial: for a stream, the text already handed to the caller, or ``None`` when
                none was. A retry would repeat that text, so the caller decides instead.

        Raises:
            LRMStreamCutError: ``partial`` is not ``None`` (a bound hit raises its own error).
            LRMDeadlineError: the call's deadline leaves no time for the wait and another try.
            LRMUnavailableError: the failure is not retried, or the attempts ran out.
        """
        reason = redact(failure.reason, self._secret)
        if partial is not None and failure.error is LRMUnavailableError:
            raise LRMStreamCutError(self.url, 200, self.number, reason, partial=partial)
        if partial is not None or not failure.retryable or self.number >= self.policy.max_attempts:
            raise failure.error(
                self.url, failure.status, self.number, reason, retryable=failure.retryable
            )
        delay = self.policy.delay(self.number, failure.retry_after)
        if self.clock is not None and self.clock.call_left() <= delay:
            reason += (
                f"; no time is left for another attempt within lrm.timeouts.step "
                f"({self.clock.call_s:g} s)"
            )
            raise LRMDeadlineError(self.url, failure.status, self.number, reason)
        logger.warning(
            "LRM request to %s failed (attempt %d/%d, %s: %s); retrying in %.2f s",
            self.url,
            self.number,
            self.policy.max_attempts,
            f"HTTP {failure.status}" if failure.status is not None else "no response",
            reason,
            delay,
        )
        self.number += 1
        return delay
