"""Choose router v2 by running it: the ablation chain, each stage's operating point measured.

Each variant of :func:`~langchain_rankguide.calibration.router_fit.ablation_chain` is fitted on
the replay data, then its candidate rules run on separate selection problems
(:mod:`~langchain_rankguide.calibration.candidates`), and the most accurate one whose speed-up
over the LRM alone reaches the target is kept. A stage starts from the rule the stage before
chose, so the chain reads as an ablation: what the benefit labels, the context features, the
running risk and the rollback each add. The takeover variant is chosen by exact replay instead
(:mod:`~langchain_rankguide.calibration.operating`); the ``paper`` variant keeps the target
escalation rate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from langchain_rankguide.calibration.candidates import Candidate, run_candidates
from langchain_rankguide.calibration.operating import OperatingPoint, choose_operating_point
from langchain_rankguide.calibration.router_fit import (
    FittedScores,
    VariantSpec,
    ablation_chain,
    fit_scores,
    replay_takeover,
)
from langchain_rankguide.schemas import Calibration, EscalationRule, ScoreModel, SignalStats

if TYPE_CHECKING:
    from langchain_rankguide.calibration.replay import ReplayPipeline, ReplayProblem
    from langchain_rankguide.tasks import BenchProblem, Task

STEP_RATES = (0.15, 0.175, 0.2, 0.225, 0.25, 0.275, 0.3)
"""Escalation rates (of the out-of-fold scores) whose thresholds are tried per stage."""
RISK_THRESHOLDS = (0.3, 0.5)
"""Running-risk thresholds tried; a score is a logit of a rare label (about one step in ten),
so a run's risk rarely climbs past one half."""
ROLLBACK_MARGINS = (0.1, 0.2)
"""A rollback withdraws an accepted SRM step that scored just under the step threshold: the
thresholds tried lie at the step rule's escalation rate plus 10 and 20 points (a previous step
at or above the step threshold was flagged itself and never stands to be withdrawn)."""
MAIN_VARIANT = "rollback"
"""The chain's last run-selected stage: the shipped ``rankguide`` router."""


@dataclass
class StageResult:
    """One variant: its stored model, its cross-validated AUROC and the points it chose from."""

    name: str
    model: ScoreModel
    cv_auroc: float | None
    chosen: OperatingPoint | None
    tried: list[OperatingPoint] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-native summary for the calibration file's replay record and the report."""
        return {
            "cv_auroc": self.cv_auroc,
            "chosen": None if self.chosen is None else self.chosen.to_dict(),
            "tried": [p.to_dict() for p in self.tried],
        }


@dataclass
class Selection:
    """Everything the chain chose, and how."""

    stages: list[StageResult]
    target_speedup: float
    n_fit: int
    n_select: int

    def variants(self) -> dict[str, ScoreModel]:
        """The stored variants by name."""
        return {s.name: s.model for s in self.stages}

    def record(self) -> dict[str, Any]:
        """The calibration file's ``replay`` record."""
        return {
            "target_speedup": self.target_speedup,
            "fit_problems": self.n_fit,
            "selection_problems": self.n_select,
            "main": MAIN_VARIANT,
            "stages": {s.name: s.to_dict() for s in self.stages},
        }


def select_router(
    pipeline: ReplayPipeline,
    task: Task,
    replays: Sequence[ReplayProblem],
    selection: Sequence[BenchProblem],
    base: Calibration,
    rank_signal: str | None,
    *,
    target_speedup: float = 2.0,
    target_rate: float = 0.25,
    progress: Callable[[str, int, int], None] | None = None,
) -> Selection:
    """Fit and choose every variant of the chain; see the module docstring.

    Args:
        pipeline: runs the candidates (its calibration is overridden while they run).
        task: judges the selection problems.
        replays: the replay data the variants are fitted on.
        selection: problems the candidates run on (disjoint from ``replays``).
        base: the fitted calibration (signal statistics, models) the variants join.
        rank_signal: the rank signal of the paper's combination.
        target_speedup: the speed-up over the LRM alone a chosen point must reach.
        target_rate: the ``paper`` variant's escalation rate.
        progress: called with (stage, problems done, problems in total).
    """
    runner = _StageRunner(pipeline, task, selection, base, target_speedup, progress)
    stages: list[StageResult] = []
    previous: StageResult | None = None
    for spec in ablation_chain(rank_signal):
        fitted = fit_scores(replays, spec, base.signals)
        if spec.rule == "paper":
            model = fitted.model(None, fitted.rate_threshold(target_rate))
            stage = StageResult(spec.name, model, fitted.cv_auroc, None)
        elif spec.rule == "takeover":
            model, chosen, curve = replay_takeover(replays, fitted, target_speedup=target_speedup)
            stage = StageResult(spec.name, model, fitted.cv_auroc, chosen, curve)
        else:
            stage = runner.run_stage(spec, fitted, previous)
            previous = stage
        stages.append(stage)
    return Selection(stages, target_speedup, len(replays), len(selection))


