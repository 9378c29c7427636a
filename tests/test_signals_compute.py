"""compute_signals, token-distribution signals and failure-mode tagging."""

from __future__ import annotations

import json
import math

import pytest
import torch

from langchain_rankguide.errors import SignalError
from langchain_rankguide.schemas import FAILURE_MODES, SIGNALS
from langchain_rankguide.signals import (
    ALL_SIGNALS,
    FailureRules,
    SignalInputs,
    SignalSettings,
    compute_signals,
    first_token_entropy,
    first_token_signals,
    required_captures,
    step_token_signals,
    tag_failure_mode,
    top_k_entropy,
)
from langchain_rankguide.signals import rank as rank_module

torch.set_num_threads(1)

F64 = torch.float64


def full_inputs(seed: int = 0, *, layers: tuple[int, ...] = (4, 8)) -> SignalInputs:
    g = torch.Generator().manual_seed(seed)
    vocab = 50
    return SignalInputs(
        step_hidden={layer: torch.randn(9, 16, generator=g) for layer in layers},
        window_hidden={layer: torch.randn(12, 16, generator=g) for layer in layers},
        opening_states={layer: torch.randn(5, 16, generator=g) for layer in layers},
        first_token_logprobs=torch.log_softmax(torch.randn(vocab, generator=g), dim=0),
        token_logprobs=-torch.rand(9, generator=g),
        token_entropies=torch.rand(9, generator=g) * 2,
        text="Wait, let me check 12 + 5 = 17.\n\n",
        previous_texts=["12 + 5 = 17.\n\n", "Hmm, is that right?\n\n"],
        n_tokens=9,
    )


@pytest.fixture
def svd_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    calls: list[tuple[int, ...]] = []
    original = rank_module.singular_values

    def spy(H: torch.Tensor, **kwargs: bool) -> torch.Tensor:
        calls.append(tuple(H.shape))
        return original(H, **kwargs)

    monkeypatch.setattr(rank_module, "singular_values", spy)
    return calls


# --------------------------------------------------------------------------- distribution


def test_first_token_entropy_uniform_and_one_hot() -> None:
    uniform = torch.full((100,), -math.log(100.0))
    assert first_token_entropy(uniform).value == pytest.approx(math.log(100))
    assert top_k_entropy(uniform, 20).value == pytest.approx(math.log(20))
    one_hot = torch.full((10,), -float("inf"))
    one_hot[3] = 0.0
    assert first_token_entropy(one_hot).value == pytest.approx(0.0)
    assert top_k_entropy(one_hot).value == pytest.approx(0.0)


def test_first_token_entropy_renormalises_logits_and_small_vocab() -> None:
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0])
    expected = torch.distributions.Categorical(logits=logits.double()).entropy().item()
    assert first_token_entropy(logits).value == pytest.approx(expected)
    assert top_k_entropy(logits, 20).value == pytest.approx(expected)  # vocab smaller than k
    top2 = torch.distributions.Categorical(logits=logits[:2].double()).entropy().item()
    assert top_k_entropy(logits, 2).value == pytest.approx(top2)


@pytest.mark.parametrize(
    ("lp", "fragment"),
    [
        (torch.tensor([0.0, float("nan")]), "non-finite"),
        (torch.tensor([0.0, float("inf")]), "non-finite"),
        (torch.full((4,), -float("inf")), "non-finite"),
        (torch.zeros(0), "empty"),
    ],
)
def test_first_token_degenerate(lp: torch.Tensor, fragment: str) -> None:
    for m in first_token_signals(lp).values():
        assert m.value is None and m.reason is not None and fragment in m.reason


def test_first_token_bad_shape_and_k() -> None:
    with pytest.raises(SignalError):
        first_token_entropy(torch.zeros(2, 3))
    with pytest.raises(SignalError):
        top_k_entropy(torch.zeros(3), 0)


def test_step_token_signals() -> None:
    lp = torch.tensor([-0.1, -2.0, -0.5])
    ent = torch.tensor([0.2, 1.5, 0.4])
    out = {k: m.value for k, m in step_token_signals(lp, ent).items()}
    assert out["entropy.mean"] == pytest.approx(0.7)
    assert out["entropy.max"] == pytest.approx(1.5)
    assert out["prob.min"] == pytest.approx(math.exp(-2.0))
    assert out["logprob.mean"] == pytest.approx(-2.6 / 3)
    assert list(step_token_signals(lp, ent, names={"prob.min"})) == ["prob.min"]


def test_step_token_signals_degenerate() -> None:
    out = step_token_signals(torch.tensor([-0.1, -float("inf")]), torch.zeros(0))
    assert out["prob.min"].reason == "non-finite token_logprobs"
    assert out["logprob.mean"].reason == "non-finite token_logprobs"
    assert out["entropy.mean"].reason == "empty token_entropies"
    out = step_token_signals(None, None)
    assert out["entropy.max"].reason == "not captured: token_entropies"
    assert out["prob.min"].reason == "not captured: token_logprobs"


