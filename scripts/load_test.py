"""Load test: concurrent clients against ``rankguide serve`` on loopback; prints the figures.

Usage::

    OMP_NUM_THREADS=1 python scripts/load_test.py [--clients 32] [--requests 10]
        [--max-concurrency 2] [--max-queue 8] [--config CFG.yaml] [--json OUT.json]

Without ``--config`` the tiny test models (``tests/tiny_models.py``) are built in a temporary
folder, with a steering vector for the SRM, and served with a configuration that keeps every
request short. The server is a real ``rankguide serve`` process bound to 127.0.0.1.

Every client sends ``--requests`` requests, cycling through :data:`KINDS` (different questions,
policies, steering on and off, streaming and plain models). A 429 is retried after its
``Retry-After`` (at most ``--max-attempts`` times). Each answer is compared with the answer to
the same request sent alone before the load: per-request state and steering must not leak
between concurrent requests. Reported: requests served, 429s, latency percentiles of the served
attempts and end to end (retries included), and the server's peak resident memory.

``tests/test_load.py`` imports this module and runs the same measurement, shorter.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
GO = [{"role": "user", "content": "go"}]

KINDS: dict[str, tuple[str, dict[str, Any]]] = {
    # name: (path, body) -- chosen so that the answers differ from one another
    "rg-srm": (
        "/chat/completions",
        {"model": "rankguide", "messages": GO, "rankguide": {"policy": "srm"}},
    ),
    "rg-lrm": (
        "/chat/completions",
        {"model": "rankguide", "messages": GO, "rankguide": {"policy": "lrm"}},
    ),
    "rg-srm-steered": (
        "/chat/completions",
        {"model": "rankguide", "messages": GO, "rankguide": {"policy": "srm", "steering": True}},
    ),
    "rg-random-question": (
        "/completions",
        {"model": "rankguide", "prompt": "we add 12", "rankguide": {"policy": "random"}},
    ),
    "srm-completion": ("/completions", {"model": "srm", "prompt": "so 15", "max_tokens": 12}),
    "lrm-chat": ("/chat/completions", {"model": "lrm", "messages": GO, "max_tokens": 12}),
    "srm-stream": (
        "/completions",
        {"model": "srm", "prompt": "Wait", "max_tokens": 12, "stream": True},
    ),
}


@dataclass
class Attempt:
    """One HTTP attempt."""

    status: int
    latency_s: float
    retry_after: str | None = None
    error_type: str | None = None


@dataclass
class Request:
    """One logical request (a 429 is retried)."""

    client: int
    kind: str
    attempts: list[Attempt] = field(default_factory=list)
    answer: Any = None
    total_s: float = 0.0

    @property
    def served(self) -> bool:
        """``True`` if the last attempt was answered with 200."""
        return bool(self.attempts) and self.attempts[-1].status == 200


def answer_of(body: dict[str, Any], response: httpx.Response) -> Any:
    """The comparable part of an answer: text, reasoning and the steps' authors and texts."""
    if body.get("stream"):
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        if not events or events[-1] != "[DONE]":
            return {"stream_error": events[-1:] if events else None}
        chunks = [json.loads(e) for e in events[:-1]]
        text = "".join(c["choices"][0].get("text") or "" for c in chunks)
        return {"text": text, "finish": chunks[-1]["choices"][0]["finish_reason"]}
    data = response.json()
    choice = data["choices"][0]
    if "message" in choice:
        message = choice["message"]
        out: dict[str, Any] = {
            "content": message.get("content"),
            "reasoning": message.get("reasoning_content"),
        }
    else:
        out = {"text": choice["text"]}
    steps = (data.get("rankguide") or {}).get("steps")
    if steps is not None:
        out["steps"] = [(s["author"], s["text"]) for s in steps]
    out["finish"] = choice["finish_reason"]
    return out


