"""Rank statistics against matrices and tensors of known rank and spectrum."""

from __future__ import annotations

import math

import pytest
import torch

from langchain_rankguide.errors import SignalError
from langchain_rankguide.signals import rank as rank_module
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

torch.set_num_threads(1)

F64 = torch.float64


def orthonormal(rows: int, cols: int, seed: int, *, zero_mean: bool = False) -> torch.Tensor:
    """Orthonormal columns; with ``zero_mean`` every column also sums to 0 (centring-invariant)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(rows, cols, generator=g, dtype=F64)
    if zero_mean:
        a = a - a.mean(dim=0, keepdim=True)
    q, _ = torch.linalg.qr(a)
    return q


def with_spectrum(
    n: int, d: int, s: list[float], seed: int = 0, *, zero_mean: bool = False
) -> torch.Tensor:
    """``U diag(s) V^T`` with orthonormal ``U`` (n x k) and ``V`` (d x k)."""
    k = len(s)
    u = orthonormal(n, k, seed, zero_mean=zero_mean)
    v = orthonormal(d, k, seed + 1)
    return u @ torch.diag(torch.tensor(s, dtype=F64)) @ v.T


def values(out: dict[str, Measured]) -> dict[str, float | None]:
    return {k: m.value for k, m in out.items()}


def assert_all_none(out: dict[str, Measured], fragment: str) -> None:
    assert out
    for m in out.values():
        assert m.value is None
        assert m.reason is not None and fragment in m.reason


# --------------------------------------------------------------------------- spectrum functions


def test_numerical_rank_counts_values_above_relative_threshold() -> None:
    s = torch.tensor([3.0, 2.0, 1.0, 0.0, 0.0])
    assert numerical_rank(s) == 3
    assert numerical_rank(torch.tensor([1.0, 1e-2, 1e-4])) == 2
    assert numerical_rank(torch.tensor([1.0, 1e-2, 1e-4]), eps=1e-5) == 3
    assert numerical_rank(torch.tensor([1.0, 1e-2, 1e-4]), eps=0.5) == 1


@pytest.mark.parametrize(
    ("s", "eta", "expected"),
    [
        ([2.0, 1.0, 1.0], 0.5, 1),  # 4/6 >= 0.5
        ([2.0, 1.0, 1.0], 0.8, 2),  # 5/6 >= 0.8 > 4/6
        ([2.0, 1.0, 1.0], 0.9, 3),  # 5/6 < 0.9
        ([1.0, 1.0, 1.0, 1.0], 0.75, 3),  # exact boundary
        ([1.0, 1.0, 1.0, 1.0], 0.76, 4),
        ([1.0, 1.0, 1.0, 1.0], 1.0, 4),
        ([3.0, 0.0, 0.0], 1.0, 1),
        ([1.0, 2.0, 1.0], 0.5, 1),  # unsorted input
    ],
)
def test_energy_rank_thresholds(s: list[float], eta: float, expected: int) -> None:
    assert energy_rank(torch.tensor(s), eta) == expected


@pytest.mark.parametrize("k", [1, 2, 5, 17])
def test_flat_spectrum_effective_and_stable_rank_equal_k(k: int) -> None:
    s = torch.cat([torch.full((k,), 2.5), torch.zeros(3)])
    assert effective_rank(s) == pytest.approx(k, rel=1e-12)
    assert stable_rank(s) == pytest.approx(k, rel=1e-12)
    assert numerical_rank(s) == k
    assert energy_rank(s, 1.0) == k


def test_stable_and_effective_rank_values() -> None:
    s = torch.tensor([2.0, 1.0, 1.0])
    assert stable_rank(s) == pytest.approx(1.5)
    p = torch.tensor([0.5, 0.25, 0.25], dtype=F64)
    assert effective_rank(s) == pytest.approx(math.exp(float(-(p * p.log()).sum())))


def test_spectrum_functions_on_zero_and_empty_spectra() -> None:
    for s in (torch.zeros(4), torch.zeros(0)):
        assert energy_rank(s) == 0
        assert numerical_rank(s) == 0
        assert effective_rank(s) == 0.0
        assert stable_rank(s) == 0.0


@pytest.mark.parametrize(
    "bad", [torch.ones(2, 2), torch.tensor([1.0, float("nan")]), torch.tensor([1.0, -1.0])]
)
def test_spectrum_functions_reject_bad_spectra(bad: torch.Tensor) -> None:
    for fn in (energy_rank, numerical_rank, effective_rank, stable_rank):
        with pytest.raises(SignalError):
            fn(bad)


@pytest.mark.parametrize("eta", [0.0, -0.1, 1.5])
def test_bad_eta_raises(eta: float) -> None:
    with pytest.raises(SignalError, match="eta"):
        energy_rank(torch.ones(3), eta)
    with pytest.raises(SignalError, match="eta"):
        matrix_rank_signals(torch.randn(4, 3), eta=eta)


def test_bad_eps_raises() -> None:
    with pytest.raises(SignalError, match="eps"):
        numerical_rank(torch.ones(3), eps=1.0)


# --------------------------------------------------------------------------- singular_values


def test_singular_values_recovers_known_spectrum() -> None:
    H = with_spectrum(8, 16, [4.0, 2.0, 1.0])
    s = singular_values(H, centre=False)
    assert s.dtype == F64
    assert s.shape == (8,)
    torch.testing.assert_close(s[:3], torch.tensor([4.0, 2.0, 1.0], dtype=F64))
    assert float(s[3:].abs().max()) < 1e-12


def test_singular_values_casts_low_precision_input() -> None:
    H = with_spectrum(6, 10, [3.0, 1.0]).to(torch.bfloat16)
    assert singular_values(H).dtype == F64


@pytest.mark.parametrize("shape", [(3,), (2, 3, 4), ()])
def test_singular_values_wrong_ndim_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(SignalError, match="2-D"):
        singular_values(torch.ones(shape))
    with pytest.raises(SignalError):
        matrix_rank_signals(torch.ones(shape))


# --------------------------------------------------------------------------- matrix_rank_signals


def test_matrix_rank_signals_known_spectrum_uncentred() -> None:
    n, d = 8, 16
    out = values(matrix_rank_signals(with_spectrum(n, d, [4.0, 2.0, 1.0]), centre=False))
    assert set(out) == set(rank_signal_names("rank"))
    assert out["rank.numerical"] == 3
    assert out["rank.numerical_norm"] == pytest.approx(3 / 8)
    assert out["rank.energy"] == 2  # 16/21 < 0.95 <= 20/21
    assert out["rank.energy_norm"] == pytest.approx(2 / 8)
    assert out["rank.stable"] == pytest.approx(21 / 16)
    assert out["rank.stable_norm"] == pytest.approx(21 / 16 / 8)
    p = torch.tensor([4.0, 2.0, 1.0], dtype=F64) / 7
    eff = math.exp(float(-(p * p.log()).sum()))
    assert out["rank.effective"] == pytest.approx(eff, rel=1e-9)
    assert out["rank.effective_norm"] == pytest.approx(eff / 8, rel=1e-9)


def test_matrix_rank_signals_centred_normalises_by_n_minus_1() -> None:
    n, d = 8, 16
    H = with_spectrum(n, d, [4.0, 2.0, 1.0], zero_mean=True)  # centring leaves it unchanged
    out = values(matrix_rank_signals(H))
    assert out["rank.numerical"] == 3
    assert out["rank.numerical_norm"] == pytest.approx(3 / 7)
    assert out["rank.stable"] == pytest.approx(21 / 16)


def test_centring_removes_a_constant_offset_row() -> None:
    g = torch.Generator().manual_seed(3)
    a = torch.randn(10, 1, generator=g, dtype=F64)
    b = torch.randn(1, 24, generator=g, dtype=F64)
    offset = 5.0 * torch.randn(1, 24, generator=g, dtype=F64)
    H = a @ b + offset  # rank 1 plus the same offset on every row
    centred = values(matrix_rank_signals(H, centre=True))
    uncentred = values(matrix_rank_signals(H, centre=False))
    assert centred["rank.numerical"] == 1
    assert centred["rank.effective"] == pytest.approx(1.0)
    assert centred["rank.stable"] == pytest.approx(1.0)
    assert uncentred["rank.numerical"] == 2
    assert uncentred["rank.numerical_norm"] == pytest.approx(2 / 10)
    assert centred["rank.numerical_norm"] == pytest.approx(1 / 9)


def test_length_normalisation_uses_max_attainable_rank() -> None:
    g = torch.Generator().manual_seed(5)
    short = torch.randn(4, 64, generator=g, dtype=F64)
    assert values(matrix_rank_signals(short))["rank.numerical"] == 3  # min(n-1, d)
    assert values(matrix_rank_signals(short))["rank.numerical_norm"] == pytest.approx(1.0)
    assert values(matrix_rank_signals(short, centre=False))["rank.numerical"] == 4
    assert values(matrix_rank_signals(short, centre=False))["rank.numerical_norm"] == 1.0
    tall = torch.randn(50, 8, generator=g, dtype=F64)
    out = values(matrix_rank_signals(tall))
    assert out["rank.numerical"] == 8
    assert out["rank.numerical_norm"] == pytest.approx(1.0)
    for key, value in out.items():
        if key.endswith("_norm"):
            assert value is not None and 0.0 <= value <= 1.0


def test_row_normalise_removes_per_token_scale() -> None:
    g = torch.Generator().manual_seed(7)
    v = torch.randn(1, 12, generator=g, dtype=F64)
    scales = torch.tensor([[1.0], [3.0], [0.5], [10.0]], dtype=F64)
    H = scales @ v  # the same direction at different norms
    assert values(matrix_rank_signals(H))["rank.numerical"] == 1
    assert_all_none(matrix_rank_signals(H, row_normalise=True), "no variance")


def test_names_select_a_subset_and_prefix() -> None:
    H = with_spectrum(8, 16, [4.0, 2.0, 1.0])
    out = matrix_rank_signals(
        H, prefix="rank.window", names={"rank.window.stable", "rank.energy", "entropy.mean"}
    )
    assert list(out) == ["rank.window.stable"]


def test_one_svd_for_all_names_and_none_for_no_names(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, ...]] = []
    original = rank_module.singular_values

    def spy(H: torch.Tensor, **kwargs: bool) -> torch.Tensor:
        calls.append(tuple(H.shape))
        return original(H, **kwargs)

    monkeypatch.setattr(rank_module, "singular_values", spy)
    H = with_spectrum(8, 16, [4.0, 2.0, 1.0])
    assert len(matrix_rank_signals(H)) == 8
    assert len(calls) == 1
    assert matrix_rank_signals(H, names={"entropy.mean"}) == {}
    assert len(calls) == 1


# --------------------------------------------------------------------------- degenerate matrices


@pytest.mark.parametrize(
    ("H", "fragment"),
    [
        (torch.randn(1, 16), "fewer than 2 tokens"),
        (torch.ones(6, 16) * 3.7, "no variance"),
        (torch.zeros(6, 16), "no variance"),
        (torch.tensor([[1.0, float("nan")], [2.0, 3.0]]), "non-finite"),
        (torch.tensor([[1.0, float("inf")], [2.0, 3.0]]), "non-finite"),
        (torch.tensor([[1.0, -float("inf")], [2.0, 3.0]]), "non-finite"),
        (torch.zeros(0, 16), "empty"),
        (torch.zeros(5, 0), "empty"),
    ],
)
@pytest.mark.parametrize("centre", [True, False])
def test_degenerate_matrices_give_none_with_reason(
    H: torch.Tensor, fragment: str, centre: bool
) -> None:
    if fragment == "no variance" and not centre and H.abs().sum() > 0:
        # Constant non-zero rows are a genuine rank-1 matrix when not centred.
        assert values(matrix_rank_signals(H, centre=False))["rank.numerical"] == 1
        return
    assert_all_none(matrix_rank_signals(H, centre=centre), fragment)


def test_non_finite_wins_over_one_token() -> None:
    assert_all_none(matrix_rank_signals(torch.tensor([[float("nan"), 1.0]])), "non-finite")


def test_constant_rows_in_half_precision_have_no_variance() -> None:
    H = (torch.randn(1, 32) * 40).repeat(9, 1).to(torch.float16)
    assert_all_none(matrix_rank_signals(H), "no variance")


@pytest.mark.parametrize("scale", [1e-200, 1e-30, 1e30, 1e200])
def test_extreme_scales_stay_finite_and_correct(scale: float) -> None:
    H = with_spectrum(8, 16, [4.0, 2.0, 1.0]) * scale
    out = values(matrix_rank_signals(H, centre=False))
    assert out["rank.numerical"] == 3
    assert out["rank.stable"] == pytest.approx(21 / 16)
    assert all(v is not None and math.isfinite(v) for v in out.values())


# --------------------------------------------------------------------------- tensor rank


def tensor_with_token_rank(layers: int, n: int, d: int, r: int, seed: int = 0) -> torch.Tensor:
    """``T[l] = A @ B_l`` with zero-mean ``A`` (n x r): token-mode rank exactly ``r``."""
    g = torch.Generator().manual_seed(seed)
    a = orthonormal(n, r, seed, zero_mean=True)
    return torch.stack([a @ torch.randn(r, d, generator=g, dtype=F64) for _ in range(layers)])


@pytest.mark.parametrize("layers", [1, 3])
def test_tensor_rank_of_known_token_mode_rank(layers: int) -> None:
    T = tensor_with_token_rank(layers, n=12, d=10, r=4)
    out = values(tensor_rank_signals(T, eta=1.0))
    assert out["rank.tensor"] == 4
    assert out["rank.tensor_norm"] == pytest.approx(4 / min(11, layers * 10))
    assert values(tensor_rank_signals(T, eta=1.0, centre=False))["rank.tensor"] == 4


def test_tensor_rank_single_layer_matches_matrix_energy_rank() -> None:
    H = with_spectrum(10, 20, [5.0, 3.0, 2.0, 1.0, 0.5], zero_mean=True)
    expected = values(matrix_rank_signals(H))
    out = values(tensor_rank_signals(H.unsqueeze(0)))
    assert out["rank.tensor"] == expected["rank.energy"]
    assert out["rank.tensor_norm"] == pytest.approx(expected["rank.energy_norm"])


def test_balance_layers_stops_a_loud_layer_dominating() -> None:
    loud = 1000.0 * tensor_with_token_rank(1, n=12, d=10, r=1, seed=1)
    quiet = tensor_with_token_rank(1, n=12, d=10, r=5, seed=2)
    T = torch.cat([loud, quiet])
    assert values(tensor_rank_signals(T, balance_layers=False))["rank.tensor"] == 1
    balanced = values(tensor_rank_signals(T, balance_layers=True))["rank.tensor"]
    assert balanced is not None and balanced >= 3


def test_constant_layer_is_dropped_not_amplified() -> None:
    T = tensor_with_token_rank(2, n=12, d=10, r=2)
    T[1] = 7.0  # constant over tokens: only rounding noise after centring
    assert values(tensor_rank_signals(T, eta=1.0))["rank.tensor"] == 2


def test_multilinear_ranks_token_mode_matches_tensor_rank() -> None:
    T = tensor_with_token_rank(3, n=12, d=10, r=4)
    layer_mode, token_mode, feature_mode = multilinear_energy_ranks(T, eta=1.0)
    assert token_mode.value == values(tensor_rank_signals(T, eta=1.0))["rank.tensor"]
    assert layer_mode.value is not None and 1 <= layer_mode.value <= 3
    assert feature_mode.value is not None and 1 <= feature_mode.value <= 10


@pytest.mark.parametrize(
    ("T", "fragment"),
    [
        (torch.randn(3, 1, 8), "fewer than 2 tokens"),
        (torch.ones(3, 5, 8), "no variance"),
        (torch.zeros(2, 5, 8), "no variance"),
        (torch.full((2, 5, 8), float("nan")), "non-finite"),
        (torch.zeros(0, 5, 8), "empty"),
    ],
)
def test_degenerate_tensors(T: torch.Tensor, fragment: str) -> None:
    assert_all_none(tensor_rank_signals(T), fragment)
    assert all(m.reason and fragment in m.reason for m in multilinear_energy_ranks(T))


def test_tensor_wrong_ndim_raises() -> None:
    with pytest.raises(SignalError, match="3-D"):
        tensor_rank_signals(torch.randn(5, 8))


# --------------------------------------------------------------------------- cross-step rank


def test_cross_step_rank_collapses_on_revisited_states() -> None:
    g = torch.Generator().manual_seed(11)
    a, b = torch.randn(2, 32, generator=g, dtype=F64)
    looping = torch.stack([a, b, a, b, a, b])
    out = values(cross_step_rank_signals(looping))
    assert out["rank.cross_step"] == 1
    assert out["rank.cross_step_norm"] == pytest.approx(1 / 5)
    varied = torch.randn(6, 32, generator=g, dtype=F64)
    out = values(cross_step_rank_signals(varied, eta=1.0))
    assert out["rank.cross_step"] == 5
    assert out["rank.cross_step_norm"] == pytest.approx(1.0)


def test_cross_step_degenerate() -> None:
    assert_all_none(cross_step_rank_signals(torch.randn(1, 16)), "fewer than 2 steps")
    assert_all_none(cross_step_rank_signals(torch.ones(4, 16)), "no variance")
    with pytest.raises(SignalError):
        cross_step_rank_signals(torch.randn(4))


# --------------------------------------------------------------------------- Measured


def test_measured_invariants() -> None:
    with pytest.raises(SignalError):
        Measured(float("nan"))
    with pytest.raises(SignalError):
        Measured(None)
    assert measured_or_none(None, "why").reason == "why"
    m = measured_or_none(float("inf"), "why")
    assert m.value is None and m.reason is not None and "non-finite" in m.reason
    assert measured_or_none(3, "why") == Measured(3.0)
    vals, reasons = split_measured({"a": Measured(1.0), "b": Measured(None, "x")})
    assert vals == {"a": 1.0, "b": None}
    assert reasons == {"b": "x"}