# --------------------------------------------------------------------------- failure tagging

RULES = FailureRules(uncertainty_entropy=2.0, overconfidence_entropy=0.5)


@pytest.mark.parametrize(
    ("signals", "flagged", "notes", "expected"),
    [
        (
            {"rank.energy": None},
            False,
            {"rank.energy": "non-finite hidden states"},
            "numerical_fault",
        ),
        ({"rank.energy": float("nan")}, False, None, "numerical_fault"),
        (
            {"reflection.streak": 5.0, "entropy.first_token": 3.0},
            True,
            {"rank.energy": "non-finite hidden states"},
            "numerical_fault",
        ),
        ({"reflection.streak": 3.0, "entropy.first_token": 3.0}, True, None, "heavy_revalidation"),
        ({"reflection.streak": 2.0, "step.repeat": 1.0}, False, None, "heavy_revalidation"),
        ({"reflection.streak": 2.0, "entropy.first_token": 2.0}, False, None, "uncertainty"),
        ({"entropy.first_token": 2.5}, True, None, "uncertainty"),
        ({"entropy.first_token": 0.5}, True, None, "overconfidence"),
        ({"entropy.first_token": 1.0}, True, None, "uncertainty"),
        ({"entropy.first_token": None}, True, None, "uncertainty"),
        ({"entropy.first_token": 0.1}, False, None, None),
        ({"entropy.first_token": 1.0, "step.repeat": 0.0}, False, {"x": "not captured"}, None),
    ],
)
def test_failure_rule_priority(
    signals: dict[str, float | None],
    flagged: bool,
    notes: dict[str, str] | None,
    expected: str | None,
) -> None:
    assert tag_failure_mode(signals, flagged=flagged, rules=RULES, notes=notes) == expected
    assert expected is None or expected in FAILURE_MODES


def test_failure_rules_with_thresholds_off() -> None:
    rules = FailureRules()
    assert tag_failure_mode({"entropy.first_token": 9.0}, flagged=False, rules=rules) is None
    assert tag_failure_mode({"entropy.first_token": 9.0}, flagged=True, rules=rules) == (
        "overconfidence"
    )
    assert tag_failure_mode({}, flagged=True, rules=rules) == "overconfidence"
    streak = FailureRules(revalidation_streak=2)
    assert tag_failure_mode({"reflection.streak": 2.0}, flagged=False, rules=streak) == (
        "heavy_revalidation"
    )


def test_failure_rules_entropy_signal_and_validation() -> None:
    rules = FailureRules(uncertainty_entropy=1.0, entropy_signal="entropy.first_token_top20")
    assert (
        tag_failure_mode(
            {"entropy.first_token_top20": 1.5, "entropy.first_token": 0.0},
            flagged=False,
            rules=rules,
        )
        == "uncertainty"
    )
    with pytest.raises(SignalError):
        FailureRules(revalidation_streak=0)
    with pytest.raises(SignalError):
        FailureRules(entropy_signal="entropy.nope")
    with pytest.raises(SignalError):
        FailureRules(uncertainty_entropy=float("nan"))


# --------------------------------------------------------------------------- compute_signals


def test_all_signals_is_the_registry() -> None:
    assert ALL_SIGNALS == tuple(SIGNALS)


def test_compute_all_signals_finite_or_none_and_json_safe() -> None:
    values, reasons = compute_signals(ALL_SIGNALS, full_inputs())
    assert list(values) == list(ALL_SIGNALS)
    assert reasons == {}
    json.dumps(values, allow_nan=False)
    for name, value in values.items():
        assert value is not None and math.isfinite(value), name
        low, high = SIGNALS[name].value_range
        assert low is None or value >= low - 1e-12, name
        assert high is None or value <= high + 1e-12, name
    assert values["reflection.cue"] == 1.0
    assert values["reflection.streak"] == 2.0
    assert values["step.repeat"] == 0.0
    assert values["step.tokens"] == 9.0


def test_unknown_name_raises_naming_it() -> None:
    with pytest.raises(SignalError, match=r"rank\.bogus"):
        compute_signals(["entropy.mean", "rank.bogus"], SignalInputs())
    with pytest.raises(SignalError, match="nope"):
        required_captures(["nope"])


def test_entropy_only_does_no_svd(svd_calls: list[tuple[int, ...]]) -> None:
    values, _ = compute_signals(
        ["entropy.first_token", "entropy.mean", "reflection.cue"], full_inputs()
    )
    assert svd_calls == []
    assert values["entropy.first_token"] is not None


def test_one_svd_per_matrix(svd_calls: list[tuple[int, ...]]) -> None:
    step_names = [n for n in ALL_SIGNALS if n.startswith("rank.") and n.count(".") == 1]
    step_names = [n for n in step_names if not n.startswith(("rank.tensor", "rank.cross"))]
    assert len(step_names) == 8
    compute_signals(step_names, full_inputs())
    assert svd_calls == [(9, 16)]
    svd_calls.clear()
    compute_signals(ALL_SIGNALS, full_inputs())
    # step matrix, window matrix, tensor unfolding (9 x 2*16), opening states
    assert sorted(svd_calls) == sorted([(9, 16), (12, 16), (9, 32), (5, 16)])


