"""Token-distribution signals: first-token entropy (full and top-k) and per-step token statistics.

All computations are in float64. ``-inf`` log-probabilities are legitimate zero probabilities
(masked tokens) in a full-vocabulary distribution; NaN and ``+inf`` are faults. Chosen-token
log-probabilities must all be finite (a chosen token of probability 0 is a fault).

==============================  ======================================================
signal                          definition
==============================  ======================================================
``entropy.first_token``         ``-sum_v p_v log p_v`` (nats) of the first token
``entropy.first_token_top20``   the same over the top-k log-probs, renormalised
``entropy.mean``                mean of the step's per-token entropies
``entropy.max``                 max of the step's per-token entropies
``prob.min``                    ``exp(min chosen-token log-prob)``
``logprob.mean``                mean chosen-token log-prob
==============================  ======================================================

Example:
    >>> import math, torch
    >>> flat = torch.full((8,), -math.log(8.0))
    >>> round(first_token_signals(flat)["entropy.first_token"].value, 6) == round(math.log(8), 6)
    True
"""

from __future__ import annotations

from collections.abc import Collection

import torch

from langchain_rankguide.errors import SignalError
from langchain_rankguide.signals.rank import Measured, measured_or_none

FIRST_TOKEN_SIGNALS: tuple[str, ...] = ("entropy.first_token", "entropy.first_token_top20")
"""Signals computed from the first token's full-vocabulary log-probs."""

ENTROPY_SIGNALS: tuple[str, ...] = ("entropy.mean", "entropy.max", "entropy.q50", "entropy.q90")
"""Signals computed from the step's per-token entropies."""

LOGPROB_SIGNALS: tuple[str, ...] = ("prob.min", "logprob.mean")
"""Signals computed from the step's chosen-token log-probs."""

DEFAULT_TOP_K = 20
"""GlimpRouter's top-k for the truncated first-token entropy."""


