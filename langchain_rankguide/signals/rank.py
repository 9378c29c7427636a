"""Rank statistics of hidden-state matrices and tensors (docs/signals.md).

Every statistic comes from the singular values ``s_1 >= s_2 >= ... >= 0`` of one SVD, computed in
float64 whatever the input dtype (MPS tensors are moved to the CPU first: MPS has no float64).

=====================  ===========================================================
statistic              definition over the singular values
=====================  ===========================================================
energy rank            smallest ``k`` with ``sum_{i<=k} s_i^2 >= eta * sum_i s_i^2``
numerical rank         ``#{i : s_i > eps * s_1}``
effective rank         ``exp(-sum_i p_i log p_i)`` with ``p_i = s_i / sum_j s_j``
stable rank            ``sum_i s_i^2 / s_1^2``
=====================  ===========================================================

Length normalisation (the ``*_norm`` values) divides by the *largest rank the matrix can
attain*: ``min(n, d)`` for an uncentred ``n x d`` matrix and ``min(n - 1, d)`` once its rows are
centred (centring removes one degree of freedom). The values therefore lie in ``[0, 1]`` and reach
1 for a full-rank matrix either way. The registry's one-line descriptions say ``min(n, d)``; that
is the uncentred case.

Degenerate input never raises and never yields NaN: the value is ``None`` with a reason.

====================================  =======================================================
input                                 reason
====================================  =======================================================
no elements                           ``"empty hidden states"``
a NaN or an infinity                  ``"non-finite hidden states"`` (the router escalates)
fewer than 2 rows                     ``"fewer than 2 tokens"`` (``"... steps"`` for cross-step)
zero or constant rows                 ``"no variance"`` (relative tolerance ``VARIANCE_RTOL``)
====================================  =======================================================

A wrong number of dimensions or an out-of-range ``eta``/``eps`` is a programming error and raises
:class:`~langchain_rankguide.errors.SignalError`.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> H = torch.randn(12, 3, generator=g, dtype=torch.float64) @ torch.randn(
    ...     3, 16, generator=g, dtype=torch.float64)
    >>> out = matrix_rank_signals(H, names={"rank.numerical", "rank.numerical_norm"})
    >>> out["rank.numerical"].value, round(out["rank.numerical_norm"].value, 4)
    (3.0, 0.2727)
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch

from langchain_rankguide.errors import SignalError

DEFAULT_ETA = 0.95
"""Default energy fraction for the energy rank."""

DEFAULT_EPS = 1e-3
"""Default relative threshold for the numerical rank."""

VARIANCE_RTOL = 1e-10
"""A matrix whose (centred) Frobenius norm is at most this fraction of its uncentred norm has
"no variance": centring identical rows in float64 leaves only rounding noise (~1e-16 relative),
which must not be read as rank."""

ENERGY_SLACK = 1e-12
"""Relative slack on the energy target so that an exact boundary (e.g. eta = 0.75 of four equal
values) is not lost to rounding of the cumulative sum."""

RANK_STATISTICS: tuple[str, ...] = ("energy", "numerical", "effective", "stable")
"""The four matrix rank statistics, in the order their signal names are produced."""

_TINY = torch.finfo(torch.float64).tiny


@dataclass(frozen=True)
class Measured:
    """A signal value, or ``None`` together with the reason it could not be measured.

    Attributes:
        value: a finite float, or ``None``.
        reason: why ``value`` is ``None``; required exactly then.

    Raises:
        SignalError: if ``value`` is NaN/infinite, or ``None`` without a reason.
    """

    value: float | None
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.value is None:
            if not self.reason:
                raise SignalError("a missing signal value needs a reason")
        elif not math.isfinite(self.value):
            raise SignalError(f"signal values must be finite, got {self.value!r}")


def measured_or_none(value: float | None, reason_if_none: str) -> Measured:
    """Wrap a raw value, turning ``None`` and non-finite values into a reasoned ``None``.

    Args:
        value: the computed value (any real number) or ``None``.
        reason_if_none: the reason recorded when ``value`` is ``None``.

    Returns:
        ``Measured(float(value))`` for a finite value; ``Measured(None, reason_if_none)`` for
        ``None``; ``Measured(None, "non-finite value ...")`` for NaN or an infinity.
    """
    if value is None:
        return Measured(None, reason_if_none)
    number = float(value)
    if not math.isfinite(number):
        return Measured(None, f"non-finite value {number!r}")
    return Measured(number)


def split_measured(
    measured: Mapping[str, Measured],
) -> tuple[dict[str, float | None], dict[str, str]]:
    """Split measurements into ``(values, reasons)``; ``reasons`` holds only the ``None`` ones."""
    values = {name: m.value for name, m in measured.items()}
    reasons = {name: m.reason for name, m in measured.items() if m.reason is not None}
    return values, reasons


def rank_signal_names(prefix: str = "rank") -> tuple[str, ...]:
    """Return the eight matrix rank signal names under ``prefix`` (raw, then ``_norm``)."""
    return tuple(f"{prefix}.{stat}{suffix}" for stat in RANK_STATISTICS for suffix in ("", "_norm"))


# --------------------------------------------------------------------------- helpers


def _to_float64(x: torch.Tensor) -> torch.Tensor:
    if x.device.type == "mps":
        # MPS has no float64; the matrices are small enough that the copy costs little.
        x = x.cpu()
    return x.detach().to(torch.float64)


def _check_matrix(H: torch.Tensor, what: str) -> None:
    if not isinstance(H, torch.Tensor):
        raise SignalError(f"{what} must be a torch.Tensor, got {type(H).__name__}")
    if H.ndim != 2:
        raise SignalError(
            f"{what} must be a 2-D (rows x features) tensor, got shape {tuple(H.shape)}"
        )


def _check_eta(eta: float) -> None:
    if not (isinstance(eta, int | float) and 0.0 < eta <= 1.0):
        raise SignalError(f"eta must lie in (0, 1], got {eta!r}")


def _check_eps(eps: float) -> None:
    if not (isinstance(eps, int | float) and 0.0 <= eps < 1.0):
        raise SignalError(f"eps must lie in [0, 1), got {eps!r}")


def _check_spectrum(s: torch.Tensor) -> torch.Tensor:
    if not isinstance(s, torch.Tensor) or s.ndim != 1:
        shape = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise SignalError(f"singular values must be a 1-D tensor, got {shape}")
    s = _to_float64(s)
    if s.numel() and not bool(torch.isfinite(s).all()):
        raise SignalError("singular values must be finite")
    if s.numel() and bool((s < 0).any()):
        raise SignalError("singular values must be non-negative")
    # Callers may pass an unsorted spectrum; svdvals output is already sorted, so this is cheap.
    return torch.sort(s, descending=True).values


def _degenerate_reason(H: torch.Tensor, unit: str) -> str | None:
    if H.numel() == 0:
        return "empty hidden states"
    if not bool(torch.isfinite(H).all()):
        return "non-finite hidden states"
    if H.shape[-2] < 2:
        # A single row has no spread to measure, centred or not.
        return f"fewer than 2 {unit}"
    return None


def _max_rank(rows: int, cols: int, centre: bool) -> int:
    return min(rows - 1 if centre else rows, cols)


# --------------------------------------------------------------------------- public functions


def singular_values(
    H: torch.Tensor, *, centre: bool = True, row_normalise: bool = False
) -> torch.Tensor:
    """Return the singular values of an ``n x d`` matrix, largest first, in float64.

    Rows are first scaled to unit norm (if ``row_normalise``; all-zero rows stay zero), then
    centred (if ``centre``): normalising first removes per-token scale (e.g. massive-activation
    tokens) while keeping the centred matrix exactly centred.

    Args:
        H: the ``n x d`` matrix (any dtype and device; it is cast to float64).
        centre: subtract the mean row.
        row_normalise: scale each row to unit Euclidean norm before centring.

    Returns:
        A 1-D float64 tensor of ``min(n, d)`` singular values on ``H``'s device.

    Raises:
        SignalError: if ``H`` is not 2-D.

    Degenerate input (empty, non-finite, constant) is the caller's concern: this function does no
    checks beyond the shape (a non-finite matrix makes the SVD itself raise).
    """
    _check_matrix(H, "H")
    X = _to_float64(H)
    if row_normalise:
        X = X / X.norm(dim=1, keepdim=True).clamp_min(_TINY)
    if centre and X.shape[0] > 0:
        X = X - X.mean(dim=0, keepdim=True)
    return torch.linalg.svdvals(X)


def energy_rank(s: torch.Tensor, eta: float = DEFAULT_ETA) -> int:
    """Return the smallest ``k`` whose top-``k`` singular values hold ``eta`` of the energy.

    Args:
        s: 1-D singular values (any order; non-negative, finite).
        eta: energy fraction in ``(0, 1]``.

    Returns:
        The energy rank; 0 for an empty or all-zero spectrum.

    Raises:
        SignalError: for a bad ``s`` or ``eta``.
    """
    _check_eta(eta)
    s = _check_spectrum(s)
    energy = s.square()
    total = float(energy.sum())
    if total <= 0.0:
        return 0
    cumulative = torch.cumsum(energy, dim=0)
    target = torch.tensor(
        eta * total * (1.0 - ENERGY_SLACK), dtype=cumulative.dtype, device=cumulative.device
    )
    k = int(torch.searchsorted(cumulative, target, side="left")) + 1
    return min(k, s.numel())


def numerical_rank(s: torch.Tensor, eps: float = DEFAULT_EPS) -> int:
    """Count the singular values above ``eps`` times the largest.

    Args:
        s: 1-D singular values (any order; non-negative, finite).
        eps: relative threshold in ``[0, 1)``.

    Returns:
        The numerical rank; 0 for an empty or all-zero spectrum.

    Raises:
        SignalError: for a bad ``s`` or ``eps``.
    """
    _check_eps(eps)
    s = _check_spectrum(s)
    if s.numel() == 0 or float(s[0]) <= 0.0:
        return 0
    return int((s > eps * s[0]).sum())


def effective_rank(s: torch.Tensor) -> float:
    """Return the effective rank ``exp(entropy(p))`` with ``p_i = s_i / sum_j s_j``.

    Args:
        s: 1-D singular values (any order; non-negative, finite).

    Returns:
        The effective rank, between 1 and the number of non-zero values; 0.0 for an empty or
        all-zero spectrum.

    Raises:
        SignalError: for a bad ``s``.
    """
    s = _check_spectrum(s)
    total = float(s.sum())
    if total <= 0.0:
        return 0.0
    p = s[s > 0] / total
    entropy = float(-(p * torch.log(p)).sum())
    return math.exp(max(entropy, 0.0))


def stable_rank(s: torch.Tensor) -> float:
    """Return the stable rank ``sum_i s_i^2 / s_1^2``.

    Args:
        s: 1-D singular values (any order; non-negative, finite).

    Returns:
        The stable rank; 0.0 for an empty or all-zero spectrum.

    Raises:
        SignalError: for a bad ``s``.
    """
    s = _check_spectrum(s)
    if s.numel() == 0 or float(s[0]) <= 0.0:
        return 0.0
    # Divide before squaring so huge singular values cannot overflow.
    return float((s / s[0]).square().sum())


def _spectrum(
    H: torch.Tensor, *, centre: bool, row_normalise: bool, unit: str
) -> tuple[torch.Tensor | None, str | None]:
    """Singular values of a checked, rescaled ``H``, or ``(None, reason)`` when degenerate."""
    reason = _degenerate_reason(H, unit)
    if reason is not None:
        return None, reason
    X = _to_float64(H)
    # Rank statistics are scale-invariant; scaling to max |x| = 1 keeps squares in range.
    peak = float(X.abs().amax())
    if peak == 0.0:
        return None, "no variance"
    X = X / peak
    if row_normalise:
        reference = float((X.norm(dim=1) > 0).sum())
    else:
        reference = float(X.square().sum())
    s = singular_values(X, centre=centre, row_normalise=row_normalise)
    if not bool(torch.isfinite(s).all()):
        return None, "non-finite singular values"
    if float(s.square().sum()) <= VARIANCE_RTOL**2 * reference:
        return None, "no variance"
    return s, None


def _statistic(stat: str, s: torch.Tensor, eta: float, eps: float) -> float:
    if stat == "energy":
        return float(energy_rank(s, eta))
    if stat == "numerical":
        return float(numerical_rank(s, eps))
    if stat == "effective":
        return effective_rank(s)
    return stable_rank(s)


def _normalised(raw: float, max_rank: int) -> float:
    # Rounding can push a statistic a hair past the attainable bound; the norm is documented <= 1.
    return min(raw / max_rank, 1.0)


def matrix_rank_signals(
    H: torch.Tensor,
    *,
    eta: float = DEFAULT_ETA,
    eps: float = DEFAULT_EPS,
    centre: bool = True,
    row_normalise: bool = False,
    prefix: str = "rank",
    names: Collection[str] | None = None,
) -> dict[str, Measured]:
    """Return the rank statistics of one ``n x d`` hidden-state matrix, from a single SVD.

    Args:
        H: the matrix (tokens x hidden size), any dtype and device.
        eta: energy fraction for the energy rank.
        eps: relative threshold for the numerical rank.
        centre: subtract the mean row first (the normaliser becomes ``min(n - 1, d)``).
        row_normalise: scale rows to unit norm before centring.
        prefix: signal name prefix, e.g. ``"rank"`` or ``"rank.window"``.
        names: if given, only these signal names are produced (names outside this prefix's
            eight are ignored, so a caller may pass its whole list); no SVD when none match.

    Returns:
        ``{prefix}.energy``, ``{prefix}.energy_norm``, ``{prefix}.numerical``,
        ``{prefix}.numerical_norm``, ``{prefix}.effective``, ``{prefix}.effective_norm``,
        ``{prefix}.stable``, ``{prefix}.stable_norm`` (or the requested subset) -> measurement.

    Raises:
        SignalError: if ``H`` is not 2-D or ``eta``/``eps`` is out of range.
    """
    _check_matrix(H, "H")
    _check_eta(eta)
    _check_eps(eps)
    keys = rank_signal_names(prefix)
    wanted = keys if names is None else tuple(k for k in keys if k in names)
    if not wanted:
        return {}
    s, reason = _spectrum(H, centre=centre, row_normalise=row_normalise, unit="tokens")
    if s is None:
        return {key: Measured(None, reason) for key in wanted}
    max_rank = _max_rank(H.shape[0], H.shape[1], centre)
    raw: dict[str, float] = {}
    out: dict[str, Measured] = {}
    for key in wanted:
        stat = key[len(prefix) + 1 :].removesuffix("_norm")
        if stat not in raw:
            raw[stat] = _statistic(stat, s, eta, eps)
        value = _normalised(raw[stat], max_rank) if key.endswith("_norm") else raw[stat]
        out[key] = measured_or_none(value, "not computed")
    return out


def _prepare_tensor(
    T: torch.Tensor, *, centre: bool, balance_layers: bool
) -> tuple[torch.Tensor | None, str | None]:
    """Centre, rescale and (optionally) balance an ``L x n x d`` tensor; drop dead layers."""
    if not isinstance(T, torch.Tensor) or T.ndim != 3:
        shape = tuple(T.shape) if isinstance(T, torch.Tensor) else type(T).__name__
        raise SignalError(f"T must be a 3-D (layers x tokens x features) tensor, got {shape}")
    reason = _degenerate_reason(T, "tokens")
    if reason is not None:
        return None, reason
    X = _to_float64(T)
    peak = float(X.abs().amax())
    if peak == 0.0:
        return None, "no variance"
    X = X / peak
    raw = X.square().sum(dim=(1, 2))
    if centre:
        X = X - X.mean(dim=1, keepdim=True)
    kept = X.square().sum(dim=(1, 2))
    # A constant layer leaves only rounding noise after centring; balancing would blow that noise
    # up to unit norm and read it as full rank, so such layers are dropped instead.
    live = (kept > VARIANCE_RTOL**2 * raw) & (raw > 0)
    if not bool(live.any()):
        return None, "no variance"
    X = X[live]
    if balance_layers:
        X = X / kept[live].sqrt()[:, None, None]
    return X, None


def _mode_unfolding(X: torch.Tensor, mode: int) -> torch.Tensor:
    order = (mode, *(m for m in range(3) if m != mode))
    return X.permute(*order).reshape(X.shape[mode], -1)


def tensor_rank_signals(
    T: torch.Tensor,
    *,
    eta: float = DEFAULT_ETA,
    centre: bool = True,
    balance_layers: bool = True,
) -> dict[str, Measured]:
    """Return the token-mode (HOSVD) energy rank of an ``L x n x d`` stack of layers' hidden states.

    The mode-1 unfolding is the ``n x (L*d)`` matrix whose row ``t`` concatenates token ``t``'s
    states across the layers; its energy rank is ``rank.tensor``.

    Centring: each layer is centred over the tokens (its mean token state is subtracted), which
    is the same as centring the columns of the unfolding; the attainable token-mode rank is then
    ``min(n - 1, L*d)`` (``min(n, L*d)`` uncentred), the normaliser of ``rank.tensor_norm``.

    Balancing (``balance_layers``, ours): residual-stream norms grow with depth, so without it the
    deepest layer's spectrum dominates the energy; each centred layer is scaled to unit Frobenius
    norm so every layer weighs the same. Layers with no variance are left out.

    Args:
        T: ``L x n x d`` tensor (``L`` may be 1).
        eta: energy fraction.
        centre: centre each layer over the tokens.
        balance_layers: scale each layer to unit Frobenius norm after centring.

    Returns:
        ``{"rank.tensor": ..., "rank.tensor_norm": ...}``.

    Raises:
        SignalError: if ``T`` is not 3-D or ``eta`` is out of range.
    """
    _check_eta(eta)
    X, reason = _prepare_tensor(T, centre=centre, balance_layers=balance_layers)
    if X is None:
        return {"rank.tensor": Measured(None, reason), "rank.tensor_norm": Measured(None, reason)}
    s = singular_values(_mode_unfolding(X, 1), centre=False)
    rank = float(energy_rank(s, eta))
    max_rank = _max_rank(T.shape[1], T.shape[0] * T.shape[2], centre)
    return {
        "rank.tensor": measured_or_none(rank, "not computed"),
        "rank.tensor_norm": measured_or_none(_normalised(rank, max_rank), "not computed"),
    }


def multilinear_energy_ranks(
    T: torch.Tensor,
    *,
    eta: float = DEFAULT_ETA,
    centre: bool = True,
    balance_layers: bool = True,
) -> tuple[Measured, Measured, Measured]:
    """Return the energy rank of every mode unfolding of ``T`` (layer, token, feature).

    Preparation (centring, balancing, dropping dead layers) is as in :func:`tensor_rank_signals`,
    whose value equals the middle entry. Costs three SVDs; not for the hot path.

    Args:
        T: ``L x n x d`` tensor.
        eta: energy fraction.
        centre: centre each layer over the tokens.
        balance_layers: scale each layer to unit Frobenius norm after centring.

    Returns:
        ``(layer-mode rank, token-mode rank, feature-mode rank)`` as measurements.

    Raises:
        SignalError: if ``T`` is not 3-D or ``eta`` is out of range.
    """
    _check_eta(eta)
    X, reason = _prepare_tensor(T, centre=centre, balance_layers=balance_layers)
    if X is None:
        missing = Measured(None, reason)
        return missing, missing, missing
    ranks = [
        measured_or_none(
            float(energy_rank(singular_values(_mode_unfolding(X, mode), centre=False), eta)),
            "not computed",
        )
        for mode in range(3)
    ]
    return ranks[0], ranks[1], ranks[2]


def cross_step_rank_signals(
    S: torch.Tensor, *, eta: float = DEFAULT_ETA, centre: bool = True
) -> dict[str, Measured]:
    """Return the energy rank of the ``W x d`` step-opening states.

    The states are those at the delimiters that opened the last ``W`` steps. A collapsing
    value means the trace keeps returning to the same state (revalidation loops).

    Args:
        S: ``W x d`` opening states, oldest first (order does not matter).
        eta: energy fraction.
        centre: subtract the mean state (the normaliser becomes ``min(W - 1, d)``).

    Returns:
        ``{"rank.cross_step": ..., "rank.cross_step_norm": ...}``; ``None`` with
        ``"fewer than 2 steps"`` when ``W < 2``.

    Raises:
        SignalError: if ``S`` is not 2-D or ``eta`` is out of range.
    """
    _check_matrix(S, "S")
    _check_eta(eta)
    s, reason = _spectrum(S, centre=centre, row_normalise=False, unit="steps")
    if s is None:
        return {
            "rank.cross_step": Measured(None, reason),
            "rank.cross_step_norm": Measured(None, reason),
        }
    rank = float(energy_rank(s, eta))
    max_rank = _max_rank(S.shape[0], S.shape[1], centre)
    return {
        "rank.cross_step": measured_or_none(rank, "not computed"),
        "rank.cross_step_norm": measured_or_none(_normalised(rank, max_rank), "not computed"),
    }
