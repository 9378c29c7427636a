"""The bad-input catalogue: every kind of bad input gets its own specific, documented outcome.

* CLI: exit code 2 and ONE line on standard error, ``rankguide: error: <the problem>``.
* Python API: a typed exception (a :class:`~langchain_rankguide.errors.RankGuideError`).
* Server: a 4xx with an OpenAI-style JSON error body.

Cases already proven elsewhere are not repeated here; ``docs/reliability.md`` lists them all
with the test that proves each (test_config, test_server, test_steering, test_engine ...).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from server_fixtures import InProcessServer, child_env, rankguide_command, write_config

from langchain_rankguide.cli import main
from langchain_rankguide.config import load_config
from langchain_rankguide.engine import ModelRegistry, StepEngine, load_model
from langchain_rankguide.errors import (
    CalibrationError,
    ConfigError,
    EngineError,
    InputError,
    ModelLoadError,
    RankGuideError,
)
from langchain_rankguide.graph import build_graph
from langchain_rankguide.pipeline import RankGuidePipeline
from langchain_rankguide.schemas import Calibration, SignalStats
from langchain_rankguide.server.app import ServerLimits, build_app_from_config
from langchain_rankguide.steering import SteeringError, SteeringVector

LONG_QUESTION = "go " * 300  # 900 tokens with the tiny character-level tokenizer (window 512)
TINY_WINDOW = 512


# --------------------------------------------------------------------------- helpers


def tiny_data(tiny_pair: tuple[Path, Path], **sections: dict[str, Any]) -> dict[str, Any]:
    """A small, fast configuration of the tiny pair (the SRM alone unless overridden)."""
    data: dict[str, Any] = {
        "srm": {"model": str(tiny_pair[0])},
        "lrm": {"model": str(tiny_pair[1])},
        "routing": {"policy": "srm", "calibration": None},
        "steps": {"max_steps": 3, "max_step_tokens": 16, "thinking_budget": 48},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return data


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse exits by itself
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    """Exit code 2 and exactly one ``rankguide: error:`` line naming the problem."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert lines[0].startswith("rankguide: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bad-input")


def _raw_vector(path: Path, tensor: torch.Tensor, *, identity: str, **meta: Any) -> Path:
    """A steering file written byte by byte, as a hostile or corrupted one would be."""
    from safetensors.torch import save_file

    header = {
        "format": "rankguide-steering-vector",
        "format_version": 1,
        "layer": 1,
        "hidden_size": tensor.numel(),
        "model_identity": identity,
        "method": "seal",
        **meta,
    }
    save_file({"vector": tensor}, str(path), metadata={"rankguide_steering": json.dumps(header)})
    return path


def break_chat_template(folder: Path) -> None:
    """Replace the model folder's chat template with Jinja that does not compile."""
    broken = "{% for m in messages %}{{ m.content }"
    (folder / "chat_template.jinja").write_text(broken)
    settings = folder / "tokenizer_config.json"
    data = json.loads(settings.read_text())
    if "chat_template" in data:
        settings.write_text(json.dumps({**data, "chat_template": broken}))


@pytest.fixture(scope="module")
def files(tiny_pair: tuple[Path, Path], work: Path) -> dict[str, Path]:
    """Bad artefacts next to good ones: vectors, calibrations and model folders."""
    out: dict[str, Path] = {}
    srm_identity = tiny_pair[0].resolve().name
    out["other_vector"] = SteeringVector(
        torch.ones(32), layer=1, model_identity="other-model"
    ).save(work / "other.safetensors")
    out["wide_vector"] = SteeringVector(torch.ones(48), layer=1, model_identity=srm_identity).save(
        work / "wide.safetensors"
    )
    out["pickle_vector"] = work / "pickled.safetensors"
    torch.save({"vector": torch.ones(32)}, out["pickle_vector"])
    cal = Calibration(
        models={"srm": "other-srm", "lrm": "other-lrm"},
        signals={"entropy.first_token": SignalStats(1.0, 0.5)},
        weights={"entropy.first_token": 1.0},
        threshold=0.5,
    )
    out["other_cal"] = work / "other-cal.json"
    cal.save(out["other_cal"])
    out["broken_cal"] = work / "broken-cal.json"
    out["broken_cal"].write_text('{"version": 1, "models": ')
    out["future_cal"] = work / "future-cal.json"
    out["future_cal"].write_text(json.dumps({**cal.to_dict(), "version": 99}))
    # S1: json writes NaN as a bare literal that json.loads reads back; a NaN mean made every
    # score NaN and silently switched routing off.
    nan_stats = {"mean": float("nan"), "std": 0.5, "direction": 1}
    out["nan_cal"] = work / "nan-cal.json"
    out["nan_cal"].write_text(
        json.dumps({**cal.to_dict(), "models": {}, "signals": {"entropy.first_token": nan_stats}})
    )
    out["string_cal"] = work / "string-cal.json"
    out["string_cal"].write_text(json.dumps({**cal.to_dict(), "models": {}, "threshold": "high"}))
    # S2: 3e38 is a finite float32, but the vector's norm overflows and the output became padding.
    out["huge_vector"] = _raw_vector(
        work / "huge.safetensors", torch.full((32,), 3e38), identity=srm_identity
    )
    out["list_samples_vector"] = _raw_vector(
        work / "list-samples.safetensors", torch.ones(32), identity=srm_identity, samples=[1, 2]
    )

    def model(name: str, mutate: Callable[[Path], None]) -> Path:
        folder = work / f"model-{name}"
        shutil.copytree(tiny_pair[0], folder)
        mutate(folder)
        return folder

    def edit_config(folder: Path, **changes: Any) -> None:
        data = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**data, **changes}))

    out["no_config"] = model("no-config", lambda f: (f / "config.json").unlink())
    out["broken_config"] = model(
        "broken-config", lambda f: (f / "config.json").write_text("{not json")
    )
    out["list_config"] = model("list-config", lambda f: (f / "config.json").write_text("[1, 2]"))
    out["unknown_arch"] = model("unknown-arch", lambda f: edit_config(f, model_type="nonesuch"))
    out["corrupt_weights"] = model(
        "corrupt-weights", lambda f: (f / "model.safetensors").write_bytes(b"\x00garbage" * 8)
    )
    out["no_weights"] = model("no-weights", lambda f: (f / "model.safetensors").unlink())

    def drop_tokenizer(folder: Path) -> None:
        for path in folder.iterdir():
            if "token" in path.name:
                path.unlink()

    out["no_tokenizer"] = model("no-tokenizer", drop_tokenizer)
    out["broken_template"] = model("broken-template", break_chat_template)
    out["not_utf8_yaml"] = work / "latin1.yaml"
    out["not_utf8_yaml"].write_bytes("routing: {policy: 'caf\xe9'}\n".encode("latin-1"))
    return out