def _as_vector(x: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise SignalError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 1:
        raise SignalError(f"{what} must be 1-D, got shape {tuple(x.shape)}")
    if x.device.type == "mps":
        x = x.cpu()
    return x.detach().to(torch.float64)


def entropy(logprobs: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the distribution(s) over the last dimension of ``logprobs``.

    The one entropy function of the package: the step engine records each token's entropy with
    it, and the signals below measure with it. ``-inf`` entries are zero-probability outcomes
    (masked tokens); NaN entries count as zero too (the signals reject them before calling).
    Computed in the input's dtype and on its device, so the engine's per-token call costs no
    copy; the result is clamped at 0 against rounding.

    Example:
        >>> import math, torch
        >>> round(float(entropy(torch.full((4,), -math.log(4.0)))), 6) == round(math.log(4), 6)
        True
    """
    finite = torch.where(torch.isfinite(logprobs), logprobs, torch.zeros_like(logprobs))
    return (-(finite.exp() * finite).sum(dim=-1)).clamp_min(0.0)


def _renormalised_entropy(logits: torch.Tensor) -> float:
    # Renormalising makes slightly drifted log-probs (or raw logits) a proper distribution.
    return float(entropy(logits - torch.logsumexp(logits, dim=0)))


def _first_token_reason(lp: torch.Tensor) -> str | None:
    if lp.numel() == 0:
        return "empty first-token log-probs"
    if bool(torch.isnan(lp).any()) or bool(torch.isposinf(lp).any()):
        return "non-finite first-token log-probs"
    if not bool(torch.isfinite(lp).any()):
        return "non-finite first-token log-probs (all -inf)"
    return None


def first_token_entropy(logprobs: torch.Tensor) -> Measured:
    """Return the entropy (nats) of the first token's full-vocabulary distribution.

    Args:
        logprobs: 1-D log-probabilities (or logits: they are renormalised) over the vocabulary.

    Returns:
        The entropy, or ``None`` with a reason for empty or non-finite input.

    Raises:
        SignalError: if ``logprobs`` is not 1-D.
    """
    lp = _as_vector(logprobs, "first_token_logprobs")
    reason = _first_token_reason(lp)
    if reason is not None:
        return Measured(None, reason)
    return measured_or_none(_renormalised_entropy(lp), "not computed")


def top_k_entropy(logprobs: torch.Tensor, k: int = DEFAULT_TOP_K) -> Measured:
    """Return the entropy over the ``k`` largest log-probs, renormalised (GlimpRouter).

    Args:
        logprobs: 1-D log-probabilities over the vocabulary.
        k: how many top entries to keep (all of them if the vocabulary is smaller).

    Returns:
        The entropy (at most ``log k``), or ``None`` with a reason.

    Raises:
        SignalError: if ``logprobs`` is not 1-D or ``k < 1``.
    """
    if not isinstance(k, int) or k < 1:
        raise SignalError(f"top-k must be a positive integer, got {k!r}")
    lp = _as_vector(logprobs, "first_token_logprobs")
    reason = _first_token_reason(lp)
    if reason is not None:
        return Measured(None, reason)
    top = torch.topk(lp, min(k, lp.numel())).values
    return measured_or_none(_renormalised_entropy(top), "not computed")


def first_token_signals(
    logprobs: torch.Tensor | None,
    *,
    top_k: int = DEFAULT_TOP_K,
    names: Collection[str] | None = None,
) -> dict[str, Measured]:
    """Measure ``entropy.first_token`` and ``entropy.first_token_top20`` (or a subset).

    Args:
        logprobs: 1-D first-token log-probs over the vocabulary, or ``None`` if not captured.
        top_k: ``k`` of the truncated entropy.
        names: if given, only these names (others are ignored).

    Returns:
        Signal name -> measurement.
    """
    wanted = [n for n in FIRST_TOKEN_SIGNALS if names is None or n in names]
    if logprobs is None:
        return {n: Measured(None, "not captured: first_token_logprobs") for n in wanted}
    out: dict[str, Measured] = {}
    if "entropy.first_token" in wanted:
        out["entropy.first_token"] = first_token_entropy(logprobs)
    if "entropy.first_token_top20" in wanted:
        out["entropy.first_token_top20"] = top_k_entropy(logprobs, top_k)
    return out


def step_token_signals(
    token_logprobs: torch.Tensor | None,
    token_entropies: torch.Tensor | None,
    *,
    names: Collection[str] | None = None,
) -> dict[str, Measured]:
    """Measure the token-entropy statistics, ``prob.min`` and ``logprob.mean`` of a step.

    Args:
        token_logprobs: 1-D log-probs of the chosen tokens, or ``None`` if not captured.
        token_entropies: 1-D per-token entropies (nats), or ``None`` if not captured.
        names: if given, only these names (others are ignored).

    Returns:
        Signal name -> measurement; ``None`` with a reason for missing, empty or non-finite
        input.

    Raises:
        SignalError: if a tensor is not 1-D.
    """
    out: dict[str, Measured] = {}
    wanted_entropy = [n for n in ENTROPY_SIGNALS if names is None or n in names]
    wanted_logprob = [n for n in LOGPROB_SIGNALS if names is None or n in names]
    if wanted_entropy:
        reason, ent = _vector_reason(token_entropies, "token_entropies")
        for name in wanted_entropy:
            if ent is None:
                out[name] = Measured(None, reason)
            else:
                raw = _entropy_statistic(ent, name)
                # Upstream entropies can round a hair below zero.
                out[name] = measured_or_none(max(float(raw), 0.0), "not computed")
    if wanted_logprob:
        reason, lp = _vector_reason(token_logprobs, "token_logprobs")
        for name in wanted_logprob:
            if lp is None:
                out[name] = Measured(None, reason)
            elif name == "prob.min":
                out[name] = measured_or_none(min(float(lp.min().exp()), 1.0), "not computed")
            else:
                out[name] = measured_or_none(float(lp.mean()), "not computed")
    return out


def _entropy_statistic(entropies: torch.Tensor, name: str) -> torch.Tensor:
    """One statistic of a step's token entropies: mean, max, median or 90th percentile.

    Quantiles tell a step with one hesitant token (a high ``entropy.max``, a low median) from one
    that hesitates throughout; the router weighs them apart.
    """
    if name == "entropy.mean":
        return entropies.mean()
    if name == "entropy.max":
        return entropies.max()
    return torch.quantile(entropies, 0.5 if name == "entropy.q50" else 0.9)


def _vector_reason(x: torch.Tensor | None, what: str) -> tuple[str | None, torch.Tensor | None]:
    if x is None:
        return f"not captured: {what}", None
    v = _as_vector(x, what)
    if v.numel() == 0:
        return f"empty {what}", None
    if not bool(torch.isfinite(v).all()):
        return f"non-finite {what}", None
    return None, v