class _StageRunner:
    """Runs a stage's candidate rules on the selection problems and keeps the best."""

    def __init__(
        self,
        pipeline: ReplayPipeline,
        task: Task,
        problems: Sequence[BenchProblem],
        base: Calibration,
        target_speedup: float,
        progress: Callable[[str, int, int], None] | None,
    ) -> None:
        self.pipeline, self.task, self.problems = pipeline, task, problems
        self.base, self.target_speedup, self.progress = base, target_speedup, progress
        self.lrm_latency_s: float | None = None

    def run_stage(
        self, spec: VariantSpec, fitted: FittedScores, previous: StageResult | None
    ) -> StageResult:
        rules = _stage_rules(spec, fitted, previous)
        models = {f"{spec.name}#{i}": fitted.model(r, r.threshold) for i, r in enumerate(rules)}
        points = self._run(spec.name, models)
        inherited = [] if previous is None or previous.chosen is None else [previous.chosen]
        tried = [*points, *inherited]
        chosen, _ = choose_operating_point(tried, target_speedup=self.target_speedup)
        if chosen is None:  # nothing reaches the target: the fastest candidate
            chosen = max(tried, key=lambda p: p.speedup)
        rule = chosen.rule or EscalationRule(chosen.threshold or 0.0)
        model = fitted.model(rule, rule.threshold)
        return StageResult(spec.name, model, fitted.cv_auroc, chosen, tried)

    def _run(self, stage: str, models: dict[str, ScoreModel]) -> list[OperatingPoint]:
        trial = replace(self.base, variants=dict(models))
        candidates = [Candidate(name, name, None) for name in models]
        tick = None
        if self.progress is not None:
            report = self.progress
            tick = lambda done, total: report(stage, done, total)  # noqa: E731
        points = run_candidates(
            self.pipeline,
            self.task,
            self.problems,
            trial,
            candidates,
            lrm_latency_s=self.lrm_latency_s,
            progress=tick,
        )
        self.lrm_latency_s = points[0].lrm_latency_s if points else self.lrm_latency_s
        return [
            replace(p, label=f"{stage}: {_describe(m.rule)}", rule=m.rule)
            for p, m in zip(points, models.values(), strict=True)
        ]


def _stage_rules(
    spec: VariantSpec, fitted: FittedScores, previous: StageResult | None
) -> list[EscalationRule]:
    """The rules a stage tries: thresholds at rates, or the stage before's rule plus one knob."""
    base = previous.model.rule if previous is not None else None
    if spec.rollback and base is not None:
        rate = _chosen_rate(previous)
        return [
            replace(base, rollback_threshold=fitted.rate_threshold(min(1.0, rate + margin)))
            for margin in ROLLBACK_MARGINS
        ]
    if spec.risk and base is not None:
        lower = fitted.rate_threshold(_next_lower_rate(previous))
        return [
            EscalationRule(threshold, risk_threshold=risk)
            for threshold in (base.threshold, lower)
            for risk in RISK_THRESHOLDS
        ]
    return [EscalationRule(fitted.rate_threshold(rate)) for rate in STEP_RATES]


def _chosen_rate(previous: StageResult | None) -> float:
    """The step rate of the threshold the stage before chose (its closest tried rate)."""
    if previous is None or previous.chosen is None:
        return STEP_RATES[2]
    chosen = previous.chosen.escalation_rate
    return min(STEP_RATES, key=lambda r: abs(r - chosen))


def _next_lower_rate(previous: StageResult | None) -> float:
    """A step rate below the one the stage before chose (the running risk flags the rest)."""
    rate = _chosen_rate(previous)
    lower = [r for r in STEP_RATES if r < rate]
    return lower[-1] if lower else STEP_RATES[0]


def _describe(rule: EscalationRule | None) -> str:
    if rule is None:
        return "-"
    parts = [f"score >= {rule.threshold:.3f}"]
    if rule.risk_threshold is not None:
        parts.append(f"risk >= {rule.risk_threshold:g}")
    if rule.rollback_threshold is not None:
        parts.append(f"rollback >= {rule.rollback_threshold:.3f}")
    if rule.takeover:
        parts.append("takeover")
    return ", ".join(parts)


def stats_of(base: Calibration) -> dict[str, SignalStats]:
    """The calibration's signal statistics (the features' z-scoring)."""
    return base.signals