# --------------------------------------------------------------------------- CLI: config files

# Seven levels of ten aliases each: 10**7 values from 200 bytes ("billion laughs").
ALIAS_BOMB = "l0: &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 7)
)

CONFIG_CASES: list[tuple[str, str | None, tuple[str, ...]]] = [
    # (id, YAML text or None for "no file", substrings the one error line must contain)
    ("missing-file", None, ("config file not found",)),
    ("yaml-syntax", "srm: {model: [unclosed\n", ("invalid YAML at line",)),
    ("duplicate-key", "routing: {policy: srm}\nrouting: {policy: lrm}\n", ("duplicate key",)),
    ("top-level-list", "- srm\n- lrm\n", ("top level must be a mapping",)),
    ("wrong-type", "srm: {threads: '2'}\n", ("srm.threads", "must be an integer")),
    ("unknown-key", "routing: {polcy: rank}\n", ("unknown key 'polcy' in routing", "'policy'")),
    ("unknown-section", "rooting: {}\n", ("unknown section 'rooting'",)),
    ("out-of-range", "steps: {max_step_tokens: 0}\n", ("steps.max_step_tokens", ">= 1")),
    ("bad-choice", "routing: {policy: oracle}\n", ("routing.policy", "must be one of")),
    ("missing-model-path", "srm: {model: ./no-such-model}\n", ("srm.model", "does not exist")),
    (
        "missing-calibration",
        "routing: {calibration: ./no-such.json}\n",
        ("routing.calibration", "does not exist"),
    ),
    (
        "missing-vector",
        "steering: {vector: ./no-such.safetensors}\n",
        ("steering.vector", "does not exist"),
    ),
    ("steering-without-vector", "steering: {enabled: true}\n", ("steering.vector", "required")),
    ("unsupported-version", "version: 2\n", ("unsupported config version 2",)),
    ("unknown-signal", "signals: {extra: [rank.energie]}\n", ("unknown signal", "rank.energy")),
    (
        "bad-url",
        "lrm: {provider: openai_compatible, base_url: 'ftp://x', model: m}\n",
        ("lrm.base_url", "http://"),
    ),
    ("nan-value", "sampling: {temperature: .nan}\n", ("sampling.temperature", "finite")),
    (
        "python-tag",
        "srm: !!python/object/apply:os.system ['echo pwned']\n",
        ("invalid YAML", "python/object"),
    ),
    # Nesting that blew PyYAML's recursion (RecursionError), and nesting short of that.
    ("nesting-recursion", "a: " + "[" * 5000 + "]" * 5000 + "\n", ("nesting deeper than 64",)),
    ("nesting-deep", "a: " + "[" * 100 + "]" * 100 + "\n", ("nesting deeper than 64",)),
    (
        "alias-bomb",
        ALIAS_BOMB,
        ("more than 1,000,000 values",),
    ),
    # Both passed `config validate`, then every run crashed (KeyError, TypeError).
    (
        "template-unknown-placeholder",
        "prompt: {user_template: 'Q: {question} ({topic})'}\n",
        ("prompt.user_template", "unknown placeholder {topic}"),
    ),
    (
        "template-lone-brace",
        "prompt: {user_template: '{question} {'}\n",
        ("prompt.user_template", "not a valid template"),
    ),
    (
        "template-kwargs-reserved",
        "prompt: {chat_template_kwargs: {tokenize: false}}\n",
        ("prompt.chat_template_kwargs", "may not set 'tokenize'"),
    ),
]


@pytest.mark.parametrize(
    "text,needles", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES]
)
def test_cli_config_file_errors_are_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str | None, needles: tuple[str, ...]
) -> None:
    path = tmp_path / "cfg.yaml"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    assert_one_line_error(*cli(capsys, "config", "validate", str(path))[::2], *needles)
    # `run` reads the same file and stops before loading any model, with the same line.
    line = assert_one_line_error(*cli(capsys, "run", "--config", str(path), "go")[::2], *needles)
    assert "Traceback" not in line


def test_cli_config_path_is_a_directory_or_not_utf8(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, files: dict[str, Path]
) -> None:
    assert_one_line_error(*cli(capsys, "config", "validate", str(tmp_path))[::2], "is a directory")
    assert_one_line_error(
        *cli(capsys, "config", "validate", str(files["not_utf8_yaml"]))[::2],
        "cannot read config file",
    )


