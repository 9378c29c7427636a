"""The OpenAI-compatible ASGI app: routes, auth, limits, back-pressure and error mapping.

Served models: ``rankguide`` (the whole collaboration), ``srm`` and ``lrm`` (each local model
alone; also under their identities). Handlers live in :mod:`.handlers`, wire formats in
:mod:`.protocol`, connection-level bounds (slow headers, idle connections) in
:mod:`.connection`; this module only wires them to HTTP.

Bounds a client cannot push past (``docs/reliability.md``): the body is counted as it arrives
(413 at ``max_body_bytes``, before the rest is read) and must arrive within ``read_timeout_s``
(408); a non-streamed request whose client hangs up stops generating, as a stream does; and an
unexpected error is a 500 with ``Connection: close``, so a client's pooled connection is not
left half-closed.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import SecretStr, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from langchain_rankguide.errors import InputError, RankGuideError, ThreadBusyError
from langchain_rankguide.server.handlers import (
    Cancelled,
    Generation,
    Handler,
    Outcome,
    Piece,
    PlainModelHandler,
    RankGuideHandler,
    check_plain,
)
from langchain_rankguide.server.output import completion_logprobs
from langchain_rankguide.server.protocol import (
    BodyError,
    ChatCompletionRequest,
    CompletionRequest,
    chat_body,
    chat_chunk,
    completion_body,
    decode_body,
    error_body,
    new_id,
    usage_body,
)


@dataclass(frozen=True)
class ServerLimits:
    """Bounds that keep the server responsive under load and hostile input.

    Attributes:
        max_body_bytes: larger request bodies get 413.
        max_tokens: largest ``max_tokens`` accepted (400 beyond).
        max_concurrency: requests generating at once (models serialise on CPU anyway).
        max_queue: requests allowed to wait; beyond it the server answers 429 + Retry-After.
        request_timeout_s: per-request deadline; work stops when it passes (504).
        retry_after_s: the ``Retry-After`` value sent with 429.
        read_timeout_s: seconds a client has to send its request headers, and again its body;
            a slower client gets 408 and its connection is closed.
    """

    max_body_bytes: int = 1 << 20
    max_tokens: int = 4096
    max_concurrency: int = 1
    max_queue: int = 32
    request_timeout_s: float = 300.0
    retry_after_s: int = 1
    read_timeout_s: float = 30.0


logger = logging.getLogger("langchain_rankguide.server")

_CLOSE = {"Connection": "close"}
"""Sent when the request is not read to its end or the app failed: the client must not reuse
the connection."""


class HTTPError(Exception):
    """An error with an HTTP status and an OpenAI error type."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.param = param
        self.headers = headers or {}


class Admission:
    """A bounded queue in front of the models: at most ``concurrency + queue`` requests inside."""

    def __init__(self, concurrency: int, queue: int) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._capacity = concurrency + queue
        self._inside = 0
        self.rejected = 0

    def try_enter(self) -> bool:
        """Count a request in, or refuse it when the queue is full."""
        if self._inside >= self._capacity:
            self.rejected += 1
            return False
        self._inside += 1
        return True

    def leave(self) -> None:
        """Count a request out."""
        self._inside -= 1

    @property
    def slots(self) -> asyncio.Semaphore:
        """The semaphore a request holds while it generates."""
        return self._slots


