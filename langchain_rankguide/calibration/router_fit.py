"""Fit router v2 on replay data: benefit labels, context features, grouped cross-validation.

Each variant is a logistic regression of a step label on z-scored features, fitted with
cross-validation grouped by problem (a problem's steps are never split between the fit and its
check); the out-of-fold scores give its AUROC and the thresholds its candidate rules try. The
chain of variants is the ablation ``rankguide bench --ablation`` runs
(:mod:`~langchain_rankguide.calibration.select` chooses each one's rule):

============  ==========================  ==========  =======================================
variant       features                    labels      rule
============  ==========================  ==========  =======================================
``paper``     rank + first-token entropy  failing     one step at a time, target rate
``benefit``   rank + first-token entropy  benefit     one step at a time, chosen by runs
``context``   + token-entropy statistics  benefit     one step at a time, chosen by runs
              and the step's context
``risk``      as ``context``              benefit     + running risk, chosen by runs
``rollback``  as ``context``              benefit     + one rollback, chosen by runs
``takeover``  as ``context``              benefit     the LRM writes the rest, replayed
============  ==========================  ==========  =======================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from langchain_rankguide.calibration.fit import calibration_z, fit_logistic, quantile_threshold
from langchain_rankguide.calibration.measure import auroc
from langchain_rankguide.calibration.operating import (
    OperatingPoint,
    candidate_rules,
    choose_operating_point,
    replay_rule,
)
from langchain_rankguide.calibration.replay import ReplayProblem, ReplayStep
from langchain_rankguide.schemas import EscalationRule, ScoreModel, SignalStats

FIRST_TOKEN = "entropy.first_token"
STEP_FEATURES = (
    "entropy.mean",
    "entropy.max",
    "entropy.q50",
    "entropy.q90",
    "logprob.mean",
    "prob.min",
    "step.tokens",
)
CONTEXT_FEATURES = (
    "reflection.cue",
    "reflection.streak",
    "context.position",
    "context.after_reflection",
    "context.answer",
)


@dataclass(frozen=True)
class VariantSpec:
    """One router variant to fit: its features, labels and what its rule may use.

    ``rule``: ``"paper"`` (one step at a time at the target escalation rate, no selection),
    ``"takeover"`` (replayed exactly on the replay data) or ``"step"`` (one step at a time,
    thresholds chosen by running candidates).
    """

    name: str
    features: tuple[str, ...]
    labels: str
    rule: str = "step"
    risk: bool = False
    rollback: bool = False


def ablation_chain(rank_signal: str | None) -> list[VariantSpec]:
    """The variants, each adding one thing to the one before (see the module docstring)."""
    paper = tuple(n for n in (rank_signal, FIRST_TOKEN) if n is not None)
    full = (*paper, *STEP_FEATURES, *CONTEXT_FEATURES)
    return [
        VariantSpec("paper", paper, "failing", rule="paper"),
        VariantSpec("benefit", paper, "benefit"),
        VariantSpec("context", full, "benefit"),
        VariantSpec("risk", full, "benefit", risk=True),
        VariantSpec("rollback", full, "benefit", risk=True, rollback=True),
        VariantSpec("takeover", full, "benefit", rule="takeover", risk=True, rollback=True),
    ]


@dataclass
class FittedScores:
    """A variant's fitted model: weights, bias, cross-validated AUROC, out-of-fold scores."""

    spec: VariantSpec
    names: tuple[str, ...]
    weights: dict[str, float]
    bias: float
    cv_auroc: float | None
    oof: list[list[float]]
    """Per problem, per step: scores from a model fitted without that problem's fold."""

    def rate_threshold(self, rate: float) -> float:
        """The out-of-fold score above which a fraction ``rate`` of the steps lies."""
        return quantile_threshold([s for row in self.oof for s in row], rate)

    def model(self, rule: EscalationRule | None, threshold: float) -> ScoreModel:
        """The stored variant with this rule."""
        area = "-" if self.cv_auroc is None else f"{self.cv_auroc:.3f}"
        notes = (
            f"variant {self.spec.name}: {self.spec.labels} labels, {len(self.names)} features, "
            f"CV AUROC {area}"
        )
        return ScoreModel(self.weights, self.bias, threshold, rule, notes)


