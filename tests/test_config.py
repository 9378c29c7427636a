"""Tests of the configuration: loading, validation messages, paths, secrets, CLI and docs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from langchain_rankguide.cli import main
from langchain_rankguide.config import (
    DOCS_MARKER,
    HFLocalLRMConfig,
    OpenAICompatibleLRMConfig,
    RankGuideConfig,
    config_json_schema,
    config_reference_markdown,
    default_yaml_text,
    dump_default_yaml,
    load_config,
    merge_overrides,
    parse_config,
)
from langchain_rankguide.config._errors import model_classes
from langchain_rankguide.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
REMOTE = {"provider": "openai_compatible", "base_url": "http://localhost:8000/v1", "model": "m"}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def error_of(data: Any, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="cfg.yaml", **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith("cfg.yaml: "), message
    return message


# --------------------------------------------------------------------------- defaults


def test_defaults_load_and_equal_model_defaults() -> None:
    cfg = load_config(None)
    assert cfg == RankGuideConfig()
    assert cfg.version == 1
    assert cfg.srm.model == "demo:srm" and cfg.srm.threads == 1 and cfg.srm.signal_layers is None
    assert isinstance(cfg.lrm, HFLocalLRMConfig) and cfg.lrm.model == "demo:lrm"
    assert cfg.steps.delimiter == "\n\n" and cfg.steps.answer_markers == ["Answer:"]
    assert cfg.routing.policy == "rankguide" and cfg.routing.calibration == "demo"
    assert cfg.signals.numerical_eps == pytest.approx(1e-3)


def test_embedded_defaults_file_is_the_generated_starter() -> None:
    # Regenerate with: rankguide config init --out langchain_rankguide/defaults/demo.yaml --force
    assert default_yaml_text() == dump_default_yaml()


@pytest.mark.parametrize("comments", [False, True])
def test_yaml_round_trip(comments: bool) -> None:
    cfg = parse_config(
        {
            "lrm": {**REMOTE, "extra_body": {"x": [1, "a\nb"], "y": None}, "api_key_env": "K"},
            "srm": {"signal_layers": [1, 3], "threads": None},
            "prompt": {
                "system": 'Say "hi"\tnow',
                "chat_template_kwargs": {"enable_thinking": True},
            },
            "steps": {"end_markers": ["</think>"], "delimiter": "\n\n"},
            "signals": {
                "numerical_eps": 1e-7,
                "extra": ["rank.stable"],
                "reflection_cues": ["Wait"],
            },
            "routing": {"threshold": -0.25, "policy": "rank", "max_escalations": 4},
        }
    )
    text = cfg.to_yaml(comments=comments)
    assert parse_config(yaml.safe_load(text)) == cfg
    assert RankGuideConfig().to_yaml() != text


def test_every_field_is_documented() -> None:
    def walk(model: type[BaseModel]) -> None:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            for sub in model_classes(field.annotation):
                walk(sub)

    walk(RankGuideConfig)


# --------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"sampels": {}}, "at the top level"),
        ({"srm": {"thread": 2}}, "in srm"),
        ({"lrm": {"dtyp": "auto"}}, "in lrm"),
        ({"lrm": {**REMOTE, "moed": "chat"}}, "in lrm"),
        ({"lrm": {**REMOTE, "timeouts": {"reed": 1.0}}}, "in lrm.timeouts"),
        ({"lrm": {**REMOTE, "retries": {"max_attempt": 2}}}, "in lrm.retries"),
        ({"prompt": {"systme": "x"}}, "in prompt"),
        ({"steps": {"delimeter": "\n"}}, "in steps"),
        ({"signals": {"windw": 4}}, "in signals"),
        ({"routing": {"treshold": 0.5}}, "in routing"),
        ({"steering": {"enable": True}}, "in steering"),
        ({"sampling": {"temprature": 1.0}}, "in sampling"),
        ({"checkpoint": {"sqlite": "x.db"}}, "in checkpoint"),
    ],
)
def test_unknown_key_names_its_section(data: dict[str, Any], where: str) -> None:
    message = error_of(data)
    assert "unknown" in message and where in message
    assert "did you mean" in message


def test_unknown_key_message_exact() -> None:
    assert error_of({"routing": {"treshold": 0.5}}) == (
        "cfg.yaml: unknown key 'treshold' in routing (did you mean 'threshold'?)"
    )


def test_key_of_other_provider_is_explained() -> None:
    message = error_of({"lrm": {"base_url": "http://x"}})
    assert "unknown key 'base_url' in lrm" in message
    assert "openai_compatible" in message


# --------------------------------------------------------------------------- types and ranges


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"srm": {"threads": 0}}, "srm.threads: must be >= 1 (got 0)"),
        ({"srm": {"threads": "2"}}, "srm.threads: must be an integer (got '2')"),
        ({"srm": {"threads": 1.5}}, "srm.threads: must be an integer"),
        ({"srm": {"dtype": "fp16"}}, "srm.dtype: must be one of 'auto', 'float32'"),
        ({"srm": {"device": "gpu"}}, "srm.device: must be 'cpu', 'cuda'"),
        ({"srm": {"device": "cuda:x"}}, "srm.device:"),
        ({"srm": {"signal_layers": [2, -1]}}, "srm.signal_layers[1]: must be >= 0 (got -1)"),
        ({"srm": {"signal_layers": [2, 2]}}, "srm.signal_layers: layers must be unique"),
        ({"srm": {"signal_layers": []}}, "srm.signal_layers: must not be empty"),
        ({"srm": {"trust_remote_code": "yes"}}, "srm.trust_remote_code: must be true or false"),
        ({"srm": {"model": 3}}, "srm.model: must be a string (got 3)"),
        ({"srm": []}, "srm: must be a mapping (got a list)"),
        (
            {"lrm": {"provider": "openai"}},
            "lrm.provider: must be one of 'hf_local', 'openai_compatible'",
        ),
        ({"lrm": {**REMOTE, "base_url": "localhost:8000"}}, "lrm.base_url: must be an http"),
        ({"lrm": {**REMOTE, "timeouts": {"read": 0}}}, "lrm.timeouts.read: must be > 0"),
        ({"lrm": {**REMOTE, "timeouts": {"connect": -1.0}}}, "lrm.timeouts.connect: must be > 0"),
        (
            {"lrm": {**REMOTE, "retries": {"max_attempts": 0}}},
            "lrm.retries.max_attempts: must be >= 1",
        ),
        (
            {"lrm": {**REMOTE, "retries": {"backoff_max_s": 0.1}}},
            "lrm.retries.backoff_max_s: must be >= backoff_base_s",
        ),
        (
            {"lrm": {**REMOTE, "mode": "responses"}},
            "lrm.mode: must be one of 'completions', 'chat'",
        ),
        ({"lrm": {**REMOTE, "on_failure": "retry"}}, "lrm.on_failure: must be one of"),
        ({"lrm": {"provider": "openai_compatible", "model": "m"}}, "lrm.base_url: is required"),
        (
            {"prompt": {"user_template": "Solve it."}},
            "prompt.user_template: must contain the placeholder '{question}'",
        ),
        ({"steps": {"delimiter": ""}}, "steps.delimiter: must not be empty"),
        ({"steps": {"max_step_tokens": 0}}, "steps.max_step_tokens: must be >= 1"),
        ({"steps": {"thinking_budget": -5}}, "steps.thinking_budget: must be >= 1"),
        ({"steps": {"end_markers": "</think>"}}, "steps.end_markers: must be a list"),
        ({"steps": {"final_answer_by": "both"}}, "steps.final_answer_by: must be one of"),
        ({"signals": {"window": 1}}, "signals.window: must be >= 2 (got 1)"),
        ({"signals": {"energy_eta": 1.5}}, "signals.energy_eta: must be <= 1"),
        ({"signals": {"numerical_eps": 0.0}}, "signals.numerical_eps: must be > 0"),
        (
            {"signals": {"extra": ["rank.stabel"]}},
            "signals.extra: unknown signal 'rank.stabel'; did you mean 'rank.stable'?",
        ),
        ({"routing": {"policy": "rankgide"}}, "did you mean 'rankguide'?"),
        (
            {"routing": {"rank_signal": "rank.window.efective"}},
            "routing.rank_signal: unknown signal",
        ),
        ({"routing": {"random_rate": 1.5}}, "routing.random_rate: must be <= 1"),
        ({"routing": {"specreason_accept": 10}}, "routing.specreason_accept: must be <= 9"),
        ({"routing": {"revalidation_streak": 1}}, "routing.revalidation_streak: must be >= 2"),
        ({"routing": {"max_escalations": -1}}, "routing.max_escalations: must be >= 0"),
        ({"routing": {"threshold": float("nan")}}, "routing.threshold: must be a finite number"),
        (
            {"steering": {"enabled": True}},
            "steering.vector: is required when steering.enabled is true",
        ),
        ({"steering": {"positions": "prompt"}}, "steering.positions: must be one of"),
        ({"sampling": {"temperature": -0.1}}, "sampling.temperature: must be >= 0"),
        ({"sampling": {"top_p": 0}}, "sampling.top_p: must be > 0"),
        ({"sampling": {"top_k": -1}}, "sampling.top_k: must be >= 0"),
        ({"version": 2}, "version: unsupported config version 2"),
        ({"checkpoint": {"backend": "postgress"}}, "did you mean 'postgres'?"),
        (
            {"checkpoint": {"backend": "sqlite"}},
            "checkpoint.sqlite_path: is required when checkpoint.backend is sqlite",
        ),
        (
            {"checkpoint": {"backend": "postgres", "sqlite_path": "runs.sqlite"}},
            "checkpoint.sqlite_path: must be null when checkpoint.backend is postgres",
        ),
        (
            {"checkpoint": {"sqlite_path": "r.sqlite", "postgres_url": "postgresql://u@h/db"}},
            "checkpoint.postgres_url: set sqlite_path or postgres_url, not both",
        ),
        ({"checkpoint": {"postgres_url": 5432}}, "checkpoint.postgres_url: must be a string"),
    ],
)
def test_bad_values_name_the_field_path(data: dict[str, Any], expected: str) -> None:
    assert expected in error_of(data)


def test_several_problems_in_one_line() -> None:
    message = error_of({"srm": {"threads": 0}, "routing": {"policy": "x", "treshold": 1.0}})
    assert message.startswith("cfg.yaml: 3 problems: ")
    for part in ("srm.threads", "routing.policy", "'treshold'"):
        assert part in message


def test_model_validate_raises_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^<dict>: sampling\.seed: must be an integer"):
        RankGuideConfig.model_validate({"sampling": {"seed": "x"}})
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse_config(["srm"])


# --------------------------------------------------------------------------- files


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "srm:\n  threads: 2\n routing: x\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML at line 3"):
        load_config(path)


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "dup.yaml", "srm:\n  threads: 2\n  threads: 3\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'threads' at line 3.*first is at line 2"):
        load_config(path)


def test_yaml_python_tags_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "evil.yaml", "srm: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="invalid YAML at line 1"):
        load_config(path)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=re.escape(f"config file not found: {missing}")):
        load_config(missing)
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_non_mapping_top_level(tmp_path: Path) -> None:
    path = write(tmp_path / "list.yaml", "- srm\n- lrm\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: the top level must be a mapping.*a list"):
        load_config(path)


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path / "empty.yaml", "# nothing\n")) == RankGuideConfig()


def test_empty_sections_mean_defaults(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "srm:\nlrm:\nrouting:\n  policy: srm\n")
    cfg = load_config(path)
    assert cfg.srm == RankGuideConfig().srm and cfg.lrm == RankGuideConfig().lrm


def test_non_string_keys(tmp_path: Path) -> None:
    assert "srm: keys must be strings (got 1)" in error_of({"srm": {1: 2}})
    message = error_of({"prompt": {"chat_template_kwargs": {1: True}}})
    assert "prompt.chat_template_kwargs: keys must be strings" in message


def test_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "srm:\n  threads: 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: srm.threads: must be >= 1 (got 0)"


# --------------------------------------------------------------------------- paths


def test_missing_model_path_names_the_path(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "srm:\n  model: ./models/srm\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"srm.model: path does not exist: {tmp_path / 'models' / 'srm'}" in str(info.value)
    path = write(tmp_path / "d.yaml", "lrm:\n  model: /no/such/lrm\n")
    with pytest.raises(ConfigError, match=r"lrm\.model: path does not exist: /no/such/lrm"):
        load_config(path)


def test_relative_paths_resolve_against_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "conf"
    (conf_dir / "models" / "srm").mkdir(parents=True)
    (conf_dir / "tok").mkdir()
    write(conf_dir / "cal.json", "{}")
    write(conf_dir / "vec.safetensors", "")
    path = write(
        conf_dir / "c.yaml",
        "srm:\n  model: models/srm\n"
        "lrm:\n  provider: openai_compatible\n  base_url: http://h/v1\n  model: big\n"
        "  tokenizer: ./tok\n"
        "routing:\n  calibration: cal.json\n"
        "steering:\n  enabled: true\n  vector: vec.safetensors\n"
        "checkpoint:\n  sqlite_path: runs/db.sqlite\n",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(Path("..") / "conf" / "c.yaml")
    assert cfg.srm.model == str(conf_dir / "models" / "srm")
    assert isinstance(cfg.lrm, OpenAICompatibleLRMConfig)
    assert cfg.lrm.tokenizer == str(conf_dir / "tok")
    assert cfg.lrm.model == "big"
    assert cfg.routing.calibration == str(conf_dir / "cal.json")
    assert cfg.steering.vector == str(conf_dir / "vec.safetensors")
    assert cfg.checkpoint.sqlite_path == str(conf_dir / "runs" / "db.sqlite")
    # resolved paths are absolute, so the dumped YAML reads back equal from anywhere
    assert parse_config(yaml.safe_load(cfg.to_yaml())) == cfg
    assert path.exists()


def test_missing_calibration_and_vector_name_the_path(tmp_path: Path) -> None:
    message = error_of(
        {"routing": {"calibration": "cal.json"}, "steering": {"vector": "v.safetensors"}},
        base_dir=tmp_path,
    )
    assert f"routing.calibration: path does not exist: {tmp_path / 'cal.json'}" in message
    assert f"steering.vector: path does not exist: {tmp_path / 'v.safetensors'}" in message


def test_hub_ids_and_demo_names_are_kept(tmp_path: Path) -> None:
    cfg = parse_config(
        {"srm": {"model": "Qwen/Qwen3-4B"}, "lrm": {"model": "gpt2"}}, base_dir=tmp_path
    )
    assert cfg.srm.model == "Qwen/Qwen3-4B" and cfg.lrm.model == "gpt2"
    cfg = parse_config({"srm": {"model": "demo:lrm"}, "lrm": {"model": "demo:srm"}})
    assert (cfg.srm.model, cfg.lrm.model) == ("demo:lrm", "demo:srm")
    assert "unknown demo model 'demo:big'" in error_of({"srm": {"model": "demo:big"}})
    assert "path does not exist" in error_of({"srm": {"model": "a/b/c"}}, base_dir=tmp_path)


def test_calibration_demo_and_null() -> None:
    assert parse_config({"routing": {"calibration": None}}).routing.calibration is None
    assert parse_config({"routing": {"calibration": "demo"}}).routing.calibration == "demo"


# --------------------------------------------------------------------------- secrets


def test_api_key_read_from_env_at_use_time(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test-DO-NOT-LEAK-1234567890"
    monkeypatch.setenv("RANKGUIDE_TEST_KEY", secret)
    cfg = parse_config({"lrm": {**REMOTE, "api_key_env": "RANKGUIDE_TEST_KEY"}})
    assert isinstance(cfg.lrm, OpenAICompatibleLRMConfig)
    key = cfg.lrm.api_key()
    assert key is not None and key.get_secret_value() == secret
    for text in (
        repr(cfg),
        str(cfg),
        str(cfg.model_dump()),
        cfg.model_dump_json(),
        cfg.to_yaml(comments=True),
        repr(key),
        str(key),
    ):
        assert secret not in text
    monkeypatch.setenv("RANKGUIDE_TEST_KEY", "sk-rotated")
    rotated = cfg.lrm.api_key()
    assert rotated is not None and rotated.get_secret_value() == "sk-rotated"
    monkeypatch.delenv("RANKGUIDE_TEST_KEY")
    with pytest.raises(
        ConfigError, match=r"lrm\.api_key_env: environment variable 'RANKGUIDE_TEST_KEY'"
    ):
        cfg.lrm.api_key()
    assert cfg.lrm.api_key(required=False) is None
    assert parse_config({"lrm": REMOTE}).lrm.api_key() is None  # type: ignore[union-attr]


@pytest.mark.parametrize("key", ["api_key", "token", "password"])
def test_literal_secret_keys_are_rejected(key: str) -> None:
    secret = "sk-literal-secret-value"
    message = error_of({"lrm": {**REMOTE, key: secret}})
    assert f"lrm.{key}: secrets must not be written in the config file" in message
    assert "lrm.api_key_env" in message
    assert secret not in message


def test_key_pasted_into_api_key_env_is_not_echoed() -> None:
    secret = "sk-proj-abc123-pasted"
    message = error_of({"lrm": {**REMOTE, "api_key_env": secret}})
    assert "lrm.api_key_env: must be the NAME of an environment variable" in message
    assert secret not in message


@pytest.mark.parametrize(
    "url,expected",
    [
        ("postgresql://app:pw-LEAK-1@db:5432/runs", "holds a password; secrets must not be"),
        ("postgresql://app@db/runs?password=pw-LEAK-1", "holds a password; secrets must not be"),
        ("mysql://app:pw-LEAK-1@db/runs", "must be a postgresql:// URL"),
        ("host=db password=pw-LEAK-1", "must be a postgresql:// URL"),
    ],
    ids=["password-in-authority", "password-in-query", "not-postgres", "keyword-dsn"],
)
def test_postgres_url_with_a_password_or_another_scheme_is_refused_without_echo(
    url: str, expected: str
) -> None:
    message = error_of({"checkpoint": {"postgres_url": url}})
    assert f"checkpoint.postgres_url: {expected}" in message
    assert "pw-LEAK-1" not in message


def test_url_pasted_into_postgres_url_env_is_not_echoed() -> None:
    message = error_of({"checkpoint": {"postgres_url_env": "postgresql://a:pw-LEAK-1@db/x"}})
    assert "checkpoint.postgres_url_env: must be the NAME of an environment variable" in message
    assert "pw-LEAK-1" not in message


@pytest.mark.parametrize(
    "section,store",
    [
        ({}, None),
        ({"sqlite_path": "runs.sqlite"}, "sqlite"),
        ({"postgres_url": "postgresql://app@db.internal:5432/runs"}, "postgres"),
        ({"backend": "postgres"}, "postgres"),
    ],
)
def test_the_checkpoint_store_follows_the_backend_or_what_is_set(
    section: dict[str, Any], store: str | None
) -> None:
    config = parse_config({"checkpoint": section}, source="cfg.yaml")
    assert config.checkpoint.store == store
    assert config.checkpoint.postgres_url_env == "RANKGUIDE_POSTGRES_URL"


# --------------------------------------------------------------------------- overrides


def test_overrides_deep_merge(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.yaml",
        "routing:\n  threshold: 0.5\n  policy: entropy\nsampling:\n  seed: 3\n",
    )
    cfg = load_config(path, overrides={"routing": {"policy": "srm"}, "sampling.seed": 9})
    assert cfg.routing.policy == "srm" and cfg.routing.threshold == 0.5
    assert cfg.sampling.seed == 9
    with pytest.raises(ConfigError, match=r"c\.yaml: routing\.policy: must be one of"):
        load_config(path, overrides={"routing": {"policy": "nope"}})


def test_overrides_on_defaults_and_provider_switch() -> None:
    cfg = load_config(None, overrides={"lrm": REMOTE, "srm": {"threads": 4}})
    assert isinstance(cfg.lrm, OpenAICompatibleLRMConfig) and cfg.lrm.base_url.endswith("/v1")
    assert cfg.srm.threads == 4 and cfg.srm.model == "demo:srm"


def test_merge_overrides_is_pure() -> None:
    base = {"a": {"b": 1, "c": {"d": 2}}, "e": [1]}
    merged = merge_overrides(base, {"a": {"c": {"d": 3}}, "a.b": 5, "e": [2]})
    assert merged == {"a": {"b": 5, "c": {"d": 3}}, "e": [2]}
    assert base == {"a": {"b": 1, "c": {"d": 2}}, "e": [1]}


def test_override_paths_resolve_against_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "work" / "m").mkdir(parents=True)
    conf = write(tmp_path / "conf" / "c.yaml", "version: 1\n")
    monkeypatch.chdir(tmp_path / "work")
    cfg = load_config(conf, overrides={"srm": {"model": "m"}, "checkpoint.sqlite_path": "r.db"})
    assert cfg.srm.model == str(tmp_path / "work" / "m")
    assert cfg.checkpoint.sqlite_path == str(tmp_path / "work" / "r.db")


# --------------------------------------------------------------------------- CLI


def test_cli_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path / "good.yaml", "routing:\n  policy: lrm\n")
    assert main(["config", "validate", str(good)]) == 0
    assert "valid" in capsys.readouterr().out
    assert main(["config", "validate", "--show", str(good)]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["routing"]["policy"] == "lrm"

    bad = write(tmp_path / "bad.yaml", "srm:\n  threads: 0\n")
    assert main(["config", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err == f"rankguide: error: {bad}: srm.threads: must be >= 1 (got 0)\n"
    assert main(["config", "validate", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_cli_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema == json.loads(json.dumps(config_json_schema()))
    assert set(schema["properties"]) == set(RankGuideConfig.model_fields)
    assert schema["additionalProperties"] is False


def test_cli_init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rankguide.yaml"
    assert main(["config", "init", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("#") and "# The small reasoning model" in text
    assert load_config(out) == RankGuideConfig()
    capsys.readouterr()
    out.write_text("routing:\n  policy: srm\n")
    assert main(["config", "init", "--out", str(out)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert out.read_text() == "routing:\n  policy: srm\n"
    assert main(["config", "init", "--out", str(out), "--force"]) == 0
    assert out.read_text() == text
    assert main(["config", "init", "--out", "-"]) == 0
    assert capsys.readouterr().out.endswith(text)


def test_cli_init_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["config", "init"]) == 0
    assert (tmp_path / "rankguide.yaml").exists()


def test_cli_docs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "docs"]) == 0
    assert capsys.readouterr().out == config_reference_markdown()
    doc = write(tmp_path / "c.md", f"# Intro\n\nhand-written\n\n{DOCS_MARKER}\nstale\n")
    assert main(["config", "docs", "--update", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# Intro\n\nhand-written\n\n") and "stale" not in text
    assert text.split(DOCS_MARKER, 1)[1].lstrip("\n") == config_reference_markdown()


# --------------------------------------------------------------------------- docs and imports


def test_docs_are_in_sync_with_the_schema() -> None:
    # Regenerate with: rankguide config docs --update docs/configuration.md
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert DOCS_MARKER in text
    assert text.split(DOCS_MARKER, 1)[1].lstrip("\n") == config_reference_markdown()


def test_reference_names_every_field() -> None:
    reference = config_reference_markdown()

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            path = f"{prefix}{name}"
            subs = model_classes(field.annotation)
            if len(subs) == 1 and path != "lrm":
                walk(subs[0], f"{path}.")
            elif subs:
                for sub in subs:
                    walk(sub, f"{path}.")
            else:
                assert f"| `{path}` |" in reference, path

    walk(RankGuideConfig, "")


def test_import_is_light() -> None:
    code = (
        "import sys, langchain_rankguide.config as c; c.load_config(None); "
        "heavy = [m for m in ('torch', 'transformers', 'langchain_core', 'langgraph') "
        "if m in sys.modules]; print(heavy)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert result.stdout.strip() == "[]"
