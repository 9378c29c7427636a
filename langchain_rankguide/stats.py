"""Shared statistics: binomial and bootstrap intervals, paired comparisons, sweep curves.

Used by the benchmarks (:mod:`langchain_rankguide.bench`) and the demo evaluation; it depends on
neither.

Everything takes plain sequences and returns plain floats, so results serialise as JSON as is.
Bootstraps resample *problems* (the unit every policy saw), with a seeded generator so a
report is reproducible; paired bootstraps draw the same problems for both sides of a
comparison, which is what makes a small difference between policies detectable.

Example:
    >>> lo, hi = wilson_interval(80, 100)
    >>> round(lo, 3), round(hi, 3)
    (0.711, 0.867)
    >>> interpolate([(0.1, 0.5), (0.3, 0.7)], 0.2)
    0.6
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 2000
CI_LEVEL = 0.95


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% for the default ``z``).

    Args:
        successes: number of successes.
        n: number of trials; ``0`` gives the uninformative ``(0, 1)``.
        z: normal quantile of the two-sided level.

    Returns:
        ``(low, high)`` clipped to ``[0, 1]``.
    """
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (math.nan, math.nan)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return (float(lo), float(hi))


def resample_indices(n: int, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """Bootstrap index draws, shape ``(resamples, n)``; the same seed gives the same draws."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(resamples, n))


def bootstrap_ci(
    values: Sequence[float],
    statistic: Callable[[np.ndarray], float] = np.mean,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = CI_LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over ``values``.

    Args:
        values: one value per problem.
        statistic: maps a resampled array to a number (the mean by default).
        resamples: number of bootstrap draws.
        level: two-sided coverage.
        seed: generator seed.

    Returns:
        ``(low, high)``; ``(nan, nan)`` for no values.
    """
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return (math.nan, math.nan)
    draws = resample_indices(data.size, resamples, seed)
    stats = np.array([statistic(data[row]) for row in draws])
    return _percentiles(stats, level)


@dataclass(frozen=True)
class PairedResult:
    """A paired comparison: the observed difference and its bootstrap interval.

    Attributes:
        estimate: the statistic on the observed data.
        ci95: percentile interval of the bootstrap distribution.
        p_below_zero: share of bootstrap draws below zero (a one-sided bootstrap p-value for
            "the difference is positive").
        n: number of paired problems.
    """

    estimate: float
    ci95: tuple[float, float]
    p_below_zero: float
    n: int

    def to_dict(self) -> dict[str, object]:
        """JSON-native form (NaN becomes ``None``)."""

        def clean(x: float) -> float | None:
            return x if math.isfinite(x) else None

        return {
            "estimate": clean(self.estimate),
            "ci95": [clean(self.ci95[0]), clean(self.ci95[1])],
            "p_below_zero": clean(self.p_below_zero),
            "n": self.n,
        }


def paired_bootstrap(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = CI_LEVEL,
    seed: int = 0,
) -> PairedResult:
    """Bootstrap a statistic of paired per-problem data.

    ``statistic(indices)`` computes the compared quantity from the problems at ``indices`` (with
    repeats), reading whatever aligned arrays it closes over, so any comparison -- a difference
    of accuracies, a ratio of mean latencies, a difference at an interpolated escalation rate --
    is resampled with the same problems on both sides.

    Args:
        statistic: maps an index array to a number (may be ``nan`` when undefined).
        n: number of paired problems.
        resamples: number of bootstrap draws.
        level: two-sided coverage.
        seed: generator seed.

    Returns:
        The estimate on all problems and the interval.
    """
    if n <= 0:
        return PairedResult(math.nan, (math.nan, math.nan), math.nan, 0)
    estimate = float(statistic(np.arange(n)))
    draws = np.array([statistic(row) for row in resample_indices(n, resamples, seed)])
    finite = draws[np.isfinite(draws)]
    below = float((finite < 0).mean()) if finite.size else math.nan
    return PairedResult(estimate, _percentiles(draws, level), below, n)


def _paired_arrays(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.size} vs {y.size}")
    return x, y


def paired_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> PairedResult:
    """Paired bootstrap of ``mean(a) - mean(b)`` (``a[i]`` and ``b[i]`` are the same problem)."""
    x, y = _paired_arrays(a, b)
    return paired_bootstrap(
        lambda idx: float(x[idx].mean() - y[idx].mean()), x.size, resamples=resamples, seed=seed
    )


def paired_ratio(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> PairedResult:
    """Paired bootstrap of ``mean(a) / mean(b)`` (e.g. the speed-up of ``b`` over ``a``)."""
    x, y = _paired_arrays(a, b)

    def ratio(idx: np.ndarray) -> float:
        denominator = y[idx].mean()
        return float(x[idx].mean() / denominator) if denominator > 0 else math.nan

    return paired_bootstrap(ratio, x.size, resamples=resamples, seed=seed)


def interpolate(points: Sequence[tuple[float, float]], x: float) -> float | None:
    """Linear interpolation of ``y`` at ``x`` along a curve of ``(x, y)`` points.

    Points are sorted by ``x``; points that share an ``x`` are averaged. Outside the curve's
    range the answer is ``None``: extrapolating a trade-off curve would claim what was not
    measured.

    Args:
        points: the curve (e.g. ``(escalation_rate, accuracy)`` per threshold of a sweep).
        x: where to read it.

    Returns:
        The interpolated ``y``, or ``None`` outside ``[min x, max x]`` or for no points.
    """
    merged: dict[float, list[float]] = {}
    for px, py in points:
        if math.isfinite(px) and math.isfinite(py):
            merged.setdefault(float(px), []).append(float(py))
    if not merged:
        return None
    xs = sorted(merged)
    ys = [sum(merged[v]) / len(merged[v]) for v in xs]
    if x < xs[0] - 1e-12 or x > xs[-1] + 1e-12:
        return None
    if len(xs) == 1:
        return ys[0]
    return float(np.interp(x, xs, ys))


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated in (lower cost ``x``, higher value ``y``).

    Args:
        points: ``(cost, value)`` pairs, e.g. ``(mean latency, accuracy)``.

    Returns:
        Indices of the non-dominated points, by increasing cost.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best = -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def curve_at_rate(
    correct: Sequence[np.ndarray],
    escalated: Sequence[np.ndarray],
    steps: Sequence[np.ndarray],
    rate: float,
    idx: np.ndarray,
) -> float:
    """Accuracy of a sweep curve at escalation rate ``rate`` on the problems ``idx``.

    Each sweep point contributes ``(pooled escalation rate, accuracy)`` computed on the same
    resampled problems; the accuracy is read off the curve by linear interpolation.

    Args:
        correct: per sweep point, per problem 0/1 correctness.
        escalated: per sweep point, per problem escalated step counts.
        steps: per sweep point, per problem step counts.
        rate: the escalation rate to read the curve at.
        idx: the (resampled) problem indices.

    Returns:
        The interpolated accuracy, ``nan`` where the curve does not reach ``rate``.
    """
    curve = []
    for c, e, s in zip(correct, escalated, steps, strict=True):
        total = s[idx].sum()
        if total > 0:
            curve.append((float(e[idx].sum() / total), float(c[idx].mean())))
    value = interpolate(curve, rate)
    return math.nan if value is None else value
