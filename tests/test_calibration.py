"""Calibration maths: AUROC, within-length AUROC, fitted router and thresholds."""

from __future__ import annotations

import random

import pytest

from langchain_rankguide.calibration import (
    LabelledStep,
    auroc,
    auroc_within_groups,
    fit_calibration,
    quantile_threshold,
)
from langchain_rankguide.schemas import Calibration


def test_auroc_known_values():
    assert auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert auroc([0.5, 0.5], [False, True]) == 0.5
    assert auroc([1.0, 2.0], [True, True]) is None


def test_length_proxy_is_exposed_within_groups():
    # The signal is the step length itself; failing steps are longer, but within a length
    # group the signal carries no information.
    lengths = [5] * 10 + [10] * 10
    labels = [i % 5 == 0 for i in range(10)] + [i % 2 == 0 for i in range(10)]
    scores = [float(n) for n in lengths]
    assert auroc(scores, labels) > 0.6
    assert auroc_within_groups(scores, labels, lengths) == pytest.approx(0.5)


def test_fit_recovers_the_informative_signal_and_target_rate():
    rng = random.Random(0)
    steps = []
    for _ in range(400):
        failing = rng.random() < 0.2
        entropy = rng.gauss(2.0 if failing else 1.0, 0.3)
        rank = rng.gauss(5.0, 1.0)  # uninformative
        steps.append(
            LabelledStep(
                {
                    "entropy.first_token": entropy,
                    "rank.window.effective": rank,
                    "entropy.first_token_top20": entropy,
                },
                failing,
                8,
            )
        )
    report = fit_calibration(steps, models={"srm": "a", "lrm": "b"}, target_rate=0.25)
    cal = report.calibration
    assert abs(cal.weights["entropy.first_token"]) > 3 * abs(cal.weights["rank.window.effective"])
    assert report.fitted_escalation_rate == pytest.approx(0.25, abs=0.02)
    assert set(cal.failure_thresholds) == {"overconfidence_entropy", "uncertainty_entropy"}
    assert "entropy" in cal.policy_thresholds and "rank" in cal.policy_thresholds
    again = Calibration.from_dict(cal.to_dict())
    assert again.threshold == cal.threshold


def test_extra_signals_join_the_combination_and_unknown_ones_are_refused():
    rng = random.Random(1)
    steps = []
    for _ in range(400):
        failing = rng.random() < 0.25
        steps.append(
            LabelledStep(
                {
                    "entropy.first_token": rng.gauss(1.0, 0.3),  # uninformative
                    "rank.window.effective": rng.gauss(5.0, 1.0),  # uninformative
                    "entropy.mean": rng.gauss(2.0 if failing else 1.0, 0.3),
                },
                failing,
                8,
            )
        )
    plain = fit_calibration(steps, models={"srm": "a", "lrm": "b"})
    assert "entropy.mean" not in plain.calibration.weights
    fitted = fit_calibration(steps, models={"srm": "a", "lrm": "b"}, extra_signals=["entropy.mean"])
    weights = fitted.calibration.weights
    assert abs(weights["entropy.mean"]) > 3 * abs(weights["entropy.first_token"])
    assert fitted.policy_aurocs["rankguide"] > 0.9 > (plain.policy_aurocs["rankguide"] or 0.0)
    with pytest.raises(ValueError, match="unknown signals"):
        fit_calibration(steps, models={"srm": "a", "lrm": "b"}, extra_signals=["entropy.avg"])


def test_quantile_threshold():
    scores = [float(i) for i in range(100)]
    threshold = quantile_threshold(scores, 0.1)
    assert sum(s >= threshold for s in scores) == 10
