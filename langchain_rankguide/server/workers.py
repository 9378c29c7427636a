"""``rankguide serve --workers N``: N server processes on one listening socket.

The parent binds the socket and hands it to N worker processes under uvicorn's supervisor,
which restarts a worker that dies (a SIGKILL included). Each worker builds its own app, and so
its own models, from the same :class:`WorkerSpec`, which travels in the environment because the
workers are fresh interpreters (``spawn``), not forks of a process that has loaded torch.

Workers share nothing but the socket and the checkpoint store: a durable run
(``rankguide.thread_id``) can be resumed by any worker only if the store is PostgreSQL, so the
command refuses a SQLite store with more than one worker (a SQLite file takes one writer
process); without a store each request is a run of its own and any worker can serve it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import SecretStr
from uvicorn.supervisors.multiprocess import Multiprocess

from langchain_rankguide.server.app import ServerLimits

SPEC_ENV = "RANKGUIDE_SERVE_WORKER"
"""The environment variable the parent passes each worker's :class:`WorkerSpec` in."""

READY_TIMEOUT_S = 300.0
"""Seconds each worker has to import and build its app before the parent gives up."""


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker builds its app from: the ``serve`` command's own arguments.

    Attributes:
        config: the ``--config`` file (``None``: the embedded demo).
        checkpoint: the ``--checkpoint`` store, if any.
        api_key_env: the ``--api-key-env`` variable (each worker reads the key from it).
        limits: the request bounds.
    """

    config: str | None
    checkpoint: str | None
    api_key_env: str | None
    limits: ServerLimits = field(default_factory=ServerLimits)

    def to_json(self) -> str:
        """The spec as the environment carries it."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        """Read a spec written by :meth:`to_json`."""
        data = json.loads(text)
        return cls(**{**data, "limits": ServerLimits(**data["limits"])})


def worker_app() -> Any:
    """The app of one worker (uvicorn's app factory), built from ``$RANKGUIDE_SERVE_WORKER``."""
    from langchain_rankguide.config import load_config
    from langchain_rankguide.server.app import build_app_from_config

    spec = WorkerSpec.from_json(os.environ[SPEC_ENV])
    api_key = None
    if spec.api_key_env:
        api_key = SecretStr(os.environ[spec.api_key_env])
    return build_app_from_config(
        load_config(spec.config),
        limits=spec.limits,
        api_key=api_key,
        checkpoint=spec.checkpoint,
        setup_checkpoints=False,  # the parent created the tables before starting the workers
    )


def serve_workers(spec: WorkerSpec, *, host: str, port: int, workers: int, log_level: str) -> bool:
    """Serve with ``workers`` processes until SIGINT or SIGTERM.

    Prints ``rankguide serve listening on http://HOST:PORT`` once every worker is ready.

    Returns:
        ``False`` when the workers never all became ready (their errors are in the log).
    """
    import uvicorn

    from langchain_rankguide.server.connection import uvicorn_settings

    os.environ[SPEC_ENV] = spec.to_json()
    config = uvicorn.Config(
        f"{__name__}:worker_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        **uvicorn_settings(spec.limits.read_timeout_s),
    )
    sock = config.bind_socket()
    bound_host, bound_port = sock.getsockname()[:2]
    supervisor = _AnnouncingSupervisor(
        config, sockets=[sock], address=f"http://{bound_host}:{bound_port}"
    )
    supervisor.run()
    return supervisor.announced


class _AnnouncingSupervisor(Multiprocess):
    """uvicorn's worker supervisor, announcing the address once every worker is ready."""

    def __init__(self, config: Any, *, sockets: list[Any], address: str) -> None:
        super().__init__(config, sockets=sockets)
        self.address = address
        self.announced = False

    def init_processes(self) -> None:
        super().init_processes()
        ready = all(_wait_until_ready(process, self.should_exit) for process in self.processes)
        if ready:
            print(f"rankguide serve listening on {self.address}", flush=True)
            print(f"rankguide serve: {len(self.processes)} workers ready", flush=True)
            self.announced = True


def _wait_until_ready(process: Any, should_exit: Any) -> bool:
    """Wait for a worker to finish starting (an older uvicorn cannot tell: assume it did)."""
    wait = getattr(process, "wait_until_ready", None)
    return True if wait is None else bool(wait(READY_TIMEOUT_S, should_exit))
