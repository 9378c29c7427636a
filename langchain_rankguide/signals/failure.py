"""Failure-mode tagging: which failure mode (docs/signals.md) a step shows (our operational rules).

The first rule that fires wins:

====  =======================  ===============================================================
 #    mode                     fires when
====  =======================  ===============================================================
 1    ``numerical_fault``      a signal value is NaN/infinite, or a note (reason for a ``None``
                               value) contains ``"non-finite"``
 2    ``heavy_revalidation``   ``reflection.streak >= revalidation_streak`` or
                               ``step.repeat == 1``
 3    ``uncertainty``          the entropy signal (default ``entropy.first_token``) is at or
                               above ``uncertainty_entropy`` (rule off when that is ``None``)
 4    ``overconfidence``       ``flagged`` (the router says the step is failing) and the entropy
                               is low: at or below ``overconfidence_entropy``, or that threshold
                               is ``None`` (then every flagged step reaching this rule is
                               overconfident: the router saw what entropy did not)
 5    ``uncertainty``          ``flagged`` otherwise (entropy above the low threshold, or not
                               measured while a threshold is set)
 --   ``None``                 nothing fired
====  =======================  ===============================================================

Rules 2 and 3 fire whether or not the router flagged the step: they describe the step, and the
router decides separately whether to act. A missing (``None``) signal never fires a rule.

Example:
    >>> rules = FailureRules(uncertainty_entropy=2.0, overconfidence_entropy=0.5)
    >>> tag_failure_mode({"entropy.first_token": 0.1}, flagged=True, rules=rules)
    'overconfidence'
    >>> tag_failure_mode({"entropy.first_token": 0.1}, flagged=False, rules=rules) is None
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from langchain_rankguide.errors import SignalError
from langchain_rankguide.schemas import SIGNALS, FailureMode


@dataclass(frozen=True)
class FailureRules:
    """Thresholds of the failure-mode rules (see the module table).

    Attributes:
        uncertainty_entropy: entropy at or above which a step is ``"uncertainty"``; ``None``
            turns rule 3 off.
        overconfidence_entropy: entropy at or below which a flagged step is
            ``"overconfidence"``; ``None`` makes every flagged step that reaches rule 4 one.
        revalidation_streak: consecutive reflection steps that make ``"heavy_revalidation"``
            (docs/signals.md: 3).
        entropy_signal: the entropy signal the thresholds apply to.

    Raises:
        SignalError: for a streak below 1, an unknown ``entropy_signal``, or thresholds that
            are not finite.
    """

    uncertainty_entropy: float | None = None
    overconfidence_entropy: float | None = None
    revalidation_streak: int = 3
    entropy_signal: str = "entropy.first_token"

    def __post_init__(self) -> None:
        if not isinstance(self.revalidation_streak, int) or self.revalidation_streak < 1:
            raise SignalError(
                f"revalidation_streak must be an integer >= 1, got {self.revalidation_streak!r}"
            )
        if self.entropy_signal not in SIGNALS:
            raise SignalError(f"unknown entropy_signal {self.entropy_signal!r}")
        for name in ("uncertainty_entropy", "overconfidence_entropy"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise SignalError(f"{name} must be finite or None, got {value!r}")


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def tag_failure_mode(
    signals: Mapping[str, float | None],
    *,
    flagged: bool,
    rules: FailureRules,
    notes: Mapping[str, str] | None = None,
) -> FailureMode | None:
    """Tag a step with the first failure mode whose rule fires (module table).

    Args:
        signals: the step's signal values (name -> value or ``None``).
        flagged: ``True`` when the router judged the step failing.
        rules: the thresholds.
        notes: reasons for ``None`` values, as :func:`compute_signals` returns them.

    Returns:
        The failure mode, or ``None`` when no rule fires.
    """
    if any(v is not None and not math.isfinite(v) for v in signals.values()) or any(
        "non-finite" in reason for reason in (notes or {}).values()
    ):
        return "numerical_fault"
    streak = _finite(signals.get("reflection.streak"))
    repeat = _finite(signals.get("step.repeat"))
    if (streak is not None and streak >= rules.revalidation_streak) or repeat == 1.0:
        return "heavy_revalidation"
    entropy = _finite(signals.get(rules.entropy_signal))
    if (
        rules.uncertainty_entropy is not None
        and entropy is not None
        and entropy >= rules.uncertainty_entropy
    ):
        return "uncertainty"
    if not flagged:
        return None
    if rules.overconfidence_entropy is None or (
        entropy is not None and entropy <= rules.overconfidence_entropy
    ):
        return "overconfidence"
    return "uncertainty"
