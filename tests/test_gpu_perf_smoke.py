"""CPU smoke run of scripts/gpu_perf.py at tiny shapes, in a fresh interpreter.

The GPU machine has torch and transformers but none of pydantic, LangChain, LangGraph: the script
must import only the engine and signal modules. ``--check-imports`` fails the run if this package
(or the script) imports any of them; the subprocess gives it a clean ``sys.modules``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_perf.py"
FORBIDDEN = ("pydantic", "yaml", "langchain_core", "langgraph", "langchain")


def env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
    }


def test_engine_and_signals_import_nothing_forbidden():
    code = (
        "import sys, langchain_rankguide.engine, langchain_rankguide.signals\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=env(), cwd=ROOT, timeout=60)


def test_tiny_run_on_cpu(tmp_path):
    out = tmp_path / "perf.json"
    args = [
        *("--device", "cpu", "--shapes", "tiny", "--dtype", "float32"),
        *("--steps", "3", "--step-tokens", "6", "--prompt-tokens", "24", "--repeats", "1"),
        *("--json", str(out), "--check-imports"),
    ]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env(),
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "check-imports: ok" in proc.stdout
    # The table is the last thing printed.
    last = proc.stdout.strip().splitlines()
    assert last[-1].startswith("wall (s)") and any("engine (ms/token)" in x for x in last[-10:])
    result = json.loads(out.read_text())["results"][0]
    assert result["shape"] == "tiny" and result["same_ids"] is True
    for key in (
        "generate_ms_per_token",
        "engine_ms_per_token",
        "capture_ms_per_token",
        "steer_ms_per_token",
        "rank_signals_ms_per_step",
        "all_signals_ms_per_step",
        "rank_signals_ms_512",
    ):
        assert result[key] > 0, key
    # Three steps give the third two openings: every signal is measured on some step, except
    # cross-step on the first steps (recorded per run as None somewhere).
    assert set(result["signals_none"]) <= {"rank.cross_step", "rank.cross_step_norm"}


def test_import_watch_blames_only_this_package(monkeypatch):
    # Load the script as a module (no --check-imports in argv: the watch is not installed).
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_perf_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the script executes.
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    watch = module.ImportWatch()
    site = "/usr/lib/python3.12/site-packages/huggingface_hub/utils/_fixes.py"
    watch.importers = {"yaml": site}
    assert watch.violations() == []
    watch.importers = {"yaml": str(ROOT / "langchain_rankguide" / "engine" / "hooks.py")}
    assert watch.violations() and "yaml" in watch.violations()[0]
    watch.importers = {"pydantic": site}
    assert watch.violations()