def send(http: httpx.Client, kind: str) -> tuple[Attempt, Any]:
    """Send one request of ``kind``; return the attempt and the answer (if served)."""
    path, body = KINDS[kind]
    started = time.perf_counter()
    response = http.post(path, json=body)
    response.read()
    attempt = Attempt(response.status_code, time.perf_counter() - started)
    if response.status_code == 200:
        return attempt, answer_of(body, response)
    attempt.retry_after = response.headers.get("retry-after")
    try:
        attempt.error_type = response.json()["error"]["type"]
    except (ValueError, KeyError, TypeError):
        attempt.error_type = None
    return attempt, None


def run_clients(
    base_url: str,
    *,
    clients: int,
    requests_per_client: int,
    max_attempts: int = 30,
    deadline_s: float = 300.0,
    kinds: list[str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[list[Request], float]:
    """Run ``clients`` threads, each sending ``requests_per_client`` requests; return them all.

    All clients start together (a barrier), so the first wave hits the queue at once. A 429 is
    retried after its ``Retry-After`` seconds, at most ``max_attempts`` attempts per request;
    nothing is sent after ``deadline_s``.
    """
    names = kinds or list(KINDS)
    results: list[Request] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)
    stop_at = time.monotonic() + deadline_s

    def client(index: int) -> None:
        with httpx.Client(base_url=base_url, timeout=120, headers=headers) as http:
            barrier.wait()
            for j in range(requests_per_client):
                request = Request(index, names[(index + j) % len(names)])
                started = time.perf_counter()
                while len(request.attempts) < max_attempts and time.monotonic() < stop_at:
                    attempt, answer = send(http, request.kind)
                    request.attempts.append(attempt)
                    if attempt.status != 429:
                        request.answer = answer
                        break
                    time.sleep(float(attempt.retry_after or 1))
                request.total_s = time.perf_counter() - started
                with lock:
                    results.append(request)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=deadline_s + 180)
    return results, time.perf_counter() - started