def test_cli_config_path_that_is_not_a_small_regular_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """/dev/zero read without end, a FIFO hung: both are refused before they are opened."""
    if Path("/dev/zero").exists():
        assert_one_line_error(
            *cli(capsys, "config", "validate", "/dev/zero")[::2], "not a regular file"
        )
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * 200_000)
    assert_one_line_error(
        *cli(capsys, "config", "validate", str(big))[::2], "more than a config file may hold"
    )
    if not hasattr(os, "mkfifo"):
        return
    fifo = tmp_path / "cfg.fifo"
    os.mkfifo(fifo)
    # A real process with a deadline: a regression hangs in open(), not in this test run.
    done = subprocess.run(
        rankguide_command("config", "validate", str(fifo)),
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=120,
    )
    assert_one_line_error(done.returncode, done.stderr, "not a regular file")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA")
def test_cli_device_this_torch_lacks(
    capsys: pytest.CaptureFixture[str], tiny_pair: tuple[Path, Path], work: Path
) -> None:
    """``srm.device: cuda`` on a CPU-only torch: refused by `config validate` and by a run
    before any weights are read, both naming the field (it was an AssertionError traceback)."""
    config = write_config(work / "cuda.yaml", tiny_data(tiny_pair, srm={"device": "cuda"}))
    assert_one_line_error(
        *cli(capsys, "config", "validate", str(config))[::2],
        "srm.device: 'cuda' cannot be used",
        "CUDA is not available",
    )
    assert_one_line_error(
        *cli(capsys, "run", "--config", str(config), "--json", "go")[::2],
        "srm.device: 'cuda' cannot be used",
        "CUDA is not available",
    )


def test_cli_literal_secret_in_config_is_refused_without_echo(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    secret = "sk-live-0123456789abcdef"
    path = tmp_path / "secret.yaml"
    path.write_text(
        f"lrm: {{provider: openai_compatible, base_url: 'http://127.0.0.1:9/v1', model: m, "
        f"api_key: {secret}}}\n"
    )
    line = assert_one_line_error(
        *cli(capsys, "config", "validate", str(path))[::2], "secrets must not be written"
    )
    assert secret not in line


# --------------------------------------------------------------------------- CLI: models and files


def _run_case(
    tiny_pair: tuple[Path, Path], files: dict[str, Path], work: Path, name: str
) -> tuple[dict[str, Any], tuple[str, ...]]:
    cases: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
        "layer-out-of-range": (
            tiny_data(tiny_pair, srm={"signal_layers": [99]}, routing={"policy": "rank"}),
            ("layer 99 is out of range", "2 decoder blocks"),
        ),
        "vector-of-another-model": (
            tiny_data(tiny_pair, steering={"enabled": True, "vector": str(files["other_vector"])}),
            ("extracted from model 'other-model'",),
        ),
        "vector-of-another-width": (
            tiny_data(tiny_pair, steering={"enabled": True, "vector": str(files["wide_vector"])}),
            ("hidden size 48", "32"),
        ),
        "vector-is-a-pickle": (
            tiny_data(tiny_pair, steering={"enabled": True, "vector": str(files["pickle_vector"])}),
            ("not a readable safetensors file",),
        ),
        "calibration-of-another-model": (
            tiny_data(
                tiny_pair, routing={"policy": "rankguide", "calibration": str(files["other_cal"])}
            ),
            ("calibration was fitted for SRM 'other-srm'",),
        ),
        "calibration-not-json": (
            tiny_data(
                tiny_pair, routing={"policy": "rankguide", "calibration": str(files["broken_cal"])}
            ),
            ("is not valid JSON",),
        ),
        "calibration-unknown-version": (
            tiny_data(
                tiny_pair, routing={"policy": "rankguide", "calibration": str(files["future_cal"])}
            ),
            ("calibration version 99 is not supported",),
        ),
        "calibration-nan-mean": (
            tiny_data(
                tiny_pair, routing={"policy": "rankguide", "calibration": str(files["nan_cal"])}
            ),
            ("nan-cal.json", "signals['entropy.first_token'].mean", "finite number (got NaN)"),
        ),
        "calibration-wrong-type": (
            tiny_data(
                tiny_pair, routing={"policy": "rankguide", "calibration": str(files["string_cal"])}
            ),
            ("string-cal.json", "threshold: must be a finite number (got a string)"),
        ),
        "vector-overflowing": (
            tiny_data(tiny_pair, steering={"enabled": True, "vector": str(files["huge_vector"])}),
            ("huge.safetensors", "above the bound"),
        ),
        "vector-metadata-wrong-type": (
            tiny_data(
                tiny_pair,
                steering={"enabled": True, "vector": str(files["list_samples_vector"])},
            ),
            ("list-samples.safetensors", "field 'samples' must be an object of counts"),
        ),
    }
    for key, needle in (
        ("no_config", "has no config.json"),
        ("broken_config", "not a valid JSON file"),
        ("list_config", "cannot load model"),
        ("unknown_arch", "nonesuch"),
        ("corrupt_weights", "cannot load model"),
        ("no_weights", "cannot load model"),
        ("no_tokenizer", "cannot load model"),
        ("broken_template", "chat template is not valid Jinja"),
    ):
        cases[f"model-{key.replace('_', '-')}"] = (
            tiny_data(tiny_pair, srm={"model": str(files[key])}),
            (needle,),
        )
    return cases[name]


RUN_CASES = [
    "layer-out-of-range",
    "vector-of-another-model",
    "vector-of-another-width",
    "vector-is-a-pickle",
    "calibration-of-another-model",
    "calibration-not-json",
    "calibration-unknown-version",
    "calibration-nan-mean",
    "calibration-wrong-type",
    "vector-overflowing",
    "vector-metadata-wrong-type",
    "model-no-config",
    "model-broken-config",
    "model-list-config",
    "model-unknown-arch",
    "model-corrupt-weights",
    "model-no-weights",
    "model-no-tokenizer",
    "model-broken-template",
]