def step_label(step: ReplayStep, labels: str) -> bool:
    """``failing``: the SRM's step is wrong; ``benefit``: wrong, and the LRM's step is right."""
    return step.benefit if labels == "benefit" else step.failing


def feature_row(
    step: ReplayStep, names: Sequence[str], stats: dict[str, SignalStats]
) -> list[float]:
    """z-scored features of a step; an unmeasured one is neutral (z = 0), as the router reads it."""
    row = []
    for name in names:
        value = step.signals.get(name)
        row.append(0.0 if value is None else calibration_z(stats[name], value))
    return row


def fit_scores(
    replays: Sequence[ReplayProblem],
    spec: VariantSpec,
    stats: dict[str, SignalStats],
    *,
    folds: int = 5,
) -> FittedScores:
    """Fit a variant's logistic model with grouped cross-validation (folds by problem)."""
    names = tuple(n for n in spec.features if n in stats)
    oof = _out_of_fold_scores(replays, names, spec.labels, stats, folds)
    labels = [step_label(s, spec.labels) for p in replays for s in p.steps]
    cv_auroc = auroc([s for row in oof for s in row], labels)
    weights, bias = _fit(replays, names, spec.labels, stats)
    return FittedScores(spec, names, weights, bias, cv_auroc, oof)


def replay_takeover(
    replays: Sequence[ReplayProblem], fitted: FittedScores, *, target_speedup: float
) -> tuple[ScoreModel, OperatingPoint | None, list[OperatingPoint]]:
    """Choose a takeover variant's rule by exact replay of its out-of-fold scores."""
    spec = fitted.spec
    rules = candidate_rules(fitted.oof, risk=spec.risk, rollback=spec.rollback)
    points = [replay_rule(replays, fitted.oof, rule) for rule in rules]
    chosen, curve = choose_operating_point(points, target_speedup=target_speedup)
    if chosen is None and curve:  # nothing reaches the target: the fastest point
        chosen = curve[0]
    rule = chosen.rule if chosen is not None else None
    threshold = rule.threshold if rule is not None else 0.0
    return fitted.model(rule, threshold), chosen, curve


def _fit(
    replays: Sequence[ReplayProblem],
    names: Sequence[str],
    labels: str,
    stats: dict[str, SignalStats],
) -> tuple[dict[str, float], float]:
    steps = [s for p in replays for s in p.steps]
    x = torch.tensor([feature_row(s, names, stats) for s in steps], dtype=torch.float64)
    y = torch.tensor([float(step_label(s, labels)) for s in steps], dtype=torch.float64)
    if not steps or not 0 < float(y.sum()) < len(steps):
        return {n: 1.0 for n in names}, 0.0
    w = fit_logistic(x, y, l2=1e-2)
    return {n: float(w[i]) for i, n in enumerate(names)}, float(w[-1])


def _out_of_fold_scores(
    replays: Sequence[ReplayProblem],
    names: Sequence[str],
    labels: str,
    stats: dict[str, SignalStats],
    folds: int,
) -> list[list[float]]:
    """Each problem's step scores from a model fitted without that problem's fold."""
    scores: list[list[float]] = [[] for _ in replays]
    for fold in range(folds):
        train = [p for i, p in enumerate(replays) if i % folds != fold]
        weights, bias = _fit(train, names, labels, stats)
        for i, problem in enumerate(replays):
            if i % folds == fold:
                scores[i] = [_score(s, names, weights, bias, stats) for s in problem.steps]
    return scores


def _score(
    step: ReplayStep,
    names: Sequence[str],
    weights: dict[str, float],
    bias: float,
    stats: dict[str, SignalStats],
) -> float:
    row = feature_row(step, names, stats)
    return bias + sum(weights[n] * z for n, z in zip(names, row, strict=True))
