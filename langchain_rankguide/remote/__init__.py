"""The LRM over HTTP: an OpenAI-compatible client and the ``RemoteLRM`` backend.

:class:`OpenAICompatibleClient` talks to vLLM, SGLang, Ollama or a hosted API (sync, async and
SSE streaming, with retries, a size bound on every reply and overall deadlines);
:class:`RemoteLRM` uses it to implement
:class:`~langchain_rankguide.lrm.LRMBackend`. Requests are built and responses read in
:mod:`~langchain_rankguide.remote.wire`, retries decided in
:mod:`~langchain_rankguide.remote.retry`. See ``docs/serving.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain_rankguide.remote.bounds import ReplyLimit
from langchain_rankguide.remote.client import OpenAICompatibleClient
from langchain_rankguide.remote.errors import (
    LRMDeadlineError,
    LRMFallback,
    LRMReplyTooLargeError,
    LRMStreamCutError,
    LRMUnavailableError,
    RemoteLRMError,
)
from langchain_rankguide.remote.retry import RetryPolicy
from langchain_rankguide.remote.wire import (
    CompletionResult,
    Request,
    SSEDecoder,
    StreamChunk,
    aggregate_stream,
    chat_request,
    completions_request,
)

if TYPE_CHECKING:
    from langchain_rankguide.remote.backend import RemoteLRM, render_plain_prompt

__all__ = [
    "CompletionResult",
    "LRMDeadlineError",
    "LRMFallback",
    "LRMReplyTooLargeError",
    "LRMStreamCutError",
    "LRMUnavailableError",
    "OpenAICompatibleClient",
    "RemoteLRM",
    "RemoteLRMError",
    "ReplyLimit",
    "Request",
    "RetryPolicy",
    "SSEDecoder",
    "StreamChunk",
    "aggregate_stream",
    "chat_request",
    "completions_request",
    "render_plain_prompt",
]


def __getattr__(name: str) -> Any:
    # The backend imports the step engine (torch); the client alone does not need it.
    if name in ("RemoteLRM", "render_plain_prompt", "render_template"):
        from langchain_rankguide.remote import backend

        return getattr(backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
