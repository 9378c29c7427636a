"""Benchmark tasks by short name (``demo``, ``jsonl:PATH``); the tasks live elsewhere.

The :class:`Task` interface, :class:`JsonlTask` and answer normalisation are in
:mod:`langchain_rankguide.tasks`; :class:`DemoTask` is in :mod:`langchain_rankguide.demo`. They
are re-exported here, where the benchmarks and the calibration command have always found them.
"""

from __future__ import annotations

from langchain_rankguide.demo.bench_task import DemoTask
from langchain_rankguide.errors import RankGuideError
from langchain_rankguide.tasks import (
    BenchProblem,
    JsonlTask,
    Task,
    answers_match,
    boxed,
    extract_final,
    normalise_answer,
    resolve_task,
)

__all__ = [
    "BenchProblem",
    "DemoTask",
    "JsonlTask",
    "Task",
    "answers_match",
    "boxed",
    "extract_final",
    "load_task",
    "normalise_answer",
    "resolve_task",
]


def load_task(spec: str) -> Task:
    """Build a task from ``demo`` or ``jsonl:PATH``."""
    if spec == "demo":
        return DemoTask()
    if spec.startswith("jsonl:"):
        path = spec[len("jsonl:") :]
        if not path:
            raise RankGuideError("--task jsonl:PATH needs a path")
        return JsonlTask(path)
    raise RankGuideError(f"unknown task {spec!r}; use 'demo' or 'jsonl:PATH'")