class _Guard:
    """Bearer auth and the declared body size, checked before any route runs; the last resort.

    Plain ASGI on purpose: Starlette's ``BaseHTTPMiddleware`` (``@app.middleware``) wraps
    ``receive`` so that a streaming endpoint never sees the client disconnect, which left
    generation running and its admission slot held after the client went away.

    An error no route turned into a response is logged and answered with a 500 carrying
    ``Connection: close``. Starlette's own last resort re-raised it, and the server then dropped
    the connection after the response, which failed the client's next request on that pooled
    connection.
    """

    def __init__(self, app: ASGIApp, *, api_key: SecretStr | None, max_body_bytes: int) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        problem = None
        if self.api_key is not None:
            sent = headers.get("authorization", "")
            expected = f"Bearer {self.api_key.get_secret_value()}"
            if not hmac.compare_digest(sent.encode(), expected.encode()):
                problem = HTTPError(401, "missing or wrong API key", "authentication_error")
        length = headers.get("content-length")
        if (
            problem is None
            and length is not None
            and length.isdigit()
            and int(length) > self.max_body_bytes
        ):
            problem = HTTPError(
                413,
                f"request body over {self.max_body_bytes} bytes",
                "invalid_request_error",
                headers=_CLOSE,
            )
        if problem is not None:
            response = JSONResponse(
                error_body(str(problem), problem.kind, param=problem.param),
                status_code=problem.status,
                headers=problem.headers,
            )
            await response(scope, receive, send)
            return
        await self._serve(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            logger.exception("unexpected error serving %s %s", scope["method"], scope["path"])
            if started:
                raise  # too late for a status: the server closes the connection
            response = JSONResponse(
                error_body("internal server error", "server_error"),
                status_code=500,
                headers=_CLOSE,
            )
            await response(scope, receive, send)


def _sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, allow_nan=False)
    return f"data: {payload}\n\n".encode()


def create_app(
    handlers: dict[str, Handler],
    *,
    limits: ServerLimits | None = None,
    api_key: SecretStr | None = None,
    aliases: dict[str, str] | None = None,
) -> FastAPI:
    """Build the ASGI app serving ``handlers`` (model name -> handler).

    Args:
        handlers: served models by name.
        limits: request bounds (defaults: :class:`ServerLimits`).
        api_key: when set, every request needs ``Authorization: Bearer <key>`` (compared in
            constant time).
        aliases: extra names for served models (e.g. identities), listed by ``/v1/models``.
    """
    limits = limits or ServerLimits()
    names = {**{name: name for name in handlers}, **(aliases or {})}
    app = FastAPI(title="langchain-rankguide", docs_url=None, redoc_url=None)
    admission = Admission(limits.max_concurrency, limits.max_queue)
    app.state.admission = admission
    app.state.limits = limits
    created = int(time.time())

    def error_response(exc: HTTPError) -> JSONResponse:
        return JSONResponse(
            error_body(str(exc), exc.kind, param=exc.param),
            status_code=exc.status,
            headers=exc.headers,
        )

    @app.exception_handler(HTTPError)
    async def _http_error(_request: Request, exc: HTTPError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(str(exc), "invalid_request_error"), status_code=400)

    app.add_middleware(_Guard, api_key=api_key, max_body_bytes=limits.max_body_bytes)

    async def parse(request: Request, model_type: type[Any]) -> Any:
        body = await read_body(request, limits)
        try:
            data = decode_body(body)
        except BodyError as exc:
            raise HTTPError(400, str(exc), "invalid_request_error", param=exc.param) from None
        try:
            parsed = model_type.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise HTTPError(
                400, f"{where}: {first['msg']}", "invalid_request_error", param=where
            ) from None
        limit = getattr(parsed, "max_completion_tokens", None) or parsed.max_tokens
        if limit is not None and limit > limits.max_tokens:
            raise HTTPError(
                400,
                f"max_tokens {limit} is over this server's limit of {limits.max_tokens}",
                "invalid_request_error",
                param="max_tokens",
            )
        if parsed.model not in names:
            raise HTTPError(
                404,
                f"model {parsed.model!r} does not exist; see /v1/models",
                "invalid_request_error",
                param="model",
            )
        return parsed

    async def run_generation(
        request: Request,
        start: Callable[[Callable[[], bool]], Generation],
        streaming: bool,
        render: Any,
    ) -> Any:
        if not admission.try_enter():
            raise HTTPError(
                429,
                "server is busy: request queue is full",
                "rate_limit_error",
                headers={"Retry-After": str(limits.retry_after_s)},
            )
        deadline = time.monotonic() + limits.request_timeout_s
        stop = threading.Event()

        def cancelled() -> bool:
            return stop.is_set() or time.monotonic() > deadline

        try:
            await admission.slots.acquire()
        except BaseException:
            admission.leave()
            raise

        def release() -> None:
            admission.slots.release()
            admission.leave()

        generation = start(cancelled)
        if not streaming:
            try:
                return await _whole(request, generation, stop, render)
            finally:
                release()

        async def events() -> AsyncIterator[bytes]:
            try:
                while True:
                    if await request.is_disconnected():
                        stop.set()
                        return
                    try:
                        item = await run_in_threadpool(_next, generation)
                    except Cancelled:
                        yield _sse(error_body("request deadline passed", "timeout_error"))
                        return
                    except ThreadBusyError as exc:
                        yield _sse(error_body(str(exc), "conflict_error"))
                        return
                    except InputError as exc:
                        yield _sse(error_body(str(exc), "invalid_request_error"))
                        return
                    except RankGuideError as exc:
                        yield _sse(error_body(str(exc), "server_error"))
                        return
                    except Exception:
                        # The status is sent: end the stream with an error event, cleanly.
                        logger.exception("unexpected error in a stream")
                        yield _sse(error_body("internal server error", "server_error"))
                        return
                    if isinstance(item, Outcome):
                        for chunk in render.final(item):
                            yield _sse(chunk)
                        yield _sse("[DONE]")
                        return
                    yield _sse(render.chunk(item))
            finally:
                stop.set()
                generation.close()
                release()

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": name,
                    "object": "model",
                    "created": created,
                    "owned_by": "langchain-rankguide",
                }
                for name in names
            ],
        }

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        parsed: ChatCompletionRequest = await parse(request, ChatCompletionRequest)
        handler = handlers[names[parsed.model]]
        await _check(handler, parsed)
        logprobs = parsed.logprob_alternatives() is not None
        render = _ChatRender(new_id("chatcmpl"), parsed.model, logprobs=logprobs)
        return await run_generation(
            request, lambda c: handler.chat(parsed, c), parsed.stream, render
        )

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        parsed: CompletionRequest = await parse(request, CompletionRequest)
        handler = handlers[names[parsed.model]]
        await _check(handler, parsed)
        logprobs = parsed.logprob_alternatives() is not None
        render = _CompletionRender(new_id("cmpl"), parsed.model, logprobs=logprobs)
        return await run_generation(
            request, lambda c: handler.complete(parsed, c), parsed.stream, render
        )

    return app


