"""Run candidate routers on calibration problems and measure each as an operating point.

A rule that hands single steps to the LRM changes the trace the SRM continues from, so its
outcome cannot be read off replay data; it is run instead, through the same app every run uses,
with the candidate calibration held in memory. The LRM alone is run on the same problems in the
same process, so every speed-up compares latencies measured under the same load.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langchain_rankguide.calibration.operating import OperatingPoint
from langchain_rankguide.pipeline import RunOptions

if TYPE_CHECKING:
    from langchain_rankguide.calibration.replay import ReplayPipeline
    from langchain_rankguide.schemas import Calibration
    from langchain_rankguide.tasks import BenchProblem, Task


@dataclass(frozen=True)
class Candidate:
    """One router to run: a calibration variant at a step threshold."""

    label: str
    variant: str | None
    threshold: float | None


def run_candidates(
    pipeline: ReplayPipeline,
    task: Task,
    problems: Sequence[BenchProblem],
    calibration: Calibration,
    candidates: Sequence[Candidate],
    *,
    lrm_latency_s: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[OperatingPoint]:
    """Run every candidate (and the LRM alone, unless its mean latency is given) on ``problems``.

    Problems run one after another under every candidate (as ``rankguide bench`` does), so drift
    in machine load hits all candidates alike. Returns one measured point per candidate.
    """
    from langchain_rankguide.app import RankGuideApp

    pipeline.calibration_override = calibration
    app = RankGuideApp(pipeline)
    runs: dict[str, list[Any]] = {c.label: [] for c in candidates}
    lrm_latency = 0.0
    try:
        for done, problem in enumerate(problems, 1):
            if lrm_latency_s is None:
                lrm_latency += app.invoke(problem.question, RunOptions(policy="lrm")).latency_s
            for candidate in candidates:
                options = RunOptions(
                    policy="rankguide", variant=candidate.variant, threshold=candidate.threshold
                )
                result = app.invoke(problem.question, options)
                correct = task.check(problem, result.answer, [s["text"] for s in result.steps])
                runs[candidate.label].append((bool(correct), result))
            if progress is not None:
                progress(done, len(problems))
    finally:
        pipeline.calibration_override = None
    if lrm_latency_s is None:
        lrm_latency_s = lrm_latency / max(1, len(problems))
    return [_point(c, runs[c.label], lrm_latency_s) for c in candidates]


def _point(candidate: Candidate, runs: list[Any], lrm_latency_s: float) -> OperatingPoint:
    n = max(1, len(runs))
    steps = sum(len(r.steps) for _, r in runs)
    escalated = sum(1 for _, r in runs for s in r.steps if s.get("author") == "lrm")
    return OperatingPoint(
        label=candidate.label,
        n=len(runs),
        accuracy=sum(ok for ok, _ in runs) / n,
        latency_s=sum(r.latency_s for _, r in runs) / n,
        lrm_latency_s=lrm_latency_s,
        escalation_rate=escalated / max(1, steps),
        rollback_rate=sum(1 for _, r in runs if r.state.get("rollbacks")) / n,
        threshold=candidate.threshold,
        measured=True,
    )
