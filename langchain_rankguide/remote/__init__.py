"""The LRM over HTTP: an OpenAI-compatible client and the ``RemoteLRM`` backend.

:class:`OpenAICompatibleClient` talks to vLLM, SGLang, Ollama or a hosted API (sync, async and
SSE streaming, with retries); :class:`RemoteLRM` uses it to implement
:class:`~langchain_rankguide.lrm.LRMBackend`. See ``docs/serving.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain_rankguide.remote.client import (
    CompletionResult,
    OpenAICompatibleClient,
    RetryPolicy,
    SSEDecoder,
    StreamChunk,
    aggregate_stream,
)
from langchain_rankguide.remote.errors import (
    LRMFallback,
    LRMStreamCutError,
    LRMUnavailableError,
    RemoteLRMError,
)

if TYPE_CHECKING:
    from langchain_rankguide.remote.backend import RemoteLRM, render_plain_prompt

__all__ = [
    "CompletionResult",
    "LRMFallback",
    "LRMStreamCutError",
    "LRMUnavailableError",
    "OpenAICompatibleClient",
    "RemoteLRM",
    "RemoteLRMError",
    "RetryPolicy",
    "SSEDecoder",
    "StreamChunk",
    "aggregate_stream",
    "render_plain_prompt",
]


def __getattr__(name: str) -> Any:
    # The backend imports the step engine (torch); the client alone does not need it.
    if name in ("RemoteLRM", "render_plain_prompt", "render_template"):
        from langchain_rankguide.remote import backend

        return getattr(backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