async def _check(handler: Handler, parsed: Any) -> None:
    """Refuse, before any generation (and before a stream's 200), what the model cannot honour.

    A handler written before ``Handler.check`` existed has nothing to refuse.
    """
    check = getattr(handler, "check", None)
    if check is None:
        return
    try:
        await run_in_threadpool(check, parsed)
    except InputError as exc:
        param = getattr(exc, "param", None)
        raise HTTPError(400, str(exc), "invalid_request_error", param=param) from None


async def read_body(request: Request, limits: ServerLimits) -> bytes:
    """The request body, counted as it arrives and read within ``limits.read_timeout_s``.

    Raises:
        HTTPError: 413 once the body passes ``limits.max_body_bytes`` (the rest is not read),
            408 when it does not arrive in time, 400 when the client hangs up half-way.
    """
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.read_timeout_s):
            async for part in request.stream():
                size += len(part)
                if size > limits.max_body_bytes:
                    raise HTTPError(
                        413,
                        f"request body over {limits.max_body_bytes} bytes",
                        "invalid_request_error",
                        headers=_CLOSE,
                    )
                parts.append(part)
    except TimeoutError:
        raise HTTPError(
            408,
            f"request body not received within {limits.read_timeout_s:g} s",
            "timeout_error",
            headers=_CLOSE,
        ) from None
    except ClientDisconnect:
        raise HTTPError(400, "the client closed the connection", "invalid_request_error") from None
    return b"".join(parts)


async def _whole(
    request: Request, generation: Generation, stop: threading.Event, render: Any
) -> Response:
    """Run a non-streamed generation to its end, stopping it if the client hangs up."""
    watcher = asyncio.create_task(_watch_disconnect(request, stop))
    try:
        pieces, outcome = await run_in_threadpool(_drain, generation)
    except Cancelled:
        if stop.is_set():  # only the watcher sets it here: the client is gone
            return Response(status_code=499)
        raise HTTPError(504, "request deadline passed", "timeout_error") from None
    except ThreadBusyError as exc:
        raise HTTPError(409, str(exc), "conflict_error") from None
    except InputError as exc:
        raise HTTPError(400, str(exc), "invalid_request_error") from None
    except RankGuideError as exc:
        raise HTTPError(
            502 if "LRM" in type(exc).__name__ else 500, str(exc), "server_error"
        ) from None
    finally:
        watcher.cancel()
    return JSONResponse(render.whole(pieces, outcome))