@pytest.mark.parametrize("name", RUN_CASES)
def test_cli_run_time_errors_are_one_line_exit_2(
    capsys: pytest.CaptureFixture[str],
    tiny_pair: tuple[Path, Path],
    files: dict[str, Path],
    work: Path,
    name: str,
) -> None:
    data, needles = _run_case(tiny_pair, files, work, name)
    config = write_config(work / f"{name}.yaml", data)
    assert_one_line_error(
        *cli(capsys, "run", "--config", str(config), "--json", "go")[::2], *needles
    )


# --------------------------------------------------------------------------- CLI: questions, flags


@pytest.fixture(scope="module")
def tiny_yaml(tiny_pair: tuple[Path, Path], work: Path) -> Path:
    return write_config(work / "tiny.yaml", tiny_data(tiny_pair))


@pytest.mark.parametrize(
    "question,needles",
    [
        ("", ("the question is empty",)),
        ("   \n\t", ("the question is empty",)),
        (LONG_QUESTION, ("too long for the SRM's context window of 512 tokens",)),
    ],
    ids=["empty", "blank", "longer-than-context"],
)
def test_cli_bad_questions(
    capsys: pytest.CaptureFixture[str], tiny_yaml: Path, question: str, needles: tuple[str, ...]
) -> None:
    code, _, err = cli(capsys, "run", "--config", str(tiny_yaml), "--json", question)
    assert_one_line_error(code, err, *needles)


def test_cli_binary_junk_question_in_a_real_process(tiny_yaml: Path) -> None:
    """Bytes that are not UTF-8 on a real command line: one line, exit 2, no traceback."""
    argv = [a.encode() for a in rankguide_command("run", "--config", str(tiny_yaml), "--json")]
    done = subprocess.run(
        [*argv, b"\xff\xfe junk \xc3"], capture_output=True, env=child_env(), timeout=120
    )
    err = done.stderr.decode("utf-8", "replace")
    assert_one_line_error(done.returncode, err, "the question is not valid text")
    assert done.stdout == b""


def test_cli_control_characters_are_just_text(
    capsys: pytest.CaptureFixture[str], tiny_yaml: Path
) -> None:
    """Control characters and emoji are valid text: the run answers (unknown characters are the
    tokenizer's ``<unk>``), exit 0 with the documented JSON object."""
    code, out, _ = cli(capsys, "run", "--config", str(tiny_yaml), "--json", "a\x01\x07\x1b[31m😀")
    assert code == 0
    assert json.loads(out)["steps"]


@pytest.mark.parametrize(
    "argv,needles",
    [
        (("run", "--threshold", "abc", "go"), ("invalid float value: 'abc'",)),
        (("run", "--seed", "1.5", "go"), ("invalid int value: '1.5'",)),
        (("run", "--policy", "oracle", "go"), ("routing.policy", "must be one of")),
        (("run", "--steer", "/no/such/vector.safetensors", "go"), ("steering.vector",)),
        (
            ("run", "--checkpoint", "/no/such/dir/runs.sqlite", "go"),
            ("cannot open checkpoint database",),
        ),
        (("serve", "--max-queue", "0"), ("--max-queue must be >= 1",)),
        (("serve", "--port", "http"), ("invalid int value",)),
        (("serve", "--api-key-env", "RG_TEST_SURELY_UNSET"), ("RG_TEST_SURELY_UNSET",)),
        (("steer", "show", "/no/such/vector.safetensors"), ("not found",)),
        (("calibrate", "--n", "0", "--out", "x.json"), ("--n must be >= 1",)),
        (("nonsense-command",), ("invalid choice: 'nonsense-command'",)),
        (("serve", "--port", "70000"), ("--port", "0..65535")),
        (("serve", "--port", "-1"), ("--port", "0..65535")),
        (("serve", "--log-level", "bogus"), ("--log-level", "invalid choice: 'bogus'")),
        (("serve", "--timeout", "nan"), ("--timeout", "finite number of seconds > 0")),
        (("serve", "--timeout", "0"), ("--timeout", "finite number of seconds > 0")),
        (("serve", "--timeout=-5"), ("--timeout", "finite number of seconds > 0")),
        (("serve", "--workers", "0"), ("--workers must be >= 1",)),
        (
            ("serve", "--port", "0", "--workers", "2", "--checkpoint", "runs.sqlite"),
            ("--workers 2 needs a checkpoint store its workers share: PostgreSQL", "runs.sqlite"),
        ),
        (
            ("calibrate", "--out", "/no/such/dir/cal.json"),
            ("--out", "directory does not exist: /no/such/dir"),
        ),
        (
            ("calibrate", "--out", "cal.json", "--report", "/no/such/dir/r.json"),
            ("--report", "directory does not exist"),
        ),
    ],
    ids=[
        "threshold-not-a-number",
        "seed-not-an-int",
        "unknown-policy",
        "missing-steer-file",
        "checkpoint-dir-missing",
        "serve-queue-zero",
        "serve-port-not-int",
        "serve-key-env-unset",
        "steer-show-missing",
        "calibrate-n-zero",
        "unknown-command",
        "serve-port-above-65535",
        "serve-port-negative",
        "serve-log-level-unknown",
        "serve-timeout-nan",
        "serve-timeout-zero",
        "serve-timeout-negative",
        "serve-workers-zero",
        "serve-workers-on-sqlite",
        "calibrate-out-dir-missing",
        "calibrate-report-dir-missing",
    ],
)
def test_cli_bad_flags(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tiny_yaml: Path,
    argv: tuple[str, ...],
    needles: tuple[str, ...],
) -> None:
    monkeypatch.delenv("RG_TEST_SURELY_UNSET", raising=False)
    if argv[0] == "run":
        argv = (argv[0], "--config", str(tiny_yaml), *argv[1:])
    code, _, err = cli(capsys, *argv)
    assert code == 2
    if err.startswith("usage: "):  # argparse: its usage line, then "rankguide ...: error: ..."
        last = err.strip().splitlines()[-1]
        assert last.startswith("rankguide") and ": error: " in last, err
        assert all(n in last for n in needles), err
    else:
        assert_one_line_error(code, err, *needles)


