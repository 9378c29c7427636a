"""Plot each signal's distribution on good and failing steps (matplotlib, optional)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_rankguide.calibration.fit import ENTROPY, ENTROPY_TOP20
from langchain_rankguide.calibration.measure import LabelledStep, SignalReport


def plot_distributions(
    steps: Sequence[LabelledStep],
    reports: Sequence[SignalReport],
    path: str | Path,
    *,
    max_signals: int = 12,
    always: Sequence[str] = (ENTROPY, ENTROPY_TOP20),
) -> bool:
    """Histogram each signal on good and failing steps; ``False`` when matplotlib is missing.

    The signals shown are those in ``always`` plus the best by AUROC, up to ``max_signals``;
    each panel's title gives the AUROC overall and within equal step length.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    by_name = {r.name: r for r in reports}
    ranked = sorted(reports, key=lambda r: -(r.auroc or 0.0))
    names = [n for n in always if n in by_name]
    names += [r.name for r in ranked if r.name not in names]
    names = names[:max_signals]
    if not names:
        return False
    cols = 4
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for axis, name in zip(axes.flat, names, strict=False):
        _draw_panel(axis, steps, by_name[name])
    for axis in list(axes.flat)[len(names) :]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _draw_panel(axis: Any, steps: Sequence[LabelledStep], report: SignalReport) -> None:
    """One signal's histograms on good and failing steps, titled with its AUROCs."""
    name = report.name
    good = [
        float(s.signals[name] or 0.0)
        for s in steps
        if s.signals.get(name) is not None and not s.failing
    ]
    bad = [
        float(s.signals[name] or 0.0)
        for s in steps
        if s.signals.get(name) is not None and s.failing
    ]
    values = good + bad
    low, high = min(values), max(values)
    bins = 30 if high > low else 1
    span = (low, high) if high > low else (low - 0.5, high + 0.5)
    for values_of, label in ((good, "good"), (bad, "failing")):
        if values_of:  # a density of nothing divides by zero
            axis.hist(values_of, bins=bins, range=span, density=True, alpha=0.55, label=label)

    def show(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    axis.set_title(
        f"{name}\nAUROC {show(report.auroc)}; within length {show(report.auroc_within_length)}, "
        f"position {show(report.auroc_within_position)}",
        fontsize=8,
    )
    axis.tick_params(labelsize=7)