async def _watch_disconnect(request: Request, stop: threading.Event) -> None:
    """Set ``stop`` when the client hangs up (the body is read, so only that can arrive)."""
    try:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                stop.set()
                return
            await asyncio.sleep(0.05)  # a server that answers at once must not make this spin
    except Exception:  # a broken receive: nothing to watch; the deadline still holds
        logger.debug("cannot watch for a disconnect", exc_info=True)


def _next(generation: Generation) -> Piece | Outcome:
    try:
        return next(generation)
    except StopIteration as done:
        return done.value


def _drain(generation: Generation) -> tuple[list[Piece], Outcome]:
    pieces: list[Piece] = []
    while True:
        item = _next(generation)
        if isinstance(item, Outcome):
            return pieces, item
        pieces.append(item)


class _ChatRender:
    def __init__(self, response_id: str, model: str, *, logprobs: bool = False) -> None:
        self.id = response_id
        self.model = model
        self.logprobs = logprobs
        self.started = False
        self.calls = 0

    def whole(self, pieces: list[Piece], outcome: Outcome) -> dict[str, Any]:
        content = "".join(p.text for p in pieces if p.kind == "content")
        reasoning = "".join(p.text for p in pieces if p.kind == "reasoning")
        calls = [p.call for p in pieces if p.kind == "tool_call" and p.call is not None]
        return chat_body(
            self.id,
            self.model,
            content,
            outcome.finish_reason,
            usage_body(outcome.prompt_tokens, outcome.completion_tokens),
            reasoning=reasoning if outcome.vendor is not None or reasoning else None,
            vendor=outcome.vendor,
            stop_reason=outcome.stop_reason,
            tool_calls=calls,
            logprobs=_entries(pieces, outcome) if self.logprobs else None,
        )

    def chunk(self, piece: Piece) -> dict[str, Any]:
        delta: dict[str, Any]
        if piece.kind == "tool_call":
            delta = {"tool_calls": [{"index": self.calls, **(piece.call or {})}]}
            self.calls += 1
        else:
            key = "content" if piece.kind == "content" else "reasoning_content"
            delta = {key: piece.text}
        if not self.started:
            delta["role"] = "assistant"
            self.started = True
        vendor = {"step": piece.step} if piece.step is not None else None
        logprobs = (piece.logprobs or []) if self.logprobs else None
        return chat_chunk(self.id, self.model, delta, vendor=vendor, logprobs=logprobs)

    def final(self, outcome: Outcome) -> list[dict[str, Any]]:
        usage = usage_body(outcome.prompt_tokens, outcome.completion_tokens)
        vendor = None
        if outcome.vendor is not None:
            vendor = {k: v for k, v in outcome.vendor.items() if k != "steps"}
        logprobs = outcome.logprobs if self.logprobs and outcome.logprobs else None
        return [
            chat_chunk(
                self.id,
                self.model,
                {},
                outcome.finish_reason,
                usage=usage,
                vendor=vendor,
                stop_reason=outcome.stop_reason,
                logprobs=logprobs,
            )
        ]


