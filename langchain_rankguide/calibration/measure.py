"""How well signals separate failing SRM steps from good ones: AUROC overall and within groups.

A raw rank can be a length proxy, and a cross-step rank grows along the trace, so each signal
is also scored within groups of equal step length and of equal step position.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass
class LabelledStep:
    """One SRM step with its signals and the verifier's verdict (``index``: its step number)."""

    signals: dict[str, float | None]
    failing: bool
    tokens: int
    index: int | None = None


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
    auroc_within_position: float | None = None
    """AUROC within groups of equal step index: a signal that grows along the trace (a
    cross-step rank over the last W openings) can look predictive only because failing steps
    come late."""


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


def signal_values(steps: Sequence[LabelledStep], name: str) -> list[float]:
    """The measured values of one signal over ``steps`` (unmeasured steps left out)."""
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
        values = signal_values(rows, name)
        labels = [s.failing for s in rows]
        mean, std = _stats(values)
        area = auroc(values, labels)
        within = auroc_within_groups(values, labels, [s.tokens for s in rows])
        direction = 1 if area is None or area >= 0.5 else -1
        oriented = None if area is None else max(area, 1 - area)
        oriented_within = None
        if within is not None:
            oriented_within = within if direction == 1 else 1 - within
        by_position = None
        if all(s.index is not None for s in rows):
            positions = [int(s.index or 0) for s in rows]
            at = auroc_within_groups(values, labels, positions)
            by_position = None if at is None else (at if direction == 1 else 1 - at)
        reports.append(
            SignalReport(
                name, len(rows), oriented, oriented_within, direction, mean, std, by_position
            )
        )
    return reports