def test_missing_captures_give_reasons() -> None:
    values, reasons = compute_signals(ALL_SIGNALS, SignalInputs(text="x", n_tokens=1))
    json.dumps(values, allow_nan=False)
    assert reasons["rank.window.energy"] == "not captured: window_hidden"
    assert reasons["rank.energy"] == "not captured: step_hidden"
    assert reasons["rank.tensor"] == "not captured: step_hidden"
    assert reasons["rank.cross_step_norm"] == "not captured: opening_states"
    assert reasons["entropy.first_token_top20"] == "not captured: first_token_logprobs"
    assert reasons["entropy.mean"] == "not captured: token_entropies"
    assert reasons["logprob.mean"] == "not captured: token_logprobs"
    assert values["step.tokens"] == 1.0
    assert set(reasons) == {name for name, value in values.items() if value is None}


def test_primary_layer_selects_the_layer() -> None:
    inputs = full_inputs()
    inputs.step_hidden[8] = torch.ones(9, 16)  # layer 8 has no variance
    values, reasons = compute_signals(["rank.energy"], inputs)
    assert values["rank.energy"] is not None  # first key: layer 4
    inputs.primary_layer = 8
    values, reasons = compute_signals(["rank.energy"], inputs)
    assert reasons == {"rank.energy": "no variance"}
    inputs.primary_layer = 99
    _, reasons = compute_signals(["rank.energy", "rank.cross_step"], inputs)
    assert reasons["rank.energy"] == "not captured: step_hidden at layer 99"
    assert reasons["rank.cross_step"] == "not captured: opening_states at layer 99"


def test_tensor_rank_uses_all_layers_and_checks_shapes() -> None:
    inputs = full_inputs(layers=(1, 2, 3))
    values, _ = compute_signals(["rank.tensor", "rank.tensor_norm"], inputs)
    assert values["rank.tensor_norm"] is not None
    inputs.step_hidden[2] = torch.randn(7, 16)
    values, reasons = compute_signals(["rank.tensor"], inputs)
    assert values["rank.tensor"] is None
    assert "differ in shape" in reasons["rank.tensor"]


def test_nan_hidden_states_route_to_numerical_fault() -> None:
    inputs = full_inputs()
    inputs.step_hidden[4][2, 3] = float("nan")
    values, reasons = compute_signals(["rank.energy_norm", "entropy.first_token"], inputs)
    assert values["rank.energy_norm"] is None
    assert "non-finite" in reasons["rank.energy_norm"]
    json.dumps(values, allow_nan=False)
    mode = tag_failure_mode(values, flagged=False, rules=FailureRules(), notes=reasons)
    assert mode == "numerical_fault"


def test_text_signals_and_settings() -> None:
    inputs = SignalInputs(text="a = 1.", previous_texts=["a = 1.", "b = 2."], n_tokens=4)
    names = ["step.repeat", "reflection.cue", "reflection.streak", "step.tokens"]
    values, _ = compute_signals(names, inputs)
    assert values == {
        "step.repeat": 0.0,
        "reflection.cue": 0.0,
        "reflection.streak": 0.0,
        "step.tokens": 4.0,
    }
    values, _ = compute_signals(names, inputs, SignalSettings(repeat_any_previous=True))
    assert values["step.repeat"] == 1.0


def test_names_order_dedup_and_bare_string() -> None:
    inputs = full_inputs()
    values, _ = compute_signals(["step.tokens", "entropy.max", "step.tokens"], inputs)
    assert list(values) == ["step.tokens", "entropy.max"]
    values, _ = compute_signals("step.tokens", inputs)
    assert values == {"step.tokens": 9.0}


def test_required_captures() -> None:
    assert required_captures(["entropy.first_token", "entropy.first_token_top20"]) == {
        "first_token"
    }
    assert required_captures(["rank.energy", "rank.tensor", "prob.min", "step.repeat"]) == {
        "step_hidden",
        "multi_layer",
        "logprobs",
        "text",
    }
    assert required_captures([]) == set()


@pytest.mark.parametrize(
    "kwargs", [{"eta": 0.0}, {"eta": 1.2}, {"eps": -1.0}, {"top_k_entropy": 0}]
)
def test_bad_settings_raise(kwargs: dict[str, float]) -> None:
    with pytest.raises(SignalError):
        SignalSettings(**kwargs)  # type: ignore[arg-type]


def test_low_precision_inputs() -> None:
    inputs = full_inputs()
    inputs.step_hidden = {k: v.to(torch.bfloat16) for k, v in inputs.step_hidden.items()}
    inputs.first_token_logprobs = inputs.first_token_logprobs.to(torch.float16)  # type: ignore[union-attr]
    values, reasons = compute_signals(
        ["rank.effective", "rank.tensor", "entropy.first_token"], inputs
    )
    assert reasons == {}
    json.dumps(values, allow_nan=False)
