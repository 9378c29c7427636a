"""Property and fuzz tests (hypothesis; ``deadline=None`` and bounded examples for slow machines).

* Signals: any finite input gives, for every signal, a finite value inside the documented range
  (``schemas.SIGNALS[name].value_range``) or ``None`` with a reason -- never NaN, never a raise.
* Configuration: arbitrary YAML-ish data (and arbitrary text) gives a ``RankGuideConfig`` or one
  ``ConfigError`` line -- never another exception.
* Calibration and steering files: arbitrary JSON in any field gives a calibration / vector
  whose numbers are all finite, or one ``CalibrationError`` / ``SteeringError`` line.
* Server: arbitrary JSON bodies give a 2xx or a 4xx with an OpenAI-style error -- never a 5xx.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_fixtures import InProcessServer

from langchain_rankguide.config import RankGuideConfig, load_config
from langchain_rankguide.errors import ConfigError
from langchain_rankguide.schemas import SIGNALS
from langchain_rankguide.server.app import ServerLimits, build_app_from_config
from langchain_rankguide.signals import SignalInputs, SignalSettings, compute_signals

# RG_FUZZ_EXAMPLES raises the count for a longer local hunt; the database stays out of the repo.
FUZZ = settings(
    deadline=None,
    max_examples=int(os.environ.get("RG_FUZZ_EXAMPLES", "40")),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# --------------------------------------------------------------------------- signals

finite64 = st.floats(allow_nan=False, allow_infinity=False)
finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


@st.composite
def matrices(draw: st.DrawFn, rows: int | None = None, cols: int | None = None) -> torch.Tensor:
    """Any finite ``n x d`` matrix: tiny to huge magnitudes, repeated rows, zeros."""
    n = draw(st.integers(0, 9)) if rows is None else rows
    d = draw(st.integers(1, 7)) if cols is None else cols
    wide = draw(st.booleans())
    elements = finite64 if wide else finite32
    values = draw(st.lists(elements, min_size=n * d, max_size=n * d))
    dtype = torch.float64 if wide else draw(st.sampled_from([torch.float32, torch.bfloat16]))
    return torch.tensor(values, dtype=torch.float64).reshape(n, d).to(dtype)


@st.composite
def signal_inputs(draw: st.DrawFn) -> SignalInputs:
    step = draw(matrices())
    layers = {0: step}
    if draw(st.booleans()):  # a second layer of the same shape: the tensor rank runs
        layers[1] = draw(matrices(rows=step.shape[0], cols=step.shape[1]))
    vocab = draw(st.integers(1, 40))
    first = draw(st.lists(finite32, min_size=vocab, max_size=vocab))
    n_tokens = draw(st.integers(0, 12))
    logprobs = draw(
        st.lists(st.floats(max_value=0.0, allow_nan=False), min_size=n_tokens, max_size=n_tokens)
    )
    entropies = draw(
        st.lists(st.floats(min_value=0.0, allow_nan=False, allow_infinity=False), max_size=12)
    )
    return SignalInputs(
        step_hidden=layers,
        window_hidden={0: draw(matrices())},
        opening_states={0: draw(matrices())},
        first_token_logprobs=torch.tensor(first),
        token_logprobs=torch.tensor(logprobs, dtype=torch.float64),
        token_entropies=torch.tensor(entropies, dtype=torch.float64),
        text=draw(st.text(max_size=30)),
        previous_texts=draw(st.lists(st.text(max_size=20), max_size=4)),
        n_tokens=n_tokens,
    )


@FUZZ
@given(
    inputs=signal_inputs(),
    eta=st.floats(min_value=0.01, max_value=1.0),
    eps=st.floats(min_value=0.0, max_value=0.99),
    centre=st.booleans(),
    row_normalise=st.booleans(),
)
def test_every_signal_is_finite_in_range_or_none_with_a_reason(
    inputs: SignalInputs, eta: float, eps: float, centre: bool, row_normalise: bool
) -> None:
    config = SignalSettings(eta=eta, eps=eps, centre=centre, row_normalise=row_normalise)
    values, reasons = compute_signals(list(SIGNALS), inputs, config)
    assert list(values) == list(SIGNALS)
    for name, value in values.items():
        if value is None:
            assert reasons.get(name), f"{name} is None without a reason"
            continue
        assert isinstance(value, float) and math.isfinite(value), (name, value)
        low, high = SIGNALS[name].value_range
        assert low is None or value >= low, (name, value)
        assert high is None or value <= high, (name, value)
    json.dumps(values, allow_nan=False)


# --------------------------------------------------------------------------- configuration

SECTIONS = [name for name in RankGuideConfig.model_fields if name != "version"]


def _field_names() -> list[str]:
    from langchain_rankguide.config._errors import model_classes

    names: set[str] = set()
    for section in RankGuideConfig.model_fields.values():
        for model in model_classes(section.annotation):
            names.update(model.model_fields)
            for sub in model.model_fields.values():
                for inner in model_classes(sub.annotation):
                    names.update(inner.model_fields)
    return sorted(names)


KEYS = st.one_of(st.sampled_from(_field_names()), st.text(max_size=8))
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(),  # NaN and infinities included: YAML has .nan and .inf
    st.text(max_size=16),
    st.sampled_from(["demo:srm", "demo:lrm", "demo", "./x", "/nonexistent", "cpu", "srm", ""]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=10,
)
SECTION_DATA = st.dictionaries(
    st.one_of(st.sampled_from([*SECTIONS, "version"]), st.text(max_size=8)),
    st.one_of(st.dictionaries(KEYS, VALUES, max_size=5), VALUES),
    max_size=5,
)


def _check_config(load: Any) -> None:
    try:
        config = load()
    except ConfigError as exc:
        message = str(exc)
        assert message and "\n" not in message, message
        assert "Traceback" not in message
    else:
        assert isinstance(config, RankGuideConfig)


@FUZZ
@given(data=st.one_of(SECTION_DATA, VALUES))
def test_config_loader_gives_a_config_or_one_config_error(data: Any, tmp_path: Path) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    _check_config(lambda: load_config(path))
    if isinstance(data, dict):
        _check_config(lambda: load_config(None, overrides=data))


@FUZZ
@given(text=st.text(max_size=120))
def test_config_loader_survives_arbitrary_text(text: str, tmp_path: Path) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    _check_config(lambda: load_config(path))


# --------------------------------------------------------------------------- calibration, steering

ANY_JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**20), 10**20),
        st.floats(),  # NaN and infinities included: json.loads accepts them
        st.text(max_size=8),
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
GOOD_CALIBRATION: dict[str, Any] = {
    "version": 1,
    "models": {"srm": "s", "lrm": "l"},
    "signals": {"entropy.first_token": {"mean": 1.0, "std": 0.5, "direction": 1, "auroc": 0.7}},
    "weights": {"entropy.first_token": 1.0},
    "threshold": 0.5,
    "bias": 0.0,
    "target_escalation_rate": 0.25,
    "reflection_streak": 3,
    "failure_thresholds": {"uncertainty_entropy": 0.4},
    "policy_thresholds": {"entropy": 0.4},
}
CALIBRATION_FIELDS = [
    ("models",),
    ("models", "srm"),
    ("signals",),
    ("signals", "entropy.first_token"),
    *[("signals", "entropy.first_token", k) for k in ("mean", "std", "direction", "auroc")],
    ("weights",),
    ("weights", "entropy.first_token"),
    *[(k,) for k in ("threshold", "bias", "target_escalation_rate", "reflection_streak")],
    ("failure_thresholds",),
    ("policy_thresholds", "entropy"),
]


def _replaced(data: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(data))
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


@FUZZ
@given(path=st.sampled_from(CALIBRATION_FIELDS), value=ANY_JSON)
def test_calibration_file_gives_finite_numbers_or_one_error(
    path: tuple[str, ...], value: Any, tmp_path: Path
) -> None:
    from langchain_rankguide.errors import CalibrationError
    from langchain_rankguide.schemas import Calibration

    file = tmp_path / "cal.json"
    file.write_text(json.dumps(_replaced(GOOD_CALIBRATION, path, value)))
    try:
        cal = Calibration.load(file)
    except CalibrationError as exc:
        assert str(exc).startswith(str(file)) and "\n" not in str(exc)
        return
    numbers = [cal.threshold, cal.bias, *cal.weights.values(), *cal.policy_thresholds.values()]
    numbers += [v for s in cal.signals.values() for v in (s.mean, s.std, s.direction)]
    assert all(isinstance(v, float | int) and math.isfinite(v) for v in numbers)
    assert math.isfinite(cal.score({"entropy.first_token": 1.5}) or 0.0)


STEERING_FIELDS = [
    "layer",
    "model_identity",
    "num_layers",
    "method",
    "filter",
    "samples",
    "sign_convention",
    "created",
    "extra",
    "norm",
    "hidden_size",
]


@FUZZ
@given(field=st.sampled_from(STEERING_FIELDS), value=ANY_JSON, magnitude=st.floats(0, 3e38))
def test_steering_file_gives_a_bounded_vector_or_one_error(
    field: str, value: Any, magnitude: float, tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    from langchain_rankguide.steering import SteeringError, SteeringVector
    from langchain_rankguide.steering.vector import MAX_NORM

    meta = {"format": "rankguide-steering-vector", "format_version": 1, "layer": 1}
    meta |= {"hidden_size": 4, field: value}
    file = tmp_path / "v.safetensors"
    tensor = torch.full((4,), magnitude, dtype=torch.float32)
    save_file({"vector": tensor}, str(file), metadata={"rankguide_steering": json.dumps(meta)})
    try:
        vector = SteeringVector.load(file)
    except SteeringError as exc:
        assert "\n" not in str(exc)
        return
    assert 0 <= vector.norm <= MAX_NORM
    json.dumps(vector.metadata(), allow_nan=False)  # what `steer show` prints


# --------------------------------------------------------------------------- server

JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(), st.text(max_size=12)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
POLICIES = ["srm", "lrm", "random", "rank", "entropy", "keyword", "specreason", "rankguide"]
EXTRAS = st.fixed_dictionaries(
    {},
    optional={
        "policy": st.sampled_from(POLICIES),
        "threshold": st.floats(),
        "seed": st.integers(-(10**20), 10**20),
        "steering": st.booleans(),
        "steering_scale": st.floats(),
    },
)
COMMON = {
    "max_tokens": st.integers(1, 8),
    "temperature": st.floats(0.0, 2.0),
    "top_p": st.floats(0.01, 1.0),
    "stop": st.lists(st.text(min_size=1, max_size=3), max_size=4),
    "stream": st.booleans(),
    "seed": st.integers(-(10**20), 10**20),
    "rankguide": EXTRAS,
    "chat_template_kwargs": st.dictionaries(
        st.sampled_from(["enable_thinking", "x", "tokenize"]), JSON_SCALARS, max_size=2
    ),
}
MODELS = st.sampled_from(["srm", "lrm", "rankguide", "tiny-srm"])
TEXT_PART = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url"]), "text": st.text(max_size=8)}
)
MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "developer", "user", "assistant", "tool"]),
        "content": st.one_of(st.text(max_size=30), st.none(), st.lists(TEXT_PART, max_size=2)),
    },
    optional={
        "name": st.text(max_size=5),
        "tool_call_id": st.text(max_size=5),
        "tool_calls": st.lists(st.dictionaries(st.text(max_size=5), JSON_VALUES, max_size=2)),
    },
)
COMPLETION = st.fixed_dictionaries(
    {"model": MODELS, "prompt": st.text(min_size=1, max_size=40)}, optional=COMMON
)
CHAT = st.fixed_dictionaries(
    {"model": MODELS, "messages": st.lists(MESSAGE, min_size=1, max_size=3)},
    optional={
        **COMMON,
        "max_completion_tokens": st.integers(1, 8),
        "add_generation_prompt": st.booleans(),
        "continue_final_message": st.booleans(),
    },
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, Any]:
    """(path, JSON body): mostly well-formed requests, some with one field replaced or dropped,
    some arbitrary JSON."""
    chat = draw(st.booleans())
    body: Any = draw(CHAT if chat else COMPLETION)
    how = draw(st.sampled_from(["as is", "as is", "replace", "drop", "anything"]))
    if how == "replace":
        key = draw(st.sampled_from(sorted({*body, "n", "echo", "max_tokens", "messages"})))
        body[key] = draw(JSON_VALUES)
    elif how == "drop":
        body.pop(draw(st.sampled_from(sorted(body))))
    elif how == "anything":
        body = draw(JSON_VALUES)
    return ("/chat/completions" if chat else "/completions"), body


@pytest.fixture(scope="module")
def fuzz_server(tiny_pair: tuple[Path, Path]) -> Iterator[httpx.Client]:
    data = {
        "srm": {"model": str(tiny_pair[0])},
        "lrm": {"model": str(tiny_pair[1])},
        "routing": {"policy": "random", "random_rate": 0.5, "calibration": None},
        "steps": {"max_steps": 2, "max_step_tokens": 4, "thinking_budget": 8},
    }
    app = build_app_from_config(
        load_config(None, overrides=data),
        limits=ServerLimits(max_tokens=8, max_body_bytes=8192, max_queue=4),
    )
    with InProcessServer(app) as server, httpx.Client(base_url=server.v1, timeout=60) as http:
        yield http


def _post(http: httpx.Client, path: str, content: bytes) -> None:
    headers = {"content-type": "application/json"}
    with http.stream("POST", path, content=content, headers=headers) as response:
        body = response.read()
    assert response.status_code < 500, (path, content[:300], body[:500])
    if response.status_code >= 400:
        error = json.loads(body)["error"]
        assert error["message"] and error["type"]
    elif response.headers["content-type"].startswith("text/event-stream"):
        events = [line[6:] for line in body.decode().splitlines() if line.startswith("data: ")]
        assert events, body
        for event in events[:-1]:
            json.loads(event)
    else:
        json.loads(body)


@FUZZ
@given(request=requests())
def test_server_answers_any_json_body_with_2xx_or_4xx(
    fuzz_server: httpx.Client, request: tuple[str, Any]
) -> None:
    path, body = request
    _post(fuzz_server, path, json.dumps(body).encode())


@FUZZ
@given(content=st.binary(max_size=200))
def test_server_answers_any_bytes_with_4xx(fuzz_server: httpx.Client, content: bytes) -> None:
    _post(fuzz_server, "/completions", content)
