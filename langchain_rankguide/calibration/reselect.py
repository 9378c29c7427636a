"""Re-choose a calibration file's operating point by running it, without refitting its score.

When one model of the pair changes (a retrained LRM) or the hardware does, the fitted score still
ranks the SRM's steps as before, but the threshold that buys the most accuracy at the target
speed-up moves. A full ``rankguide calibrate`` collects replay data on hundreds of problems; this
runs only the file's router at a few step thresholds on the selection problems, beside the LRM
alone in the same process (:func:`~langchain_rankguide.calibration.candidates.run_candidates`),
and keeps the most accurate threshold whose speed-up reaches the target -- the rule the chain
itself chooses by (:func:`~langchain_rankguide.calibration.operating.choose_operating_point`).

Example:
    >>> from langchain_rankguide.schemas import SignalStats
    >>> cal = Calibration(models={}, signals={"entropy.mean": SignalStats(0.0, 1.0)},
    ...                   weights={"entropy.mean": 1.0}, threshold=-2.2,
    ...                   policy_thresholds={"rankguide@0.3": -2.7, "entropy": 0.4})
    >>> default_thresholds(cal)
    [-2.2, -2.7]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from langchain_rankguide.calibration.candidates import Candidate, run_candidates
from langchain_rankguide.calibration.operating import OperatingPoint, choose_operating_point
from langchain_rankguide.errors import CalibrationError
from langchain_rankguide.schemas import Calibration

if TYPE_CHECKING:
    from langchain_rankguide.calibration.replay import ReplayPipeline
    from langchain_rankguide.tasks import BenchProblem, Task


def default_thresholds(calibration: Calibration) -> list[float]:
    """The file's step threshold and its ``rankguide@RATE`` sweep thresholds, highest first."""
    swept = (v for k, v in calibration.policy_thresholds.items() if k.startswith("rankguide@"))
    return sorted({calibration.threshold, *swept}, reverse=True)


@dataclass(frozen=True)
class Reselection:
    """The thresholds run, the one chosen (``None``: none reached the target) and the old one."""

    points: list[OperatingPoint]
    chosen: OperatingPoint | None
    previous: float
    target_speedup: float

    def record(self) -> dict[str, Any]:
        """JSON-native summary, kept in the file's ``replay`` record under ``reselected``."""
        return {
            "previous_threshold": self.previous,
            "target_speedup": self.target_speedup,
            "selection_problems": self.points[0].n if self.points else 0,
            "chosen": None if self.chosen is None else self.chosen.to_dict(),
            "tried": [p.to_dict() for p in self.points],
        }


def reselect_threshold(
    pipeline: ReplayPipeline,
    task: Task,
    problems: Sequence[BenchProblem],
    calibration: Calibration,
    thresholds: Sequence[float],
    *,
    target_speedup: float = 2.0,
    progress: Callable[[int, int], None] | None = None,
) -> Reselection:
    """Run the file's router at each step threshold on ``problems`` and choose one.

    Args:
        pipeline: runs the router (its calibration is overridden while the candidates run).
        task: judges the answers.
        problems: selection problems, disjoint from any the score was fitted on.
        calibration: the file whose router is run; only its step threshold varies.
        thresholds: step thresholds to try (a rule's running-risk and rollback thresholds stay).
        target_speedup: the speed-up over the LRM alone the chosen threshold must reach.
        progress: called with (problems done, problems in total).
    """
    if not thresholds:
        raise CalibrationError("no thresholds to try")
    candidates = [Candidate(f"score >= {t:.3f}", None, t) for t in thresholds]
    points = run_candidates(pipeline, task, problems, calibration, candidates, progress=progress)
    chosen, _ = choose_operating_point(points, target_speedup=target_speedup)
    return Reselection(points, chosen, calibration.threshold, target_speedup)


def apply_reselection(calibration: Calibration, reselection: Reselection) -> Calibration:
    """The file with the chosen threshold (its rule's too) and the runs recorded.

    Raises:
        CalibrationError: no threshold reached the target speed-up (nothing is changed).
    """
    chosen = reselection.chosen
    if chosen is None or chosen.threshold is None:
        best = max((p.speedup for p in reselection.points), default=0.0)
        raise CalibrationError(
            f"no threshold reached {reselection.target_speedup:g}x over the LRM alone (the "
            f"fastest ran at {best:.2f}x); try higher thresholds or a lower --target-speedup"
        )
    threshold = chosen.threshold
    rule = None if calibration.rule is None else replace(calibration.rule, threshold=threshold)
    note = (
        f"; operating point re-selected by runs ({len(reselection.points)} thresholds, "
        f"{chosen.n} problems): score >= {threshold:.3f} (was {reselection.previous:.3f})"
    )
    return replace(
        calibration,
        threshold=threshold,
        rule=rule,
        notes=calibration.notes + note,
        replay={**calibration.replay, "reselected": reselection.record()},
    )