def test_cli_output_paths_are_checked_before_the_work(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A path found unwritable after an hour of calibration loses the result: every output is
    checked first. Nothing here may load a model (the checks come before)."""
    import langchain_rankguide.pipeline as pipeline_module

    def no_models(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("a model was loaded before the output path was checked")

    monkeypatch.setattr(pipeline_module, "RankGuidePipeline", no_models)
    existing = tmp_path / "existing.txt"
    existing.write_text("keep me")
    assert_one_line_error(
        *cli(capsys, "bench", "--n", "1", "--out", str(existing))[::2],
        "--out",
        "exists and is not a directory",
    )
    assert existing.read_text() == "keep me"
    assert_one_line_error(
        *cli(capsys, "bench", "--n", "1", "--out", str(existing / "sub"))[::2],
        "is a file, not a directory",
    )
    assert_one_line_error(
        *cli(capsys, "calibrate", "--out", str(tmp_path))[::2], "--out", "is a directory"
    )
    assert_one_line_error(
        *cli(capsys, "steer", "extract", "--out", str(tmp_path))[::2], "--out", "is a directory"
    )


def test_cli_serve_on_a_busy_port_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """uvicorn loaded every model, then exited 3 with its own line; now: exit 2 before loading."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        missing = tmp_path / "never-read.yaml"  # the port is checked before the config is read
        code, _, err = cli(capsys, "serve", "--config", str(missing), "--port", str(port))
    assert_one_line_error(code, err, f"127.0.0.1:{port}", "another process is listening")


def test_cli_bench_with_a_remote_lrm_writes_its_summary(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tiny_pair: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    """A remote LRM has no dtype: the bench failed with AttributeError after every problem ran,
    writing no summary. Without matplotlib, its hint keeps the brackets of ``[bench]``."""
    from remote_servers import FakeServer

    server = FakeServer("bench-remote").start()
    try:
        lrm = {
            "provider": "openai_compatible",
            "base_url": server.url,
            "model": "lrm",
            "tokenizer": str(tiny_pair[1]),
            "retries": {"max_attempts": 1},
        }
        config = write_config(tmp_path / "remote.yaml", {**tiny_data(tiny_pair), "lrm": lrm})
        monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
        out = tmp_path / "bench"
        argv = ["--config", str(config), "--n", "1", "--policies", "srm,lrm", "--warmup", "0"]
        code, _, err = cli(capsys, "bench", *argv, "--out", str(out))
    finally:
        server.stop()
    assert code == 0, err
    assert server.count > 0, "the LRM steps went to the server"
    machine = json.loads((out / "summary.json").read_text())["machine"]
    assert machine["lrm"]["provider"] == "openai_compatible" and "dtype" not in machine["lrm"]
    assert "pip install 'langchain-rankguide[bench]'" in " ".join(err.split())


def test_cli_garbage_checkpoint_file_is_one_line(
    capsys: pytest.CaptureFixture[str], tiny_yaml: Path, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(bytes(range(256)) * 16)
    argv = ("run", "--config", str(tiny_yaml), "--checkpoint", str(garbage), "--json", "go")
    assert_one_line_error(*cli(capsys, *argv)[::2], "cannot open checkpoint database")


@pytest.fixture(scope="module")
def postgres_yaml(tiny_pair: tuple[Path, Path], work: Path) -> Path:
    """The tiny pair, durable on PostgreSQL (the URL in $RANKGUIDE_POSTGRES_URL)."""
    data = {**tiny_data(tiny_pair), "checkpoint": {"backend": "postgres"}}
    return write_config(work / "postgres.yaml", data)


@pytest.mark.parametrize(
    "case,needles",
    [
        (
            "refused",
            ("cannot reach the PostgreSQL checkpoint store", ":***@127.0.0.1:1/", "refused"),
        ),
        ("wrong-password", ("password authentication failed", "(from $RANKGUIDE_POSTGRES_URL)")),
        ("no-database", ('database "no_such_db" does not exist',)),
        (
            "variable-unset",
            (
                "checkpoint.postgres_url_env: environment variable 'RANKGUIDE_POSTGRES_URL' "
                "is not set",
            ),
        ),
        (
            "variable-not-a-url",
            (
                "checkpoint.postgres_url_env: the value of RANKGUIDE_POSTGRES_URL must be a "
                "postgresql:// URL",
            ),
        ),
        ("serve", ("cannot reach the PostgreSQL checkpoint store", "refused")),
        ("serve-workers", ("cannot reach the PostgreSQL checkpoint store", "refused")),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_cli_postgres_it_cannot_use_is_one_line_without_the_password(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    postgres: Any,
    postgres_yaml: Path,
    case: str,
    needles: tuple[str, ...],
) -> None:
    """A dead, misconfigured or misnamed PostgreSQL: one line, exit 2, before any model loads;
    no password (the right one or a wrong one) is ever written."""
    good = postgres.url
    dead = good.replace(f":{postgres.cluster.port}/", ":1/")
    urls = {
        "refused": dead,
        "wrong-password": good.replace("s3cret", "Wr0ng-LEAK"),
        "no-database": good.rsplit("/", 1)[0] + "/no_such_db",
        "variable-not-a-url": "host=db password=Wr0ng-LEAK",
        "serve": dead,
        "serve-workers": dead,
    }
    monkeypatch.delenv("RANKGUIDE_POSTGRES_URL", raising=False)
    if case in urls:
        monkeypatch.setenv("RANKGUIDE_POSTGRES_URL", urls[case])
    if case.startswith("serve"):
        workers = ["--workers", "2"] if case == "serve-workers" else []
        argv = ["serve", "--config", str(postgres_yaml), "--port", "0", *workers]
    else:
        argv = ["run", "--config", str(postgres_yaml), "--thread-id", "t", "go"]
    code, out, err = cli(capsys, *argv)
    assert_one_line_error(code, err, *needles)
    for secret in (postgres.password, "Wr0ng-LEAK", "s3cret"):
        assert secret not in err + out


# --------------------------------------------------------------------------- Python API


@pytest.fixture(scope="module")
def graph(tiny_pair: tuple[Path, Path]) -> Any:
    return build_graph(load_config(None, overrides=tiny_data(tiny_pair)))


@pytest.mark.parametrize(
    "graph_input,message",
    [
        ({"question": ""}, "the question is empty"),
        ({"question": "  \n "}, "the question is empty"),
        ({}, "the question is empty"),
        ({"messages": []}, "the question is empty"),
        ({"question": "go \udcff"}, "not valid text"),
        ({"question": LONG_QUESTION}, "context window of 512 tokens"),
        ({"messages": [{"role": "user", "content": LONG_QUESTION}]}, "context window"),
    ],
    ids=[
        "empty",
        "blank",
        "no-input",
        "no-messages",
        "lone-surrogate",
        "too-long",
        "long-messages",
    ],
)
def test_graph_bad_questions_raise_input_error(graph: Any, graph_input: dict, message: str) -> None:
    with pytest.raises(InputError, match=message) as caught:
        graph.invoke(graph_input)
    assert isinstance(caught.value, RankGuideError) and isinstance(caught.value, ValueError)


def test_api_typed_errors_for_models_vectors_and_calibrations(
    tiny_pair: tuple[Path, Path], files: dict[str, Path]
) -> None:
    for key in (
        "no_config",
        "broken_config",
        "list_config",
        "unknown_arch",
        "corrupt_weights",
        "no_weights",
        "no_tokenizer",
    ):
        with pytest.raises(ModelLoadError, match=r"config\.json|cannot load model") as caught:
            load_model(str(files[key]))
        assert "\n" not in str(caught.value)
    with pytest.raises(CalibrationError, match="not valid JSON"):
        Calibration.load(files["broken_cal"])
    with pytest.raises(CalibrationError, match="version 99"):
        Calibration.load(files["future_cal"])
    with pytest.raises(SteeringError, match="not a readable safetensors"):
        SteeringVector.load(files["pickle_vector"])
    srm = ModelRegistry().get(str(tiny_pair[0]))
    with pytest.raises(SteeringError, match="other-model"):
        SteeringVector.load(files["other_vector"]).check_compatible(srm)
    pipeline = RankGuidePipeline(
        load_config(
            None,
            overrides=tiny_data(
                tiny_pair, routing={"policy": "rankguide", "calibration": str(files["other_cal"])}
            ),
        )
    )
    with pytest.raises(CalibrationError, match="other-srm"):
        pipeline.solve("go")
    with pytest.raises(EngineError, match="layer 99"):
        build_graph(
            load_config(
                None,
                overrides=tiny_data(
                    tiny_pair, srm={"signal_layers": [99]}, routing={"policy": "rank"}
                ),
            )
        ).invoke({"question": "go"})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(files["broken_cal"].with_name("nope.yaml"))


def test_api_calibration_and_steering_files_are_validated_on_load(
    tiny_pair: tuple[Path, Path], files: dict[str, Path]
) -> None:
    """S1 and S2: a NaN calibration and an overflowing vector are refused where they are read,
    naming the file and the field; so is a steering delta that overflows the model's dtype."""
    from langchain_rankguide.steering.hook import Delta

    with pytest.raises(CalibrationError, match=r"nan-cal\.json: .*\.mean: must be a finite"):
        Calibration.load(files["nan_cal"])
    with pytest.raises(CalibrationError, match="threshold: must be a finite number"):
        Calibration.load(files["string_cal"])
    with pytest.raises(SteeringError, match=r"huge\.safetensors: vector norm .* above the bound"):
        SteeringVector.load(files["huge_vector"])
    with pytest.raises(SteeringError, match="'samples' must be an object of counts"):
        SteeringVector.load(files["list_samples_vector"])
    with pytest.raises(SteeringError, match="above the bound"):
        SteeringVector(torch.full((32,), 1e30), layer=1)
    with pytest.raises(SteeringError, match="overflows float32"):
        Delta(torch.ones(32), 1e38 * 10)
    with pytest.raises(SteeringError, match=r"overflows the model's torch\.float16"):
        Delta(torch.full((32,), 1e4), 10.0).to(torch.zeros(1, 32, dtype=torch.float16))
    with pytest.raises(ModelLoadError, match="chat template is not valid Jinja"):
        load_model(str(files["broken_template"]))


def test_api_calibration_and_steering_files_of_hostile_shape(tmp_path: Path) -> None:
    """Nesting that exhausts the JSON parser's recursion, and files that never end or hang."""
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CalibrationError, match="nested too deeply"):
        Calibration.load(deep)
    if Path("/dev/zero").exists():
        with pytest.raises(CalibrationError, match="not a regular file"):
            Calibration.load("/dev/zero")
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "cal.fifo"
        os.mkfifo(fifo)
        with pytest.raises(CalibrationError, match="not a regular file"):
            Calibration.load(fifo)
    from safetensors.torch import save_file

    vector = tmp_path / "deep.safetensors"
    nested = "[" * 10**5 + "]" * 10**5
    save_file({"vector": torch.ones(4)}, str(vector), metadata={"rankguide_steering": nested})
    with pytest.raises(SteeringError, match="nested too deeply"):
        SteeringVector.load(vector)
    nan_meta = _raw_vector(
        tmp_path / "nan.safetensors", torch.ones(4), identity="x", extra={"k": float("nan")}
    )
    with pytest.raises(SteeringError, match="non-finite number"):
        SteeringVector.load(nan_meta)


def test_engine_refuses_a_prompt_longer_than_the_window(tiny_pair: tuple[Path, Path]) -> None:
    loaded = ModelRegistry().get(str(tiny_pair[0]))
    assert loaded.context_length == TINY_WINDOW
    engine = StepEngine(loaded, role="lrm")
    with pytest.raises(InputError, match="LRM's context window of 512"):
        engine.start_ids(list(range(3, 3 + TINY_WINDOW)))
    engine.start_ids([5] * (TINY_WINDOW - 1))  # one position left: still allowed
    assert engine.draft_step(max_new_tokens=1).n_tokens == 1


# --------------------------------------------------------------------------- server


@pytest.fixture(scope="module")
def server(tiny_pair: tuple[Path, Path]) -> Iterator[httpx.Client]:
    config = load_config(None, overrides=tiny_data(tiny_pair))
    app = build_app_from_config(config, limits=ServerLimits(max_tokens=64, max_body_bytes=16384))
    with InProcessServer(app) as running, httpx.Client(base_url=running.v1, timeout=60) as http:
        yield http


def openai_error(response: httpx.Response, status: int, *needles: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    for needle in needles:
        assert needle in error["message"], error
    return error


GO = [{"role": "user", "content": "go"}]


@pytest.mark.parametrize(
    "path,body,needles",
    [
        ("/completions", {"model": "srm", "prompt": LONG_QUESTION}, ("SRM's context window",)),
        ("/completions", {"model": "lrm", "prompt": LONG_QUESTION}, ("LRM's context window",)),
        (
            "/chat/completions",
            {"model": "rankguide", "messages": [{"role": "user", "content": LONG_QUESTION}]},
            ("context window of 512 tokens",),
        ),
        ("/completions", {"model": "rankguide", "prompt": " \n "}, ("the question is empty",)),
        (
            "/chat/completions",
            {"model": "srm", "messages": GO, "chat_template_kwargs": {"tokenize": True}},
            ("may not set tokenize",),
        ),
        (
            "/chat/completions",
            {"model": "srm", "messages": GO, "chat_template_kwargs": {"chat_template": "{{x}}"}},
            ("may not set chat_template",),
        ),
        (
            "/chat/completions",
            {"model": "rankguide", "messages": GO, "rankguide": {"policy": "rankguide"}},
            ("rankguide.policy", "needs a calibration file"),
        ),
        ("/chat/completions", {"model": "srm", "messages": []}, ("messages",)),
        ("/completions", {"model": "srm", "prompt": ""}, ("prompt",)),
        ("/completions", {"model": "srm", "prompt": "go", "max_tokens": 0}, ("max_tokens",)),
        ("/completions", {"model": "srm", "prompt": "go", "top_p": 0}, ("top_p",)),
        ("/completions", {"model": "srm", "prompt": "go", "stop": [""]}, ("stop",)),
        ("/completions", {"model": "", "prompt": "go"}, ("model",)),
        ("/completions", {"model": ["srm"], "prompt": "go"}, ("model",)),
        ("/completions", {"model": "srm", "prompt": "go", "echo": True}, ("echo",)),
    ],
    ids=[
        "srm-prompt-too-long",
        "lrm-prompt-too-long",
        "rankguide-question-too-long",
        "rankguide-blank-question",
        "template-kwarg-tokenize",
        "template-kwarg-template",
        "policy-without-calibration",
        "empty-message-list",
        "empty-prompt",
        "max-tokens-zero",
        "top-p-zero",
        "empty-stop-string",
        "empty-model-name",
        "model-name-not-a-string",
        "echo-unsupported",
    ],
)
def test_server_bad_requests_are_4xx_openai_errors(
    server: httpx.Client, path: str, body: dict[str, Any], needles: tuple[str, ...]
) -> None:
    openai_error(server.post(path, json=body), 400, *needles)


def test_server_binary_and_lone_surrogate_bodies(server: httpx.Client) -> None:
    junk = bytes(range(256)) * 4
    openai_error(
        server.post("/completions", content=junk, headers={"content-type": "application/json"}),
        400,
        "not valid JSON",
    )
    surrogate = b'{"model": "srm", "prompt": "go \\ud800 on"}'
    error = openai_error(
        server.post(
            "/completions", content=surrogate, headers={"content-type": "application/json"}
        ),
        400,
    )
    assert error["param"] == "prompt"
    openai_error(
        server.post(
            "/chat/completions",
            json={"model": "srm", "messages": [{"role": "user", "content": 7}]},
        ),
        400,
        "messages.0.content",
    )


USER = '"messages": [{"role": "user", "content": "go"}]'


@pytest.mark.parametrize(
    "path,raw,needles,param",
    [
        (
            "/chat/completions",
            b'{"model": "srm", "messages": [{"role": "user", "content": "\\udc80 hi"}]}',
            ("lone surrogate",),
            "messages.0.content",
        ),
        (
            "/chat/completions",
            b'{"model": "rankguide", "messages": [{"role": "user", "content": "\\udc80 hi"}]}',
            ("lone surrogate",),
            "messages.0.content",
        ),
        (
            "/chat/completions",
            b'{"model": "srm", "messages": [{"role": "user", "content": '
            b'[{"type": "text", "text": "hi \\ud800"}]}]}',
            ("lone surrogate",),
            "messages.0.content.0.text",
        ),
        (
            "/chat/completions",
            b'{"model": "srm", ' + USER.encode() + b', "chat_template_kwargs": {"x": "\\udfff"}}',
            ("lone surrogate",),
            "chat_template_kwargs.x",
        ),
        (
            "/completions",
            b'{"model": "srm", "prompt": "go", "max_tokens": 1' + b"0" * 5000 + b"}",
            ("integer of 5001 digits",),
            None,
        ),
        (
            "/completions",
            b'{"model": "srm", "prompt": "go", "seed": -' + b"9" * 30 + b"}",
            ("integer of 30 digits",),
            None,
        ),
        ("/completions", b"[" * 15000, ("nested more than 64 levels",), None),
        (
            "/completions",
            b'{"model": "srm", "prompt": "go", "x": ' + b"[" * 70 + b"]" * 70 + b"}",
            ("nested more than 64 levels",),
            "x" + ".0" * 63,  # the 65th level: the body is the first
        ),
        (
            "/chat/completions",
            b'{"model": "srm", ' + USER.encode() + b', "chat_template_kwargs": {"messages": []}}',
            ("may not set messages",),
            "chat_template_kwargs",
        ),
        (
            "/chat/completions",
            b'{"model": "srm", ' + USER.encode() + b', "chat_template_kwargs": {"tools": 5}}',
            ("may not set tools",),
            "chat_template_kwargs",
        ),
    ],
    ids=[
        "surrogate-in-chat-content",
        "surrogate-in-chat-content-rankguide",
        "surrogate-in-a-text-part",
        "surrogate-in-template-kwargs",
        "integer-of-5000-digits",
        "integer-of-30-digits",
        "nested-arrays-unparseable",
        "nested-arrays-in-a-field",
        "template-kwarg-messages",
        "template-kwarg-tools",
    ],
)
def test_server_hostile_json_is_400_not_500(
    server: httpx.Client, path: str, raw: bytes, needles: tuple[str, ...], param: str | None
) -> None:
    response = server.post(path, content=raw, headers={"content-type": "application/json"})
    assert openai_error(response, 400, *needles)["param"] == param
    # The connection stays usable: the next request on the pool is answered.
    assert server.post("/completions", json={"model": "srm", "prompt": "go", "max_tokens": 1})


def test_server_200000_nested_brackets_within_the_body_limit(tiny_pair: tuple[Path, Path]) -> None:
    config = load_config(None, overrides=tiny_data(tiny_pair))
    app = build_app_from_config(config, limits=ServerLimits(max_tokens=64))
    raw = b"[" * 200_000  # 200 kB: under the default 1 MiB limit, 200,000 levels deep
    with InProcessServer(app) as running, httpx.Client(base_url=running.v1, timeout=60) as http:
        for path in ("/completions", "/chat/completions"):
            response = http.post(path, content=raw, headers={"content-type": "application/json"})
            openai_error(response, 400, "nested more than 64 levels")


def test_server_streaming_bad_prompt_ends_with_an_error_event(server: httpx.Client) -> None:
    body = {"model": "srm", "prompt": LONG_QUESTION, "stream": True}
    with server.stream("POST", "/completions", json=body) as stream:
        events = [line[6:] for line in stream.iter_lines() if line.startswith("data: ")]
    assert events and events[-1] != "[DONE]"
    assert json.loads(events[-1])["error"]["type"] == "invalid_request_error"
    # The server still answers well-formed requests afterwards.
    ok = server.post("/completions", json={"model": "srm", "prompt": "go", "max_tokens": 2})
    assert ok.status_code == 200


# --------------------------------------------------------------------------- chat models


@pytest.fixture(scope="module")
def chat_models(tiny_pair: tuple[Path, Path]) -> dict[str, Any]:
    from langchain_rankguide.chat_models import ChatRankGuide, ChatSteeredHuggingFace

    small = {"routing": {"calibration": None, "policy": "srm"}, "steps": {"max_steps": 2}}
    return {
        "hf": ChatSteeredHuggingFace(model=str(tiny_pair[0]), max_tokens=4),
        "rankguide": ChatRankGuide(
            model=f"rankguide:{tiny_pair[0]}+{tiny_pair[1]}", model_kwargs=small
        ),
    }


@pytest.mark.parametrize("which", ["hf", "rankguide"])
def test_chat_models_refuse_bad_input_with_typed_errors(
    chat_models: dict[str, Any], which: str
) -> None:
    from langchain_core.messages import HumanMessage

    from langchain_rankguide.chat_models.messages import MessageFormatError

    model = chat_models[which]
    image = HumanMessage(content=[{"type": "image_url", "image_url": {"url": "http://x/y.png"}}])
    with pytest.raises(MessageFormatError, match="reads text only"):
        model.invoke([image])
    with pytest.raises(InputError, match="SRM's context window of 512"):
        model.invoke(LONG_QUESTION)
    with pytest.raises(ValueError, match="empty conversation"):
        model.invoke([])


@pytest.mark.parametrize("which", ["hf", "rankguide"])
def test_chat_models_refuse_non_utf8_text_with_a_typed_error(
    chat_models: dict[str, Any], which: str
) -> None:
    with pytest.raises(RankGuideError, match="not valid Unicode"):
        chat_models[which].invoke("go \udcff")


def test_cli_empty_policy_and_thread_id_without_checkpoint_are_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--policy ''`` and ``--thread-id`` with nothing to resume were silently ignored."""
    assert_one_line_error(
        *cli(capsys, "run", "--policy", "", "--json", "go")[::2], "routing.policy", "got ''"
    )
    assert_one_line_error(
        *cli(capsys, "run", "--thread-id", "t1", "--json", "go")[::2],
        "--thread-id needs a checkpoint",
    )
