"""Real loopback HTTP servers for the remote LRM tests: one well-behaved, the rest misbehaving.

Each :class:`FakeServer` is a stdlib ``ThreadingHTTPServer`` on a free ``127.0.0.1`` port that
speaks enough of the OpenAI API (``/v1/completions``, ``/v1/chat/completions``, SSE streaming)
for :mod:`langchain_rankguide.remote`, and misbehaves in one configured way. Every request is
recorded (path, headers, JSON body), so tests count attempts from the server's side.

The well-behaved model is a *continuation oracle* over a fixed script: given the text to
continue, it finds the longest prefix of the script that the text ends with and generates the
rest, honouring ``stop`` (stripped from the text, reported as vLLM's ``stop_reason``) and
``max_tokens`` (a token is a word, a run of spaces or one other character). A text that ends
with the SpecReason judge question gets ``judge_reply``.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SCRIPT = "12 + 5 = 17, total 17.\n\nWait, check: 12 + 5 = 17.\n\nAnswer: 17"
JUDGE_QUESTION = "Score: "
_TOKEN = re.compile(r"\w+|\s+|[^\w\s]")

BEHAVIOURS = ("ok", "status", "slow", "malformed", "cut", "huge", "trickle")


@dataclass
class Recorded:
    """One request as the server saw it."""

    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Settings:
    """How a server behaves; tests change these and :meth:`FakeServer.reset` restores them."""

    behaviour: str = "ok"
    failures: int = 10**9  # misbehave on this many requests (since reset), then behave
    status: int = 500
    retry_after: str | None = None
    delay_s: float = 1.0
    cut_mode: str = "chunked"  # "chunked": drop mid chunked body; "eof": close, no [DONE]
    script: str = SCRIPT
    report_stop_reason: bool = True
    honour_continue: bool = True
    reasoning_field: str | None = None
    judge_reply: str = "8"
    echo_auth_in_error: bool = False
    huge_bytes: int = 20_000_000  # "huge": a 200 reply this long (JSON or SSE), whatever max_tokens
    trickle_s: float = 0.2  # "trickle": one byte of a proper reply every this many seconds
    trickle_headers: bool = False  # "trickle": the status line and headers too, not just the body


def tokens(text: str) -> list[str]:
    """Split text into the fake model's tokens."""
    return _TOKEN.findall(text)


def continuation(context: str, script: str) -> str:
    """What the oracle generates after ``context``: the rest of the script."""
    for k in range(len(script), 0, -1):
        if context.endswith(script[:k]):
            return script[k:]
    return script


@dataclass
class Generation:
    """What the fake model produced for one request."""

    text: str
    finish_reason: str
    stop_reason: str | None
    prompt_tokens: int
    pieces: list[str] = field(default_factory=list)


