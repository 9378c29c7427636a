"""Operating points chosen by replay: what a takeover rule scores and costs on replay data.

A takeover rule flags a step from its score (and, optionally, the problem's running risk); the
flagged draft is discarded and the LRM writes that step and every later one -- or, on a
rollback, withdraws the previous SRM step too and writes from there. On replay data
(:mod:`~langchain_rankguide.calibration.replay`) the outcome of such a run follows exactly from
the first flag, so every candidate rule is scored on the calibration problems without running a
model, and :func:`choose_operating_point` keeps the most accurate rule at a target speed-up (rules
that cannot be replayed -- one step at a time -- are run instead:
:mod:`~langchain_rankguide.calibration.candidates`).

Example:
    >>> from langchain_rankguide.calibration.replay import ReplayProblem, ReplayStep
    >>> step = ReplayStep(0, {}, 3, False, "x", True, 0.1, True, True, 0.5)
    >>> problem = ReplayProblem("p", srm_correct=False, steps=[step])
    >>> replay_rule([problem], [[2.0]], EscalationRule(threshold=1.0, takeover=True)).accuracy
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from langchain_rankguide.calibration.replay import ReplayProblem
from langchain_rankguide.routing import running_risk
from langchain_rankguide.schemas import EscalationRule


@dataclass(frozen=True)
class ReplayOutcome:
    """One problem under one rule."""

    correct: bool
    latency_s: float
    lrm_steps: int
    steps: int
    rolled_back: bool


@dataclass(frozen=True)
class OperatingPoint:
    """A rule's accuracy and cost on calibration problems, replayed or run.

    Attributes:
        label: what was run (``takeover@0.31``, ``step@-0.2``).
        rule: the escalation rule (``None``: one step at a time at ``threshold``).
        threshold: the step threshold.
        measured: ``True`` when the policy was run, ``False`` when replayed from replay data.
    """

    label: str
    n: int
    accuracy: float
    latency_s: float
    lrm_latency_s: float
    escalation_rate: float
    rollback_rate: float = 0.0
    rule: EscalationRule | None = None
    threshold: float | None = None
    measured: bool = False

    @property
    def speedup(self) -> float:
        """Mean latency of the LRM alone over this rule's."""
        return self.lrm_latency_s / self.latency_s if self.latency_s > 0 else math.inf

    def to_dict(self) -> dict[str, object]:
        """A JSON-native dict (the rule flattened in)."""
        data = asdict(self)
        data["speedup"] = self.speedup
        return data


def replay_problem(
    problem: ReplayProblem, scores: Sequence[float], rule: EscalationRule
) -> ReplayOutcome:
    """The run of the takeover ``rule`` on one replayed problem (``scores``: one per SRM step).

    Only takeover rules replay exactly: once the LRM writes a step, it writes every later one,
    so the run is the SRM's own trace up to the flag and the recorded takeover after it.
    """
    steps = problem.steps
    for k in range(len(steps)):
        if not rule.flags(scores[k], running_risk(scores[: k + 1])):
            continue
        start = k
        if k > 0 and rule.rolls_back(scores[k - 1]):
            start = k - 1
        srm_cost = sum(s.srm_latency_s for s in steps[: k + 1])
        taken = steps[start]
        return ReplayOutcome(
            correct=taken.takeover_correct,
            latency_s=srm_cost + taken.takeover_latency_s,
            lrm_steps=len(steps) - start,
            steps=len(steps),
            rolled_back=start < k,
        )
    return ReplayOutcome(problem.srm_correct, problem.srm_latency_s, 0, len(steps), False)


def replay_rule(
    problems: Sequence[ReplayProblem], scores: Sequence[Sequence[float]], rule: EscalationRule
) -> OperatingPoint:
    """Accuracy, latency and escalation rate of ``rule`` over the replayed problems."""
    outcomes = [replay_problem(p, s, rule) for p, s in zip(problems, scores, strict=True)]
    n = max(1, len(outcomes))
    return OperatingPoint(
        label=f"takeover@{rule.threshold:.3g}",
        rule=rule,
        threshold=rule.threshold,
        n=len(outcomes),
        accuracy=sum(o.correct for o in outcomes) / n,
        latency_s=sum(o.latency_s for o in outcomes) / n,
        lrm_latency_s=sum(p.lrm_latency_s for p in problems) / n,
        escalation_rate=sum(o.lrm_steps for o in outcomes) / max(1, sum(o.steps for o in outcomes)),
        rollback_rate=sum(o.rolled_back for o in outcomes) / n,
    )


def candidate_rules(
    scores: Sequence[Sequence[float]],
    *,
    quantiles: int = 40,
    risk: bool = False,
    rollback: bool = False,
) -> list[EscalationRule]:
    """Rules to try: step thresholds at score quantiles, optionally with risk and rollback."""
    flat = sorted(s for row in scores for s in row)
    if not flat:
        return []
    cuts = sorted(
        {flat[min(len(flat) - 1, int(q * len(flat) / quantiles))] for q in range(quantiles)}
    )
    risks: list[float | None] = [None, 0.5, 0.6, 0.7, 0.8, 0.9] if risk else [None]
    rollbacks: list[float | None] = [None, *cuts[::4]] if rollback else [None]
    return [
        EscalationRule(threshold=cut, risk_threshold=r, rollback_threshold=b, takeover=True)
        for cut in cuts
        for r in risks
        for b in rollbacks
    ]


def choose_operating_point(
    points: Sequence[OperatingPoint], *, target_speedup: float = 2.0
) -> tuple[OperatingPoint | None, list[OperatingPoint]]:
    """The most accurate point whose speed-up reaches ``target_speedup``.

    Returns:
        ``(chosen, curve)``: the chosen point (``None`` if none is fast enough) and the
        Pareto front of accuracy against speed-up it was chosen from, fastest first.
    """
    fast = [p for p in points if p.speedup >= target_speedup]
    chosen = max(fast, key=lambda p: (p.accuracy, p.speedup)) if fast else None
    return chosen, pareto_front(points)


def pareto_front(points: Sequence[OperatingPoint]) -> list[OperatingPoint]:
    """Points no other point beats on both accuracy and speed-up, fastest first."""
    front: list[OperatingPoint] = []
    for point in sorted(points, key=lambda p: (-p.speedup, -p.accuracy)):
        if not front or point.accuracy > front[-1].accuracy:
            front.append(point)
    return front
