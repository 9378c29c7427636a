"""Real servers for the serving tests: ``rankguide serve`` as a process, and in-process apps.

* :func:`served` (session-scoped fixture): ``rankguide serve`` started ONCE per test session as a
  real subprocess on a free ``127.0.0.1`` port (``--port 0``), serving the tiny models of the
  ``tiny_pair`` fixture; the port is read from the "listening" line; the process is killed at
  teardown. Test modules load it with ``pytest_plugins = ["server_fixtures"]`` so one instance
  is shared by every module of the session.
* :class:`InProcessServer`: an app from :func:`~langchain_rankguide.server.app.create_app` under
  uvicorn in a thread, on a pre-bound loopback socket, for tests that need to swap handlers
  (slow, counting) or limits (auth, queue, deadline).

Everything binds to 127.0.0.1 only; child processes run with one torch thread.

PYTEST_DONT_REWRITE: imported by the test modules before pytest registers it as a plugin.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

LOOPBACK = "127.0.0.1"
STEP_CAP = 24
MAX_STEPS = 10
ANSWER_MARKER = "done"
SERVE_MAX_TOKENS = 512
SERVE_MAX_BODY = 64 * 1024
SERVE_MAX_QUEUE = 2
REPO = Path(__file__).resolve().parents[1]


def tiny_config_data(
    srm: Path, lrm: Path | dict[str, Any], **sections: dict[str, Any]
) -> dict[str, Any]:
    """A configuration mapping for the tiny pair.

    The random policy (rate 0.5, seed 6) escalates some steps deterministically (on "go":
    SRM and LRM alternate, SRM first); the tiny models never write ``Answer:``, so ``done`` is
    the answer marker (greedy runs on "go" end with an answer step after six steps).

    Args:
        srm: the tiny SRM folder.
        lrm: the tiny LRM folder (served locally, ``hf_local``) or a whole ``lrm`` section.
        **sections: sections merged over the defaults (one level deep).
    """
    data: dict[str, Any] = {
        "version": 1,
        "srm": {"model": str(srm)},
        "lrm": {"model": str(lrm)} if isinstance(lrm, Path) else dict(lrm),
        "steps": {
            "max_steps": MAX_STEPS,
            "max_step_tokens": STEP_CAP,
            "thinking_budget": 200,
            "answer_markers": [ANSWER_MARKER],
        },
        "routing": {"policy": "random", "random_rate": 0.5, "seed": 6, "calibration": None},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return data


def write_config(path: Path, data: dict[str, Any]) -> Path:
    """Write a configuration mapping as YAML and return the path."""
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def child_env(**extra: str) -> dict[str, str]:
    """Environment of a child process: one torch thread, offline, unbuffered output."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


HOOKS = REPO / "tests" / "hooks"
"""The test hook that kills a child at a chosen point (``tests/hooks/sitecustomize.py``)."""


def hooked_env(**extra: str) -> dict[str, str]:
    """:func:`child_env` with the kill hook on the path; ``extra`` says where it strikes."""
    env = child_env(**extra)
    env["PYTHONPATH"] = os.pathsep.join((str(HOOKS), env["PYTHONPATH"]))
    return env


def rankguide_command(*args: str) -> list[str]:
    """The ``rankguide`` CLI as run by this interpreter (same environment as the tests)."""
    return [sys.executable, "-m", "langchain_rankguide.cli", *args]


@dataclass
class ServedProcess:
    """A running ``rankguide serve`` process."""

    process: subprocess.Popen[str]
    url: str
    output: list[str] = field(default_factory=list)

    @property
    def v1(self) -> str:
        """The API base URL (``.../v1``)."""
        return f"{self.url}/v1"

    def stop(self) -> None:
        """Terminate the process (kill it if it lingers)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_serve(config: Path, *args: str, env: dict[str, str] | None = None) -> ServedProcess:
    """Start ``rankguide serve --config CONFIG --port 0 ARGS`` and wait for its listening line."""
    process = subprocess.Popen(
        rankguide_command(
            "serve", "--config", str(config), "--host", LOOPBACK, "--port", "0", *args
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env or child_env(),
        cwd=REPO,
    )
    output: list[str] = []
    ready = threading.Event()
    found: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if not found and "rankguide serve listening on " in line:
                found.append(line.rsplit(" ", 1)[-1].strip())
                ready.set()
        ready.set()  # the process ended

    threading.Thread(target=read, daemon=True).start()
    ready.wait(timeout=90)
    if not found:
        process.kill()
        process.wait(timeout=10)
        raise RuntimeError("rankguide serve did not start:\n" + "".join(output))
    url = found[0]
    assert url.startswith(f"http://{LOOPBACK}:"), url
    return ServedProcess(process, url, output)


@pytest.fixture(scope="session")
def served_config(tiny_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The YAML configuration ``rankguide serve`` runs with (tiny models, local LRM)."""
    folder = tmp_path_factory.mktemp("served")
    return write_config(folder / "tiny.yaml", tiny_config_data(*tiny_pair))


@pytest.fixture(scope="session")
def served(served_config: Path) -> Iterator[ServedProcess]:
    """``rankguide serve`` on the tiny models, one process per test session."""
    server = start_serve(
        served_config,
        "--max-queue",
        str(SERVE_MAX_QUEUE),
        "--max-tokens",
        str(SERVE_MAX_TOKENS),
        "--max-body-bytes",
        str(SERVE_MAX_BODY),
        "--timeout",
        "120",
    )
    yield server
    server.stop()


class InProcessServer:
    """An ASGI app under uvicorn in a background thread, on a free loopback port.

    ``options`` go to ``uvicorn.Config`` (e.g. ``uvicorn_settings(...)``, as ``rankguide
    serve`` passes them).

    Example:
        >>> with InProcessServer(create_app(handlers)) as server:  # doctest: +SKIP
        ...     httpx.get(f"{server.v1}/models")
    """

    def __init__(self, app: Any, **options: Any) -> None:
        import uvicorn

        self.app = app
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((LOOPBACK, 0))
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2, **options
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def v1(self) -> str:
        """The API base URL (``.../v1``)."""
        return f"{self.url}/v1"

    def __enter__(self) -> InProcessServer:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the in-process server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()


def open_raw(port: int, data: bytes = b"") -> socket.socket:
    """A plain socket to a loopback server, having sent ``data`` (a client's first bytes)."""
    sock = socket.create_connection((LOOPBACK, port), timeout=10)
    if data:
        sock.sendall(data)
    return sock


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """What the server sends before it closes ``sock``; ``socket.timeout`` if it stays open."""
    sock.settimeout(timeout)
    received = b""
    with sock:
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                return received
            if not data:
                return received
            received += data
