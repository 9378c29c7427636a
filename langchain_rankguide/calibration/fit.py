"""Fit the RankGuide router from labelled steps: the combination, thresholds and cut-offs.

The ``rankguide`` combination is a logistic regression on z-scored signals; its threshold is
set for a target escalation rate, and the baseline policies' thresholds are fitted at the same
rate and at each rate of a benchmark sweep (``policy_thresholds`` keys ``"entropy@0.2"``...).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from langchain_rankguide.calibration.measure import (
    LabelledStep,
    SignalReport,
    auroc,
    signal_reports,
    signal_values,
)
from langchain_rankguide.schemas import SIGNALS, Calibration, SignalStats

ENTROPY = "entropy.first_token"
ENTROPY_TOP20 = "entropy.first_token_top20"
RANK_CANDIDATES = tuple(n for n in SIGNALS if n.startswith("rank."))
SWEEP_RATES = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7)
"""Escalation rates whose thresholds are stored for benchmark sweeps (``"entropy@0.2"``)."""


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
    policy_aurocs: dict[str, float | None] = field(default_factory=dict)
    """In-sample AUROC of each policy's score (``rankguide`` combination, ``entropy``,
    ``rank``) on the calibration steps: the ``rank`` ablation at a glance."""
    labels: str = "verifier"


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
    extra_signals: Sequence[str] = (),
) -> CalibrationReport:
    """Fit the RankGuide router and the policies' thresholds from labelled SRM steps.

    The rank signal combined with first-token entropy is ``rank_signal`` if given, else the
    rank signal with the best AUROC *within groups of equal step length* (so a length proxy
    is not chosen for being long). ``extra_signals`` (registry names) join the combination,
    e.g. ``("entropy.mean",)``.

    Raises:
        ValueError: no steps, or an extra signal that is not in the registry.
    """
    unknown = [n for n in extra_signals if n not in SIGNALS]
    if unknown:
        raise ValueError(f"unknown signals {unknown}; see langchain_rankguide.schemas.SIGNALS")
    if not steps:
        raise ValueError("no labelled steps to calibrate on")
    names = [n for n in SIGNALS if any(s.signals.get(n) is not None for s in steps)]
    reports = signal_reports(steps, names)
    by_name = {r.name: r for r in reports}
    notes: list[str] = []
    if rank_signal is None:
        rank_signal = _best_rank_signal(reports)
    wanted = (rank_signal, ENTROPY, *extra_signals)
    combined = list(dict.fromkeys(n for n in wanted if n is not None and n in by_name))
    missing = [n for n in extra_signals if n not in by_name]
    if missing:
        notes.append(f"never measured on these steps, left out of the combination: {missing}")
    stats = {
        r.name: SignalStats(mean=r.mean, std=r.std or 1.0, direction=r.direction, auroc=r.auroc)
        for r in reports
    }
    rows = [s for s in steps if all(s.signals.get(n) is not None for n in combined)]
    weights, bias = _fit_weights(rows, combined, stats, notes)
    calibration = Calibration(
        models=models, signals=stats, weights=weights, threshold=0.0, bias=bias
    )
    scores = [s for s in (calibration.score(r.signals) for r in rows) if s is not None]
    calibration.threshold = quantile_threshold(scores, target_rate)
    calibration.target_escalation_rate = target_rate
    calibration.reflection_streak = reflection_streak
    _fit_failure_thresholds(calibration, steps)
    _fit_policy_thresholds(calibration, steps, rank_signal, scores, target_rate)
    policy_aurocs = {
        "rankguide": auroc(scores, [r.failing for r in rows]) if scores else None,
        # As the policies use them: entropy escalates high values, rank its oriented z-score.
        "entropy": _auroc_of(steps, ENTROPY_TOP20, oriented=False),
        "rank": _auroc_of(steps, rank_signal) if rank_signal else None,
    }
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
        policy_aurocs=policy_aurocs,
    )


def _best_rank_signal(reports: Sequence[SignalReport]) -> str | None:
    """The rank signal with the best AUROC within equal step length (not a length proxy)."""
    candidates = [
        r for r in reports if r.name in RANK_CANDIDATES and r.auroc_within_length is not None
    ]
    candidates.sort(key=lambda r: r.auroc_within_length or 0.0, reverse=True)
    return candidates[0].name if candidates else None


def _fit_weights(
    rows: Sequence[LabelledStep],
    combined: Sequence[str],
    stats: dict[str, SignalStats],
    notes: list[str],
) -> tuple[dict[str, float], float]:
    """Logistic weights and bias of the combination; equal weights when one class is missing."""
    features = torch.tensor(
        [[calibration_z(stats[n], s.signals[n]) for n in combined] for s in rows],
        dtype=torch.float64,
    )
    labels = torch.tensor([float(s.failing) for s in rows], dtype=torch.float64)
    if rows and 0 < labels.sum() < len(rows):
        w = fit_logistic(features, labels)
        return {n: float(w[i]) for i, n in enumerate(combined)}, float(w[-1])
    notes.append("labels were all one class: equal weights used")
    return {n: 1.0 for n in combined}, 0.0


def _fit_failure_thresholds(calibration: Calibration, steps: Sequence[LabelledStep]) -> None:
    """Entropy quartiles that separate overconfident and uncertain steps (failure modes)."""
    entropies = sorted(signal_values(steps, ENTROPY))
    if entropies:
        calibration.failure_thresholds = {
            "overconfidence_entropy": entropies[int(0.25 * (len(entropies) - 1))],
            "uncertainty_entropy": entropies[int(0.75 * (len(entropies) - 1))],
        }


def _fit_policy_thresholds(
    calibration: Calibration,
    steps: Sequence[LabelledStep],
    rank_signal: str | None,
    scores: Sequence[float],
    target_rate: float,
) -> None:
    """The baseline policies' thresholds at the target rate and at every sweep rate."""
    top20 = signal_values(steps, ENTROPY_TOP20)
    zs: list[float] = []
    if rank_signal is not None and rank_signal in calibration.signals:
        zs = [calibration.zscore(rank_signal, v) for v in signal_values(steps, rank_signal)]
    # The plain keys are the policies' defaults; "@rate" keys serve benchmark sweeps.
    for key, rate in [("", target_rate), *((f"@{r:g}", r) for r in SWEEP_RATES)]:
        if top20:
            calibration.policy_thresholds[f"entropy{key}"] = quantile_threshold(top20, rate)
        if zs:
            calibration.policy_thresholds[f"rank{key}"] = quantile_threshold(zs, rate)
        if key and scores:
            calibration.policy_thresholds[f"rankguide{key}"] = quantile_threshold(scores, rate)


def _auroc_of(steps: Sequence[LabelledStep], name: str, oriented: bool = True) -> float | None:
    """AUROC of one signal for failing; ``oriented`` takes the better of the two directions."""
    rows = [s for s in steps if s.signals.get(name) is not None]
    area = auroc([float(s.signals[name] or 0.0) for s in rows], [s.failing for s in rows])
    if area is None or not oriented:
        return area
    return max(area, 1 - area)
