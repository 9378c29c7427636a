"""Benchmark statistics: re-exported from :mod:`langchain_rankguide.stats`, where they live."""

from langchain_rankguide.stats import (
    CI_LEVEL,
    DEFAULT_RESAMPLES,
    PairedResult,
    bootstrap_ci,
    curve_at_rate,
    interpolate,
    paired_bootstrap,
    paired_difference,
    paired_ratio,
    pareto_front,
    resample_indices,
    wilson_interval,
)

__all__ = [
    "CI_LEVEL",
    "DEFAULT_RESAMPLES",
    "PairedResult",
    "bootstrap_ci",
    "curve_at_rate",
    "interpolate",
    "paired_bootstrap",
    "paired_difference",
    "paired_ratio",
    "pareto_front",
    "resample_indices",
    "wilson_interval",
]
