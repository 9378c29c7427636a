"""The server under 32 concurrent clients on loopback: correct, isolated, back-pressured.

A second run mixes in clients that give up on non-streamed requests and clients too slow to
send theirs: the abandoned work stops, the slow connections are cut off, everyone else is served.

The measurement lives in ``scripts/load_test.py`` (run there longer, against a real
``rankguide serve`` process, for the figures in ``docs/reliability.md``); here it runs briefly
against the app under uvicorn in this process, so the admission queue can be watched. Only
behaviour is asserted, never speed.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import torch
from server_fixtures import REPO, InProcessServer, open_raw, read_until_closed

from langchain_rankguide.config import load_config
from langchain_rankguide.server.app import ServerLimits, build_app_from_config
from langchain_rankguide.server.connection import uvicorn_settings
from langchain_rankguide.steering import SteeringVector

CLIENTS = 32
REQUESTS_PER_CLIENT = 3
CONCURRENCY = 2
QUEUE = 6
READ_TIMEOUT_S = 1.0
ABANDONED = 8
SLOW = 30


def _load_script() -> Any:
    spec = importlib.util.spec_from_file_location("load_test", REPO / "scripts" / "load_test.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["load_test"] = module  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    return module


load_test = _load_script()


@pytest.fixture(scope="module")
def served_config(tiny_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("load")
    vector = SteeringVector(
        torch.randn(32, generator=torch.Generator().manual_seed(0)) * 8,
        layer=1,
        model_identity=tiny_pair[0].resolve().name,
    ).save(folder / "steer.safetensors")
    return load_config(None, overrides=load_test.steering_config(*tiny_pair, vector))


@pytest.fixture
def app(served_config: Any) -> Any:
    """A fresh app per test: its admission queue belongs to the event loop of one server."""
    limits = ServerLimits(
        max_concurrency=CONCURRENCY,
        max_queue=QUEUE,
        max_tokens=64,
        retry_after_s=1,
        read_timeout_s=READ_TIMEOUT_S,
    )
    return build_app_from_config(served_config, limits=limits)


def test_32_concurrent_clients_get_correct_isolated_answers_or_429(app: Any) -> None:
    admission = app.state.admission
    capacity = CONCURRENCY + QUEUE
    inside: list[int] = []
    stop = threading.Event()

    def watch() -> None:  # how many requests the server holds at once
        while not stop.wait(0.005):
            inside.append(admission._inside)

    process = psutil.Process(os.getpid())
    with InProcessServer(app) as server:
        refs = load_test.references(server.v1)
        # The kinds differ from one another, so a leak of state or steering would show.
        assert len({repr(a) for a in refs.values()}) == len(refs)
        assert refs["rg-srm"] != refs["rg-srm-steered"], "steering changes the SRM's steps"
        rss_before = process.memory_info().rss
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        results, wall = load_test.run_clients(
            server.v1,
            clients=CLIENTS,
            requests_per_client=REQUESTS_PER_CLIENT,
            max_attempts=40,
            deadline_s=40,
        )
        stop.set()
        watcher.join(timeout=5)
        rss_after = process.memory_info().rss
        settled = time.monotonic() + 10
        while admission._inside and time.monotonic() < settled:
            time.sleep(0.02)
        assert admission._inside == 0, "every admitted request left the queue"
        # The server still answers after the load.
        assert load_test.references(server.v1) == refs

    figures = load_test.summarise(results, wall, refs)
    print(
        f"\nload: {figures['served']}/{figures['requests']} served, "
        f"{figures['rejected_429']} x 429, latency served "
        f"{figures['latency_served_ms']}, wall {wall:.1f} s, "
        f"RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MB"
    )
    assert figures["requests"] == CLIENTS * REQUESTS_PER_CLIENT
    assert figures["served"] == figures["requests"], "every request is served in the end"
    assert figures["wrong_answers"] == 0, figures["wrong_kinds"]  # isolation, steering included
    assert set(figures["status_counts"]) <= {"200", "429"}
    assert figures["rejected_429"] > 0, "32 clients against 8 places: back-pressure shows"
    assert figures["retry_after_missing"] == 0
    assert admission.rejected == figures["rejected_429"]
    assert max(inside) <= capacity, "the queue never held more than its bound"
    assert max(inside) == capacity, "the queue filled up"


def _slow_clients(port: int) -> list[Any]:
    """Connections that send nothing, half their headers, or half their body."""
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    half_body = head + b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{"
    firsts = [b"", head, half_body]
    return [open_raw(port, firsts[i % 3]) for i in range(SLOW)]


def _abandon(url: str, kind: str) -> None:
    """Send a non-streamed request and give up on it before its answer."""
    path, body = load_test.KINDS[kind]
    with httpx.Client(base_url=url, timeout=0.3) as quitter:
        try:
            quitter.post(path, json=body)
        except httpx.TimeoutException:
            pass


def test_abandoned_requests_and_slow_clients_leave_everyone_else_served(app: Any) -> None:
    admission = app.state.admission
    with InProcessServer(app, **uvicorn_settings(READ_TIMEOUT_S)) as server:
        refs = load_test.references(server.v1)
        slow = _slow_clients(server.port)
        quitters = [
            threading.Thread(target=_abandon, args=(server.v1, "rg-lrm"), daemon=True)
            for _ in range(ABANDONED)
        ]
        for quitter in quitters:
            quitter.start()
        for quitter in quitters:
            quitter.join(timeout=30)
        settled = time.monotonic() + 10
        while admission._inside and time.monotonic() < settled:
            time.sleep(0.02)
        assert admission._inside == 0, "the abandoned requests stopped and left the queue"
        results, wall = load_test.run_clients(
            server.v1, clients=6, requests_per_client=2, max_attempts=40, deadline_s=40
        )
        cut_off = [read_until_closed(sock, 5) for sock in slow]
        assert admission._inside == 0
    figures = load_test.summarise(results, wall, refs)
    print(
        f"\nwith {ABANDONED} abandoned requests and {SLOW} slow clients: "
        f"{figures['served']}/{figures['requests']} served, {figures['rejected_429']} x 429"
    )
    assert figures["served"] == figures["requests"] == 12, "every remaining client is served"
    assert figures["wrong_answers"] == 0, figures["wrong_kinds"]
    assert all(reply.startswith(b"HTTP/1.1 408") for reply in cut_off), cut_off[:3]
