"""Calibration: measure which signals predict a failing SRM step and fit the RankGuide router.

Runs the SRM alone (through the same graph as every other run, with every signal computed),
labels each step with the task's verifier, and reports per signal its AUROC for predicting a
failing step -- overall and within groups of equal step length, since a raw rank can be a
length proxy. It then fits the ``rankguide`` combination (logistic regression on z-scored
signals), the thresholds for a target escalation rate, the baseline policies' thresholds at
the same rate, and the failure-mode entropy cut-offs, and writes the shared calibration file.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from langchain_rankguide.schemas import SIGNALS, Calibration, SignalStats

ENTROPY = "entropy.first_token"
RANK_CANDIDATES = tuple(n for n in SIGNALS if n.startswith("rank."))


@dataclass
class LabelledStep:
    """One SRM step with its signals and the verifier's verdict."""

    signals: dict[str, float | None]
    failing: bool
    tokens: int


@dataclass
class SignalReport:
    """How well one signal separates failing from good steps."""

    name: str
    n: int
    auroc: float | None
    auroc_within_length: float | None
    direction: int
    mean: float
    std: float


@dataclass
class CalibrationReport:
    """Everything calibration measured, plus the fitted file."""

    n_steps: int
    failing_rate: float
    signals: list[SignalReport]
    calibration: Calibration
    chosen_rank_signal: str | None
    fitted_escalation_rate: float
    notes: list[str] = field(default_factory=list)


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` for ``labels`` (Mann-Whitney, ties count half)."""
    positives = sum(labels)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    positive_rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    return (positive_rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def auroc_within_groups(
    scores: Sequence[float], labels: Sequence[bool], groups: Sequence[int]
) -> float | None:
    """AUROC averaged over groups (e.g. equal step length), weighted by pairs compared."""
    by_group: dict[int, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        by_group[group].append(index)
    total, weight = 0.0, 0
    for members in by_group.values():
        group_labels = [labels[i] for i in members]
        value = auroc([scores[i] for i in members], group_labels)
        if value is None:
            continue
        pairs = sum(group_labels) * (len(group_labels) - sum(group_labels))
        total += value * pairs
        weight += pairs
    return total / weight if weight else None


def _values(steps: Sequence[LabelledStep], name: str) -> list[float]:
    return [float(v) for v in (s.signals.get(name) for s in steps) if v is not None]


def _stats(values: Sequence[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)
    return mean, math.sqrt(var)


def signal_reports(steps: Sequence[LabelledStep], names: Iterable[str]) -> list[SignalReport]:
    """AUROC (overall, within equal lengths), direction, mean and std of each signal."""
    reports = []
    for name in names:
        rows = [s for s in steps if s.signals.get(name) is not None]
        if len(rows) < 2:
            continue
        values = _values(rows, name)
        labels = [s.failing for s in rows]
        mean, std = _stats(values)
        area = auroc(values, labels)
        within = auroc_within_groups(values, labels, [s.tokens for s in rows])
        direction = 1 if area is None or area >= 0.5 else -1
        oriented = None if area is None else max(area, 1 - area)
        oriented_within = None
        if within is not None:
            oriented_within = within if direction == 1 else 1 - within
        reports.append(
            SignalReport(name, len(rows), oriented, oriented_within, direction, mean, std)
        )
    return reports


def calibration_z(stats: SignalStats, value: float | None) -> float:
    """z-score oriented so that + means failing (``value`` must be measured)."""
    assert value is not None
    return stats.direction * (value - stats.mean) / stats.std


def fit_logistic(features: torch.Tensor, labels: torch.Tensor, l2: float = 1e-3) -> torch.Tensor:
    """Fit logistic-regression weights (last entry is the bias) with L-BFGS."""
    x = torch.cat([features, torch.ones(features.shape[0], 1, dtype=features.dtype)], dim=1)
    w = torch.zeros(x.shape[1], dtype=features.dtype, requires_grad=True)
    optimiser = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w, labels)
        loss = loss + l2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return w.detach()


def quantile_threshold(scores: Sequence[float], rate: float) -> float:
    """The score above which a fraction ``rate`` of ``scores`` lies."""
    ordered = sorted(scores)
    if not ordered:
        return math.inf
    if rate <= 0:
        return math.inf
    chosen = max(1, round(rate * len(ordered)))
    return ordered[len(ordered) - min(chosen, len(ordered))]


def fit_calibration(
    steps: Sequence[LabelledStep],
    *,
    models: dict[str, str],
    target_rate: float = 0.25,
    rank_signal: str | None = None,
    reflection_streak: int = 3,
) -> CalibrationReport:
    """Fit the RankGuide router and the policies' thresholds from labelled SRM steps.

    The rank signal combined with first-token entropy is ``rank_signal`` if given, else the
    rank signal with the best AUROC *within groups of equal step length* (so a length proxy
    is not chosen for being long).
    """
    if not steps:
        raise ValueError("no labelled steps to calibrate on")
    names = [n for n in SIGNALS if any(s.signals.get(n) is not None for s in steps)]
    reports = signal_reports(steps, names)
    by_name = {r.name: r for r in reports}
    notes: list[str] = []
    if rank_signal is None:
        candidates = [
            r for r in reports if r.name in RANK_CANDIDATES and r.auroc_within_length is not None
        ]
        candidates.sort(key=lambda r: r.auroc_within_length or 0.0, reverse=True)
        rank_signal = candidates[0].name if candidates else None
    combined = [n for n in (rank_signal, ENTROPY) if n is not None and n in by_name]
    stats = {
        r.name: SignalStats(mean=r.mean, std=r.std or 1.0, direction=r.direction, auroc=r.auroc)
        for r in reports
    }
    rows = [s for s in steps if all(s.signals.get(n) is not None for n in combined)]
    features = torch.tensor(
        [[calibration_z(stats[n], s.signals[n]) for n in combined] for s in rows],
        dtype=torch.float64,
    )
    labels = torch.tensor([float(s.failing) for s in rows], dtype=torch.float64)
    if rows and 0 < labels.sum() < len(rows):
        w = fit_logistic(features, labels)
        weights = {n: float(w[i]) for i, n in enumerate(combined)}
        bias = float(w[-1])
    else:
        weights = {n: 1.0 for n in combined}
        bias = 0.0
        notes.append("labels were all one class: equal weights used")
    calibration = Calibration(
        models=models, signals=stats, weights=weights, threshold=0.0, bias=bias
    )
    scores = [s for s in (calibration.score(r.signals) for r in rows) if s is not None]
    calibration.threshold = quantile_threshold(scores, target_rate)
    calibration.target_escalation_rate = target_rate
    calibration.reflection_streak = reflection_streak
    entropies = sorted(_values(steps, ENTROPY))
    if entropies:
        calibration.failure_thresholds = {
            "overconfidence_entropy": entropies[int(0.25 * (len(entropies) - 1))],
            "uncertainty_entropy": entropies[int(0.75 * (len(entropies) - 1))],
        }
    top20 = _values(steps, "entropy.first_token_top20")
    if top20:
        calibration.policy_thresholds["entropy"] = quantile_threshold(top20, target_rate)
    if rank_signal is not None and rank_signal in stats:
        zs = [calibration.zscore(rank_signal, v) for v in _values(steps, rank_signal)]
        calibration.policy_thresholds["rank"] = quantile_threshold(zs, target_rate)
    calibration.notes = (
        f"fitted on {len(steps)} SRM steps ({sum(s.failing for s in steps)} failing); "
        f"combination {combined}; target escalation rate {target_rate}"
    )
    fitted_rate = sum(1 for s in scores if s >= calibration.threshold) / max(1, len(scores))
    return CalibrationReport(
        n_steps=len(steps),
        failing_rate=sum(s.failing for s in steps) / len(steps),
        signals=reports,
        calibration=calibration,
        chosen_rank_signal=rank_signal,
        fitted_escalation_rate=fitted_rate,
        notes=notes,
    )


def collect_demo_steps(
    pipeline: Any,
    n: int,
    *,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> list[LabelledStep]:
    """Run the SRM alone on ``n`` demo calibration problems and label its steps.

    A step is failing when the verifier judges it wrong; steps of a heavy-revalidation run
    (3+ consecutive reflections or a repeat) are failing too, since they waste the budget.
    """
    from langchain_rankguide.demo.task import make_problems, revalidation_flags, verify_steps
    from langchain_rankguide.graph import build_graph

    graph = build_graph(pipeline)
    steps: list[LabelledStep] = []
    problems = make_problems(n, seed=seed, split="calibration")
    for done, problem in enumerate(problems, 1):
        state = graph.invoke({"question": problem.question}, {"configurable": {"policy": "srm"}})
        records = state["steps"]
        verdict = verify_steps(problem, [r["text"] for r in records])
        heavy = revalidation_flags(verdict.labels)
        for record, label, flag in zip(records, verdict.labels, heavy, strict=False):
            failing = label.correct is False or bool(flag)
            steps.append(LabelledStep(record["signals"], failing, record["tokens"]))
        if progress is not None:
            progress(done, n)
    return steps
