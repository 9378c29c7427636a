"""Step signals: hidden-state rank statistics, token-distribution and text signals, failure modes.

This subpackage imports only torch, the standard library and ``langchain_rankguide.schemas`` /
``langchain_rankguide.errors``, so the engine can use it on a bare torch install. The engine calls
:func:`compute_signals` with the names its router needs; :func:`required_captures` tells it what
to capture. Every value is a finite float or ``None`` with a reason.
"""

from __future__ import annotations

from langchain_rankguide.signals.compute import (
    ALL_SIGNALS,
    DEFAULT_SETTINGS,
    SignalInputs,
    SignalSettings,
    compute_signals,
    required_captures,
)
from langchain_rankguide.signals.distribution import (
    first_token_entropy,
    first_token_signals,
    step_token_signals,
    top_k_entropy,
)
from langchain_rankguide.signals.failure import FailureRules, tag_failure_mode
from langchain_rankguide.signals.rank import (
    Measured,
    cross_step_rank_signals,
    effective_rank,
    energy_rank,
    matrix_rank_signals,
    measured_or_none,
    multilinear_energy_ranks,
    numerical_rank,
    rank_signal_names,
    singular_values,
    split_measured,
    stable_rank,
    tensor_rank_signals,
)
from langchain_rankguide.signals.text import (
    DEFAULT_REFLECTION_CUES,
    DEFAULT_TRANSITION_CUES,
    ReflectionRules,
    ThoughtLabel,
    is_reflection,
    is_repeat,
    label_thought,
    normalise_whitespace,
    reflection_streak,
)

__all__ = [
    "ALL_SIGNALS",
    "DEFAULT_REFLECTION_CUES",
    "DEFAULT_SETTINGS",
    "DEFAULT_TRANSITION_CUES",
    "FailureRules",
    "Measured",
    "ReflectionRules",
    "SignalInputs",
    "SignalSettings",
    "ThoughtLabel",
    "compute_signals",
    "cross_step_rank_signals",
    "effective_rank",
    "energy_rank",
    "first_token_entropy",
    "first_token_signals",
    "is_reflection",
    "is_repeat",
    "label_thought",
    "matrix_rank_signals",
    "measured_or_none",
    "multilinear_energy_ranks",
    "normalise_whitespace",
    "numerical_rank",
    "rank_signal_names",
    "reflection_streak",
    "required_captures",
    "singular_values",
    "split_measured",
    "stable_rank",
    "step_token_signals",
    "tag_failure_mode",
    "tensor_rank_signals",
    "top_k_entropy",
]
