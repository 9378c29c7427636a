"""The shipped demo models, the training pipeline and the evaluation code."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from langchain_rankguide.demo import DEMO_LRM_DIR, DEMO_SRM_DIR
from langchain_rankguide.demo.task import StepLabel, chat_messages, make_problems, verify_steps

MODEL_DIRS = {"srm": DEMO_SRM_DIR, "lrm": DEMO_LRM_DIR}
SHIPPED = all((folder / "model.safetensors").is_file() for folder in MODEL_DIRS.values())
needs_weights = pytest.mark.skipif(
    not SHIPPED, reason="demo weights not built yet: run `rankguide demo train`"
)
MODELS = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(
            not (folder / "model.safetensors").is_file(),
            reason=f"demo {name} weights not built yet: run `rankguide demo train --which {name}`",
        ),
    )
    for name, folder in MODEL_DIRS.items()
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def torch_one_thread():  # type: ignore[no-untyped-def]
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(previous)


def _load(name: str):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = MODEL_DIRS[name]
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model.eval(), tokenizer


@pytest.mark.parametrize("name", MODELS)
def test_shipped_folder_is_complete(name: str) -> None:
    folder = MODEL_DIRS[name]
    for file in (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "README.md",
    ):
        assert (folder / file).is_file(), file
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is True
    assert config["max_position_embeddings"] >= 1024
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == config["eos_token_id"] == 2
    assert generation["pad_token_id"] == 0
    card = (folder / "README.md").read_text()
    assert "license: mit" in card and "MIT" in card


@needs_weights
def test_shipped_weights_are_small() -> None:
    total = sum((folder / "model.safetensors").stat().st_size for folder in MODEL_DIRS.values())
    assert total < 20 * 1024 * 1024


@pytest.mark.parametrize("name", MODELS)
def test_models_load_offline_and_write_a_verifiable_trace(name: str, torch_one_thread) -> None:  # type: ignore[no-untyped-def]
    torch = torch_one_thread
    model, tokenizer = _load(name)
    assert type(model).__name__ == "LlamaForCausalLM"
    problem = make_problems(1, seed=123)[0]
    prompt = tokenizer.apply_chat_template(
        chat_messages(problem), tokenize=False, add_generation_prompt=True
    )
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=300, do_sample=False)
    text = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    steps = [s for s in text.split("\n\n") if s.strip()]
    verdict = verify_steps(problem, steps)
    parsed = [label for label in verdict.labels if label.kind != "unparsed"]
    assert parsed, text
    assert verdict.labels[0].kind == "operation", text
    # Both models finish with an answer the verifier reads (accuracy is measured by
    # `rankguide demo eval`, not asserted on one problem).
    assert verdict.answer is not None, text


@needs_weights
def test_lrm_is_deeper_than_srm() -> None:
    configs = {
        name: json.loads((folder / "config.json").read_text())
        for name, folder in MODEL_DIRS.items()
    }
    assert configs["lrm"]["num_hidden_layers"] >= 4 * configs["srm"]["num_hidden_layers"]


@needs_weights
def test_traces_through_the_step_engine(torch_one_thread) -> None:  # type: ignore[no-untyped-def]
    engine = pytest.importorskip("langchain_rankguide.engine")
    from langchain_rankguide.demo.evaluate import failure_modes, run_traces

    problems = make_problems(3, seed=77)
    for spec in ("demo:srm", "demo:lrm"):
        loaded = engine.load_model(spec, dtype="float32", device="cpu", threads=1)
        records = run_traces(loaded, problems, role=spec[-3:])
        assert len(records) == 3
        for record in records:
            assert record.steps and record.tokens > 0
            assert len(record.entropies) == len(record.steps) == len(record.labels)
            assert all(e >= 0 for e in record.entropies)
        assert all(len(r.labels) == len(r.steps) for r in records)
    modes = failure_modes(records)
    assert modes.steps == sum(len(r.steps) for r in records)


# ----------------------------------------------------------------------------- no weights


def test_wilson_interval() -> None:
    from langchain_rankguide.demo.evaluate import wilson_interval

    low, high = wilson_interval(600, 1000)
    assert 0.569 < low < 0.570 and 0.629 < high < 0.631
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(1000, 1000)
    assert high == 1.0 and 0.99 < low < 1.0


def test_failure_modes_follow_the_definitions() -> None:
    from langchain_rankguide.demo.evaluate import TraceRecord, failure_modes

    ok = StepLabel("operation", True)
    bad = StepLabel("operation", False, "arithmetic")
    ref = StepLabel("reflection", True)
    records = [
        TraceRecord("a", ["s"] * 4, [bad, ok, ok, ok], [0.0, 1.0, 2.0, 3.0], [], False, 8, 0.1),
        TraceRecord("b", ["s"] * 4, [ok, ref, ref, ref], [4.0, 5.0, 6.0, 7.0], [], True, 8, 0.1),
    ]
    modes = failure_modes(records)
    assert math.isclose(modes.entropy_p25, 1.75) and math.isclose(modes.entropy_p75, 5.25)
    assert modes.overconfident_steps == 1 / 8 and modes.overconfident_problems == 0.5
    assert modes.overconfident_share_of_wrong == 1.0
    assert modes.uncertain_steps == 2 / 8 and modes.uncertain_problems == 0.5
    assert modes.revalidation_steps == 3 / 8 and modes.revalidation_problems == 0.5
    assert modes.wrong_steps == 1 / 8


def test_quick_training_and_eval_commands(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    torch_one_thread,  # type: ignore[no-untyped-def]
) -> None:
    from langchain_rankguide.cli import main

    out = tmp_path / "models"
    assert main(["demo", "train", "--quick", "--out", str(out), "--seed", "3"]) == 0
    for name in ("srm", "lrm"):
        folder = out / name
        assert (folder / "model.safetensors").is_file()
        record = json.loads((folder / "training.json").read_text())
        assert record["seed"] == 3 and record["steps_trained"] > 0
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "srm", local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(out / "srm", local_files_only=True)
    assert model.config.num_hidden_layers == 1 and tokenizer.eos_token == "<|end|>"
    pytest.importorskip("langchain_rankguide.engine")
    capsys.readouterr()
    code = main(
        [
            "demo",
            "eval",
            "--n",
            "2",
            "--srm",
            str(out / "srm"),
            "--lrm",
            str(out / "lrm"),
            "--json",
            "--max-trace-tokens",
            "64",
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 2 and set(report["models"]) == {"srm", "lrm"}
    assert report["models"]["srm"]["ms_per_token"] > 0
    assert "overconfident_steps" in report["srm_failure_modes"]
    # Takeover, wording and tool-call figures, over at most --n problems.
    assert {"takeover", "lrm_wording", "lrm_tool_calls", "lrm_tool_calls_grammar"} <= set(
        report["skills"]
    )
    assert report["skills"]["lrm_wording"]["n"] == 2