class _CompletionRender:
    def __init__(self, response_id: str, model: str, *, logprobs: bool = False) -> None:
        self.id = response_id
        self.model = model
        self.logprobs = logprobs

    def whole(self, pieces: list[Piece], outcome: Outcome) -> dict[str, Any]:
        text = "".join(p.text for p in pieces if p.kind == "content")
        body = completion_body(
            self.id,
            self.model,
            text,
            outcome.finish_reason,
            usage_body(outcome.prompt_tokens, outcome.completion_tokens),
            stop_reason=outcome.stop_reason,
            logprobs=completion_logprobs(_entries(pieces, outcome)) if self.logprobs else None,
        )
        if outcome.vendor is not None:
            body["rankguide"] = outcome.vendor
        return body

    def chunk(self, piece: Piece) -> dict[str, Any]:
        text = piece.text if piece.kind == "content" else ""
        logprobs = completion_logprobs(piece.logprobs or []) if self.logprobs else None
        body = completion_body(self.id, self.model, text, None, None, logprobs=logprobs)
        if piece.step is not None:
            body["rankguide"] = {"step": piece.step}
        return body

    def final(self, outcome: Outcome) -> list[dict[str, Any]]:
        logprobs = outcome.logprobs if self.logprobs and outcome.logprobs else None
        body = completion_body(
            self.id,
            self.model,
            "",
            outcome.finish_reason,
            usage_body(outcome.prompt_tokens, outcome.completion_tokens),
            stop_reason=outcome.stop_reason,
            logprobs=completion_logprobs(logprobs) if logprobs else None,
        )
        return [body]


def _entries(pieces: list[Piece], outcome: Outcome) -> list[dict[str, Any]]:
    """Every log-prob entry of a finished generation, in order."""
    entries = [entry for piece in pieces for entry in piece.logprobs or []]
    return entries + list(outcome.logprobs or [])


def build_app_from_config(
    config: Any,
    *,
    limits: ServerLimits | None = None,
    api_key: SecretStr | None = None,
    checkpoint: str | None = None,
    setup_checkpoints: bool = True,
) -> FastAPI:
    """Serve the configured pipeline as ``rankguide`` and each local model alone.

    Args:
        config: the configuration.
        limits: request bounds.
        api_key: the bearer token every request must carry.
        checkpoint: a SQLite file or ``postgresql://`` URL replacing ``config.checkpoint``'s
            store (``rankguide serve --checkpoint``).
        setup_checkpoints: create PostgreSQL's checkpoint tables (the workers of
            ``serve --workers N`` skip it: their parent did it).

    With a checkpoint store, requests naming a ``rankguide.thread_id`` are durable runs; the
    others run without checkpoints, as without a store.
    """
    from langchain_rankguide.app import RankGuideApp
    from langchain_rankguide.checkpoints import open_checkpointer

    limits = limits or ServerLimits()
    # A durable run holds one pooled connection for its lease and borrows another per write.
    saver = open_checkpointer(
        config.checkpoint,
        target=checkpoint,
        setup=setup_checkpoints,
        connections=2 * limits.max_concurrency + 1,
    )
    rankguide = RankGuideApp(config)
    pipeline = rankguide.pipeline
    durable = RankGuideApp(pipeline, checkpointer=saver) if saver is not None else None
    handlers: dict[str, Handler] = {
        "rankguide": RankGuideHandler(rankguide, max_tokens=limits.max_tokens, durable=durable),
        "srm": _LazyPlain(lambda: pipeline.srm, "srm", limits.max_tokens),
    }
    aliases = {pipeline.srm_identity: "srm"}
    if config.lrm.provider == "hf_local":
        handlers["lrm"] = _LazyPlain(pipeline.lrm_loaded, "lrm", limits.max_tokens)
        aliases[pipeline.lrm_identity] = "lrm"
    return create_app(handlers, limits=limits, api_key=api_key, aliases=aliases)


class _LazyPlain:
    """A plain-model handler whose weights load on the first request."""

    def __init__(self, load: Callable[[], Any], role: str, max_tokens: int) -> None:
        self._load = load
        self._role = role
        self._max_tokens = max_tokens
        self._handler: PlainModelHandler | None = None
        self._lock = threading.Lock()

    def _get(self) -> PlainModelHandler:
        with self._lock:
            if self._handler is None:
                self._handler = PlainModelHandler(
                    self._load(), role=self._role, max_tokens=self._max_tokens
                )
            return self._handler

    def check(self, request: ChatCompletionRequest | CompletionRequest) -> None:
        check_plain(request)

    def chat(self, request: ChatCompletionRequest, cancelled: Callable[[], bool]) -> Generation:
        return self._get().chat(request, cancelled)

    def complete(self, request: CompletionRequest, cancelled: Callable[[], bool]) -> Generation:
        return self._get().complete(request, cancelled)
