"""Errors of the remote LRM client, all subclasses of ``langchain_rankguide.errors.RankGuideError``.

Messages name the endpoint URL and the HTTP status, never the API key: the key is scrubbed from
any text a server sends back, and URLs lose their ``user:password@`` part.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from langchain_rankguide.errors import RankGuideError


class RemoteLRMError(RankGuideError):
    """Base class of the remote LRM errors."""


class LRMUnavailableError(RemoteLRMError):
    """A request to the LRM server failed, after the retries the policy allows.

    Attributes:
        url: the endpoint called (credentials removed).
        status: the last HTTP status, or ``None`` when no response came (connection refused,
            timeout, connection dropped).
        attempts: how many attempts were made, the first included.
        reason: what went wrong on the last attempt (the server's error message, the
            transport error, or why the body was unreadable).
        retryable: ``True`` when the last failure was of a retried kind (connection errors,
            timeouts, 429, 5xx, malformed bodies), i.e. the attempts ran out; ``False`` when it
            was not retried at all (other 4xx).
    """

    def __init__(
        self,
        url: str,
        status: int | None,
        attempts: int,
        reason: str,
        *,
        retryable: bool = True,
    ) -> None:
        self.url = url
        self.status = status
        self.attempts = attempts
        self.reason = reason
        self.retryable = retryable
        super().__init__(self._message())

    def _message(self) -> str:
        status = f"HTTP {self.status}" if self.status is not None else "no response"
        plural = "" if self.attempts == 1 else "s"
        return (
            f"LRM server request to {self.url} failed after {self.attempts} attempt{plural}: "
            f"{status}: {self.reason}"
        )

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only arguments are not restored by the default pickling of exceptions.
        return (_rebuild, (type(self), self.__dict__.copy()))


class LRMStreamCutError(LRMUnavailableError):
    """A streamed response ended before ``data: [DONE]`` and before any ``finish_reason``.

    Raised once text has been handed to the caller (earlier failures are retried like any
    other). ``partial`` holds the text received so far; it is incomplete and must not be
    committed.
    """

    def __init__(
        self,
        url: str,
        status: int | None,
        attempts: int,
        reason: str,
        *,
        partial: str = "",
        retryable: bool = True,
    ) -> None:
        self.partial = partial
        super().__init__(url, status, attempts, reason, retryable=retryable)


class LRMReplyTooLargeError(LRMUnavailableError):
    """A reply was longer than its bound: ``lrm.reply_limit`` scaled by the ``max_tokens`` asked.

    Reading stopped at the bound, so a hostile or broken server cannot make the client hold an
    unbounded reply. Not retried: a server that answers a short request with megabytes will do
    it again.
    """


class LRMDeadlineError(LRMUnavailableError):
    """A request or a whole call ran past its overall deadline.

    ``lrm.timeouts.request`` bounds one HTTP request, from connecting to the last byte, however
    slowly the server trickles its reply (a request past it is retried like a timeout);
    ``lrm.timeouts.step`` bounds one call (a step or a judge score) with every retry and every
    wait between them.
    """


class LRMFallback(RemoteLRMError):
    """Signal (not a failure of the run): the LRM is unavailable and policy is ``fallback_srm``.

    :class:`~langchain_rankguide.remote.RemoteLRM` raises it from ``write_step`` and ``judge``
    when ``on_failure: fallback_srm`` and the request failed after its retries. The
    collaboration catches it, keeps the SRM draft of the step and sets the step record's
    ``fallback`` field to :attr:`fallback` (``"lrm_unavailable: ..."``). The backend's committed
    state is unchanged, so the run continues (and later steps may reach the LRM again).

    Attributes:
        cause: the error that triggered the fallback.
        fallback: the text for :attr:`StepRecord.fallback <langchain_rankguide.schemas.StepRecord>`.
    """

    def __init__(self, cause: LRMUnavailableError) -> None:
        self.cause = cause
        status = f"HTTP {cause.status}" if cause.status is not None else "no response"
        self.fallback = f"lrm_unavailable: {status} from {cause.url}: {cause.reason}"
        super().__init__(f"LRM unavailable, the SRM draft is kept ({self.fallback})")

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type[RemoteLRMError], state: dict[str, object]) -> RemoteLRMError:
    error = cls.__new__(cls)
    error.__dict__.update(state)
    message = error._message() if isinstance(error, LRMUnavailableError) else None
    if isinstance(error, LRMFallback):
        message = f"LRM unavailable, the SRM draft is kept ({error.fallback})"
    error.args = (message,)
    return error


def safe_url(url: str) -> str:
    """Drop ``user:password@`` from a URL before it goes into a message."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def redact(text: str, secret: str | None) -> str:
    """Replace ``secret`` in ``text`` (e.g. a key a hostile server echoes back) with ``***``."""
    if secret:
        text = text.replace(secret, "***")
    return text
