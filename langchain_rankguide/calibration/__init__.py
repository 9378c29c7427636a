"""Calibration: measure which signals predict a failing SRM step and fit the RankGuide router.

Runs the SRM alone (through the same graph as every other run, with every signal computed),
labels each step -- with the task's step verifier, or, where a task has none, by agreement
with the LRM (:func:`lrm_agreement_labels`: the LRM writes the same step from the same prefix
and a step it would write differently is failing) -- and reports per signal its AUROC for
predicting a failing step, overall and within groups of equal step length, since a raw rank
can be a length proxy. It then fits the ``rankguide`` combination (logistic regression on
z-scored signals), the thresholds for a target escalation rate, the baseline policies'
thresholds at the same rate and at each rate of a benchmark sweep (``policy_thresholds`` keys
``"entropy@0.2"``...), and the failure-mode entropy cut-offs, writes the shared calibration
file, and can plot each signal's distribution on good and failing steps.

* :mod:`~langchain_rankguide.calibration.collect`: run the SRM and label its steps.
* :mod:`~langchain_rankguide.calibration.measure`: AUROC of each signal (overall, within groups).
* :mod:`~langchain_rankguide.calibration.fit`: the combination, thresholds and cut-offs.
* :mod:`~langchain_rankguide.calibration.plot`: signal distributions on good and failing steps.

The task (what the problems are, how steps are judged) is handed in; nothing here knows the
demo.
"""

from langchain_rankguide.calibration.collect import (
    StepLabeller,
    collect_steps,
    lrm_agreement_labels,
    steps_agree,
    verifier_labels,
)
from langchain_rankguide.calibration.fit import (
    ENTROPY,
    ENTROPY_TOP20,
    RANK_CANDIDATES,
    SWEEP_RATES,
    CalibrationReport,
    calibration_z,
    fit_calibration,
    fit_logistic,
    quantile_threshold,
)
from langchain_rankguide.calibration.measure import (
    LabelledStep,
    SignalReport,
    auroc,
    auroc_within_groups,
    signal_reports,
    signal_values,
)
from langchain_rankguide.calibration.plot import plot_distributions

__all__ = [
    "ENTROPY",
    "ENTROPY_TOP20",
    "RANK_CANDIDATES",
    "SWEEP_RATES",
    "CalibrationReport",
    "LabelledStep",
    "SignalReport",
    "StepLabeller",
    "auroc",
    "auroc_within_groups",
    "calibration_z",
    "collect_steps",
    "fit_calibration",
    "fit_logistic",
    "lrm_agreement_labels",
    "plot_distributions",
    "quantile_threshold",
    "signal_reports",
    "signal_values",
    "steps_agree",
    "verifier_labels",
]