def generate(context: str, body: dict[str, Any], settings: Settings) -> Generation:
    """Run the oracle for one request body."""
    prompt_tokens = len(tokens(context))
    if context.endswith(JUDGE_QUESTION):
        reply = settings.judge_reply
        return Generation(reply, "length", None, prompt_tokens, [reply])
    out = continuation(context, settings.script)
    pieces = tokens(out)
    max_tokens = int(body.get("max_tokens") or 10**6)
    stops = body.get("stop") or []
    stops = [stops] if isinstance(stops, str) else list(stops)
    text = ""
    for i, piece in enumerate(pieces):
        candidate = text + piece
        hits = [(candidate.find(s), s) for s in stops if s and s in candidate]
        if hits:
            start, stop = min(hits)
            return Generation(candidate[:start], "stop", stop, prompt_tokens, pieces[: i + 1])
        text = candidate
        if i + 1 >= max_tokens:
            return Generation(text, "length", None, prompt_tokens, pieces[: i + 1])
    return Generation(text, "stop", None, prompt_tokens, pieces)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send_json(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        owner = self.server.owner
        with owner.lock:
            owner.requests.append(Recorded(self.path, dict(self.headers.items()), body))
            index = len(owner.requests)
            settings = owner.settings
        misbehave = index <= settings.failures
        if not isinstance(body, dict):
            self._send_json(400, {"error": {"message": "body is not JSON", "code": 400}})
            return
        if misbehave and settings.behaviour == "status":
            message = f"fake failure {settings.status}"
            if settings.echo_auth_in_error:
                message += f" for {self.headers.get('Authorization')}"
            headers = {"Retry-After": settings.retry_after} if settings.retry_after else {}
            self._send_json(settings.status, {"error": {"message": message}}, headers)
            return
        if misbehave and settings.behaviour == "slow":
            if owner.stopping.wait(settings.delay_s):
                return
        if misbehave and settings.behaviour == "malformed":
            self._send_json(200, b'{"choices": [{"text": "12 + 5 = 1')
            return
        if misbehave and settings.behaviour == "cut":
            self._cut(body, settings)
            return
        if misbehave and settings.behaviour == "huge":
            self._huge(body, settings)
            return
        if misbehave and settings.behaviour == "trickle":
            self._trickle(body, settings)
            return
        self._answer(body, settings)

    # ------------------------------------------------------------------ answers

    def _context(self, body: dict[str, Any], settings: Settings) -> tuple[str, bool]:
        if self.path.endswith("/chat/completions"):
            messages = body.get("messages") or []
            last = messages[-1] if messages else {}
            if (
                last.get("role") == "assistant"
                and body.get("continue_final_message")
                and settings.honour_continue
            ):
                return str(last.get("content") or ""), True
            return "", True
        return str(body.get("prompt") or ""), False

    @staticmethod
    def _message(text: str, settings: Settings) -> dict[str, Any]:
        if not settings.reasoning_field:
            return {"role": "assistant", "content": text}
        thought, marker, answer = text.partition("</think>")
        return {
            "role": "assistant",
            settings.reasoning_field: thought,
            "content": answer if marker else None,
        }

    @staticmethod
    def _final(gen: Generation, settings: Settings) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": gen.finish_reason}
        if settings.report_stop_reason:
            choice["stop_reason"] = gen.stop_reason
        return choice

    def _answer(self, body: dict[str, Any], settings: Settings) -> None:
        context, chat = self._context(body, settings)
        gen = generate(context, body, settings)
        usage = {
            "prompt_tokens": gen.prompt_tokens,
            "completion_tokens": len(gen.pieces),
            "total_tokens": gen.prompt_tokens + len(gen.pieces),
        }
        if body.get("stream"):
            self._stream(gen, settings, chat=chat, body=body, usage=usage)
            return
        choice = self._final(gen, settings)
        if chat:
            choice["message"] = self._message(gen.text, settings)
        else:
            choice["text"] = gen.text
        wants_logprobs = body.get("top_logprobs") if chat else body.get("logprobs")
        if wants_logprobs and context.endswith(JUDGE_QUESTION):
            top = {settings.judge_reply: -0.5, "3": -1.5, " 9": -0.7, "x": -0.1}
            if chat:
                items = [{"token": k, "logprob": v} for k, v in top.items()]
                first = {"token": gen.text, "logprob": -0.5, "top_logprobs": items}
                choice["logprobs"] = {"content": [first]}
            else:
                choice["logprobs"] = {"tokens": [gen.text], "top_logprobs": [top]}
        kind = "chat.completion" if chat else "text_completion"
        payload = {"id": "fake-1", "object": kind, "model": body.get("model")}
        self._send_json(200, {**payload, "choices": [choice], "usage": usage})

    def _events(
        self, gen: Generation, settings: Settings, *, chat: bool, usage: dict[str, int] | None
    ) -> Iterator[bytes]:
        deltas: list[dict[str, Any]] = []
        if chat and settings.reasoning_field:
            thought, marker, answer = gen.text.partition("</think>")
            deltas += [{settings.reasoning_field: t} for t in tokens(thought)]
            deltas += [{"content": t} for t in tokens(answer)] if marker else []
        elif chat:
            deltas += [{"content": t} for t in tokens(gen.text)]
        else:
            deltas += [{"text": t} for t in tokens(gen.text)]
        for delta in deltas:
            choice: dict[str, Any] = {"index": 0, "finish_reason": None}
            if chat:
                choice["delta"] = delta
            else:
                choice.update(delta)
            yield _sse({"object": "chunk", "choices": [choice]})
        final = self._final(gen, settings)
        if chat:
            final["delta"] = {}
        else:
            final["text"] = ""
        yield _sse({"object": "chunk", "choices": [final]})
        if usage is not None:
            yield _sse({"object": "chunk", "choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"

    def _start_stream(self, *, chunked: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
        self.end_headers()

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _stream(
        self,
        gen: Generation,
        settings: Settings,
        *,
        chat: bool,
        body: dict[str, Any],
        usage: dict[str, int],
    ) -> None:
        include = bool((body.get("stream_options") or {}).get("include_usage"))
        self._start_stream(chunked=True)
        for event in self._events(gen, settings, chat=chat, usage=usage if include else None):
            self._write_chunk(event)
        self.wfile.write(b"0\r\n\r\n")

    def _cut(self, body: dict[str, Any], settings: Settings) -> None:
        context, chat = self._context(body, settings)
        gen = generate(context, body, settings)
        events = list(self._events(gen, settings, chat=chat, usage=None))[:2]
        self.close_connection = True
        if not body.get("stream"):
            # A non-streamed body cut short: Content-Length promises more than is sent.
            payload = json.dumps({"choices": [{"index": 0, "text": gen.text}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload[: len(payload) // 2])
            return
        if settings.cut_mode == "eof":
            self._start_stream(chunked=False)
            for event in events:
                self.wfile.write(event)
            return
        self._start_stream(chunked=True)
        for event in events:
            self._write_chunk(event)
        # No terminating chunk: the connection closes mid-body.

    def _huge(self, body: dict[str, Any], settings: Settings) -> None:
        """A 200 reply of ``huge_bytes`` bytes, written until the client stops reading."""
        self.close_connection = True
        piece = "x" * 8192
        if body.get("stream"):
            event = _sse({"object": "chunk", "choices": [{"index": 0, "text": piece}]})
            head, repeated, tail = b"", event, b"data: [DONE]\n\n"
            self._start_stream(chunked=False)
        else:
            head = b'{"choices": [{"index": 0, "finish_reason": "length", "text": "'
            repeated, tail = piece.encode(), b'"}]}'
            count = (settings.huge_bytes - len(head) - len(tail)) // len(repeated)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(head) + count * len(repeated) + len(tail)))
            self.end_headers()
        try:
            self.wfile.write(head)
            for _ in range((settings.huge_bytes - len(head) - len(tail)) // len(repeated)):
                if self.server.owner.stopping.is_set():
                    return
                self.wfile.write(repeated)
            self.wfile.write(tail)
        except OSError:
            pass  # the client stopped reading: expected

    def _trickle(self, body: dict[str, Any], settings: Settings) -> None:
        """A proper reply, sent one byte every ``trickle_s`` seconds (the headers too, if set)."""
        self.close_connection = True
        context, _ = self._context(body, settings)
        gen = generate(context, body, settings)
        choice = self._final(gen, settings)
        choice["text"] = gen.text
        payload = json.dumps({"choices": [choice]}).encode()
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        ).encode()
        data = (head if settings.trickle_headers else b"") + payload
        try:
            if not settings.trickle_headers:
                self.wfile.write(head)
                self.wfile.flush()
            for i in range(len(data)):
                if self.server.owner.stopping.wait(settings.trickle_s):
                    return
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
        except OSError:
            pass  # the client gave up: expected


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: FakeServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out or hang up leave broken pipes behind; expected here


class FakeServer:
    """One loopback server with a request log and adjustable :class:`Settings`."""

    def __init__(self, name: str, **settings: Any) -> None:
        self.name = name
        self.defaults = Settings(**settings)
        self.settings = Settings(**settings)
        self.requests: list[Recorded] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-{name}",
            daemon=True,
        )

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The base URL with the API prefix (``http://127.0.0.1:PORT/v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def count(self) -> int:
        """Requests received since the last reset."""
        with self.lock:
            return len(self.requests)

    @property
    def last(self) -> Recorded:
        """The last request received."""
        with self.lock:
            return self.requests[-1]

    def configure(self, **changes: Any) -> FakeServer:
        """Change settings for the current test (see :meth:`reset`)."""
        for key, value in changes.items():
            if not hasattr(self.settings, key):
                raise AttributeError(key)
            setattr(self.settings, key, value)
        return self

    def reset(self) -> FakeServer:
        """Forget recorded requests and restore the default settings."""
        with self.lock:
            self.requests.clear()
            self.settings = Settings(**self.defaults.__dict__)
        return self

    def start(self) -> FakeServer:
        """Serve in a daemon thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and wake slow handlers."""
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()


def refused_url() -> str:
    """A loopback URL with nothing listening (a port bound, released, never listened on)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


SERVER_KINDS: dict[str, dict[str, Any]] = {
    "ok": {},
    "slow": {"behaviour": "slow", "delay_s": 1.0},
    "error500": {"behaviour": "status", "status": 500},
    "ratelimit": {"behaviour": "status", "status": 429, "retry_after": "1", "failures": 1},
    "malformed": {"behaviour": "malformed"},
    "cut": {"behaviour": "cut"},
    "unauthorized": {"behaviour": "status", "status": 401},
    "huge": {"behaviour": "huge"},
    "trickle": {"behaviour": "trickle"},
}
"""Every server the fault tests start: name -> settings."""


def start_servers() -> dict[str, FakeServer]:
    """Start one server of each kind in :data:`SERVER_KINDS`."""
    return {name: FakeServer(name, **kw).start() for name, kw in SERVER_KINDS.items()}


def stop_servers(servers: dict[str, FakeServer]) -> None:
    """Stop the servers :func:`start_servers` started."""
    for server in servers.values():
        server.stop()