def references(base_url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Each kind of request sent alone, before any load: the answers to compare against."""
    out = {}
    with httpx.Client(base_url=base_url, timeout=120, headers=headers) as http:
        for kind in KINDS:
            attempt, answer = send(http, kind)
            if attempt.status != 200:
                raise RuntimeError(f"{kind}: reference request failed with {attempt.status}")
            out[kind] = answer
    return out


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation; ``None`` for no values."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, round(q) - 1))]


def summarise(results: list[Request], wall_s: float, refs: dict[str, Any]) -> dict[str, Any]:
    """The figures: served, 429s, mismatches, latency percentiles (ms), throughput."""
    served = [r for r in results if r.served]
    attempts = [a for r in results for a in r.attempts]
    served_ms = sorted(r.attempts[-1].latency_s * 1000 for r in served)
    total_ms = sorted(r.total_s * 1000 for r in served)
    wrong = [r.kind for r in served if r.answer != refs[r.kind]]
    statuses: dict[str, int] = {}
    for attempt in attempts:
        statuses[str(attempt.status)] = statuses.get(str(attempt.status), 0) + 1
    return {
        "requests": len(results),
        "served": len(served),
        "unserved": len(results) - len(served),
        "attempts": len(attempts),
        "status_counts": statuses,
        "rejected_429": statuses.get("429", 0),
        "retry_after_missing": sum(1 for a in attempts if a.status == 429 and not a.retry_after),
        "wrong_answers": len(wrong),
        "wrong_kinds": sorted(set(wrong)),
        "latency_served_ms": {f"p{q}": percentile(served_ms, q) for q in (50, 95, 99)},
        "latency_end_to_end_ms": {f"p{q}": percentile(total_ms, q) for q in (50, 95, 99)},
        "wall_s": wall_s,
        "served_per_s": len(served) / wall_s if wall_s else None,
    }


class PeakRSS:
    """Sample a process's resident memory in a thread; ``peak_mb`` is the largest sample."""

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        import psutil

        self._process = psutil.Process(pid)
        self._every = every_s
        self._stop = threading.Event()
        self.start_mb = self._rss()
        self.peak_mb = self.start_mb
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> float:
        return float(self._process.memory_info().rss) / 2**20

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self.peak_mb = max(self.peak_mb, self._rss())
            except Exception:  # the process ended
                return

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# --------------------------------------------------------------------------- standalone run


def tiny_setup(folder: Path) -> Path:
    """Build the tiny models, a steering vector and a configuration; return the config path."""
    sys.path.insert(0, str(REPO / "tests"))
    import torch
    import yaml
    from tiny_models import build_tiny_pair

    from langchain_rankguide.steering import SteeringVector

    torch.set_num_threads(1)
    srm, lrm = build_tiny_pair(folder)
    vector = SteeringVector(
        torch.randn(32, generator=torch.Generator().manual_seed(0)) * 8,
        layer=1,
        model_identity=srm.resolve().name,
    ).save(folder / "steer.safetensors")
    config = steering_config(srm, lrm, vector)
    path = folder / "load.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def steering_config(srm: Path, lrm: Path, vector: Path) -> dict[str, Any]:
    """The served configuration: short runs, steering available per request (off by default)."""
    return {
        "srm": {"model": str(srm)},
        "lrm": {"model": str(lrm)},
        "routing": {"policy": "random", "random_rate": 0.5, "seed": 0, "calibration": None},
        "steps": {
            "max_steps": 4,
            "max_step_tokens": 12,
            "thinking_budget": 48,
            "answer_markers": ["done"],
        },
        "steering": {
            "enabled": False,
            "vector": str(vector),
            "scale": 1.0,
            "positions": "generated",
        },
    }


def start_server(config: Path, concurrency: int, queue: int) -> tuple[subprocess.Popen[str], str]:
    """Start ``rankguide serve`` on a free loopback port; return the process and its base URL."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.update(TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    argv = [
        sys.executable,
        "-m",
        "langchain_rankguide.cli",
        "serve",
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--max-concurrency",
        str(concurrency),
        "--max-queue",
        str(queue),
        "--max-tokens",
        "64",
    ]
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 120
    for line in process.stdout:
        if "rankguide serve listening on " in line:
            url = line.rsplit(" ", 1)[-1].strip()
            threading.Thread(target=process.stdout.read, daemon=True).start()  # drain
            return process, f"{url}/v1"
        if time.monotonic() > deadline:
            break
    process.kill()
    raise RuntimeError("rankguide serve did not start")


def main(argv: list[str] | None = None, *, out: Callable[[str], None] = print) -> int:
    """Run the load test and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=10, help="requests per client")
    parser.add_argument("--max-concurrency", type=int, default=2)
    parser.add_argument("--max-queue", type=int, default=8)
    parser.add_argument("--max-attempts", type=int, default=60)
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds")
    parser.add_argument("--config", help="serve this configuration instead of the tiny models")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rankguide-load-") as tmp:
        config = Path(args.config) if args.config else tiny_setup(Path(tmp))
        process, base_url = start_server(config, args.max_concurrency, args.max_queue)
        try:
            with PeakRSS(process.pid) as memory:
                refs = references(base_url)
                idle_mb = memory.peak_mb
                results, wall = run_clients(
                    base_url,
                    clients=args.clients,
                    requests_per_client=args.requests,
                    max_attempts=args.max_attempts,
                    deadline_s=args.deadline,
                )
        finally:
            process.terminate()
            process.wait(timeout=30)
    figures = summarise(results, wall, refs)
    figures.update(
        clients=args.clients,
        requests_per_client=args.requests,
        max_concurrency=args.max_concurrency,
        max_queue=args.max_queue,
        rss_mb={"start": memory.start_mb, "after_references": idle_mb, "peak": memory.peak_mb},
        machine=f"{os.cpu_count()} CPUs, torch threads 1, {sys.platform}",
    )
    out(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    ok = figures["wrong_answers"] == 0 and figures["retry_after_missing"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
