"""``rankguide serve``: the pipeline (and each local model) as an OpenAI-compatible server."""

from __future__ import annotations

import argparse
import errno
import math
import os
import socket
from typing import Any

from langchain_rankguide.errors import RankGuideError

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
"""uvicorn's log levels."""


def register(subparsers: Any) -> None:
    """Add the ``serve`` sub-command."""
    parser = subparsers.add_parser(
        "serve",
        help="serve RankGuide, the SRM and the LRM over an OpenAI-compatible HTTP API",
        description=(
            "Serve /v1/models, /v1/chat/completions and /v1/completions for the models "
            "'rankguide' (the collaboration), 'srm' and 'lrm'. Loopback only unless --host says "
            "otherwise."
        ),
    )
    parser.add_argument("--config", help="YAML configuration (default: the embedded demo)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    parser.add_argument("--port", type=port_number, default=8000, help="port (0 picks a free one)")
    parser.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="require 'Authorization: Bearer <key>', the key read from this environment variable",
    )
    parser.add_argument(
        "--max-concurrency", type=int, default=1, help="requests generating at once"
    )
    parser.add_argument(
        "--max-queue", type=int, default=32, help="requests allowed to wait (then 429)"
    )
    parser.add_argument("--max-tokens", type=int, default=4096, help="largest max_tokens accepted")
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body")
    parser.add_argument(
        "--timeout", type=positive_seconds, default=300.0, help="per-request deadline in seconds"
    )
    parser.add_argument(
        "--log-level", default="warning", choices=LOG_LEVELS, help="uvicorn log level"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes on the one port, each with its own models (default 1); more "
        "than one needs a PostgreSQL checkpoint store, or none",
    )
    parser.add_argument(
        "--checkpoint",
        metavar="STORE",
        help="keep durable runs (requests naming rankguide.thread_id) in this SQLite file or "
        "PostgreSQL URL; default: the config's checkpoint section",
    )
    parser.set_defaults(handler=serve_command)


def port_number(text: str) -> int:
    """``--port``: an integer in 0..65535 (argparse type)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535 (got {port})")
    return port


def positive_seconds(text: str) -> float:
    """``--timeout``: a finite number of seconds above 0 (argparse type)."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0 (got {text!r})")
    return seconds


def check_port_free(host: str, port: int) -> None:
    """Refuse a port another process listens on, before any model loads.

    uvicorn would otherwise load every model, then fail to bind and exit 3 with its own line.
    The probe binds as uvicorn does (``SO_REUSEADDR``), so a port in ``TIME_WAIT`` still passes.

    Raises:
        RankGuideError: the address cannot be bound, with the reason.
    """
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise RankGuideError(f"--host {host}: cannot resolve the address: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            why = (
                "another process is listening there"
                if exc.errno == errno.EADDRINUSE
                else exc.strerror
            )
            raise RankGuideError(f"cannot serve on {host}:{port}: {why}") from None


def serve_command(args: argparse.Namespace) -> int:
    """Build the app and run uvicorn (or ``--workers`` processes of it) until interrupted."""
    from langchain_rankguide.config import load_config
    from langchain_rankguide.server.app import ServerLimits

    api_key = _api_key(args.api_key_env)
    for name in ("max_concurrency", "max_queue", "max_tokens", "max_body_bytes", "workers"):
        if getattr(args, name) < 1:
            raise RankGuideError(f"--{name.replace('_', '-')} must be >= 1")
    check_port_free(args.host, args.port)
    config = load_config(args.config)
    limits = ServerLimits(
        max_body_bytes=args.max_body_bytes,
        max_tokens=args.max_tokens,
        max_concurrency=args.max_concurrency,
        max_queue=args.max_queue,
        request_timeout_s=args.timeout,
    )
    if args.workers > 1:
        return _serve_workers(args, config, limits)
    _serve_one(args, config, limits, api_key)
    return 0


def _api_key(name: str | None) -> Any:
    from pydantic import SecretStr

    if not name:
        return None
    value = os.environ.get(name)
    if not value:
        raise RankGuideError(f"--api-key-env names {name}, which is not set")
    return SecretStr(value)


def _serve_one(args: argparse.Namespace, config: Any, limits: Any, api_key: Any) -> None:
    import uvicorn

    from langchain_rankguide.server.app import build_app_from_config
    from langchain_rankguide.server.connection import uvicorn_settings

    app = build_app_from_config(config, limits=limits, api_key=api_key, checkpoint=args.checkpoint)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            **uvicorn_settings(limits.read_timeout_s),
        )
    )
    # Announce the address (with --port 0, tests and scripts read the chosen port from it).
    _announce_port(server)
    server.run()


def _serve_workers(args: argparse.Namespace, config: Any, limits: Any) -> int:
    """Check the checkpoint store once, then hand the socket to ``--workers`` processes."""
    from langchain_rankguide.checkpoints import checkpoint_store, prepare_store
    from langchain_rankguide.server.workers import WorkerSpec, serve_workers

    store = checkpoint_store(config.checkpoint, target=args.checkpoint)
    if store is not None and store.kind == "sqlite":
        raise RankGuideError(
            f"--workers {args.workers} needs a checkpoint store its workers share: PostgreSQL "
            f"(checkpoint.backend: postgres); the SQLite file {store.location} (from "
            f"{store.source}) takes one process"
        )
    prepare_store(config.checkpoint, target=args.checkpoint)  # reachable, tables made once
    spec = WorkerSpec(args.config, args.checkpoint, args.api_key_env, limits)
    ready = serve_workers(
        spec, host=args.host, port=args.port, workers=args.workers, log_level=args.log_level
    )
    if not ready:
        raise RankGuideError("the workers did not start: see their errors above")
    return 0


def _announce_port(server: Any) -> None:
    original = server.startup

    async def startup(sockets: Any = None) -> None:
        await original(sockets=sockets)
        for listener in server.servers:
            for sock in listener.sockets:
                host, port = sock.getsockname()[:2]
                print(f"rankguide serve listening on http://{host}:{port}", flush=True)

    server.startup = startup
