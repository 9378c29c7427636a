"""Security: loopback by default, bearer token in constant time, API keys never written anywhere,
no remote code unless configured, no pickle, and nothing in a request used as a file path.

A hostile remote LRM is bounded: a reply is read no further than its size bound and a request
no longer than its deadlines, whatever the server sends.

Proven elsewhere (not repeated): 401 for a missing/wrong/partial key (test_server
``test_bearer_token_is_required``); the remote client never leaks its key in errors, reprs or
logs, even when a hostile server echoes it (test_remote_client ``test_api_key_never_leaks``);
literal secrets in a config file are refused without echo (test_config
``test_literal_secret_keys_are_rejected``, ``test_key_pasted_into_api_key_env_is_not_echoed``);
YAML Python tags are refused (test_config ``test_yaml_python_tags_are_refused``).
"""

from __future__ import annotations

import hmac
import json
import logging
import pickle
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import torch
from pydantic import SecretStr
from remote_servers import FakeServer
from server_fixtures import (
    REPO,
    InProcessServer,
    ServedProcess,
    child_env,
    rankguide_command,
    tiny_config_data,
    write_config,
)

from langchain_rankguide.cli import build_parser, main
from langchain_rankguide.config import RankGuideConfig, load_config
from langchain_rankguide.engine import ModelRegistry
from langchain_rankguide.errors import CalibrationError
from langchain_rankguide.pipeline import RankGuidePipeline
from langchain_rankguide.schemas import Calibration
from langchain_rankguide.server.app import create_app
from langchain_rankguide.server.handlers import Generation, Outcome, Piece
from langchain_rankguide.steering import SteeringError, SteeringVector

KEY = "sk-rg-secret-5f4e3d2c1b0a"
PACKAGE = REPO / "langchain_rankguide"


# --------------------------------------------------------------------------- serving


def start_serve_default_host(config: Path, *args: str, env: dict[str, str]) -> ServedProcess:
    """``rankguide serve --port 0`` WITHOUT ``--host``: whatever it binds is the default."""
    process = subprocess.Popen(
        rankguide_command("serve", "--config", str(config), "--port", "0", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=REPO,
    )
    output: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if "rankguide serve listening on " in line:
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    ready.wait(timeout=120)
    url = next((line.rsplit(" ", 1)[-1].strip() for line in output if "listening" in line), "")
    if not url:
        process.kill()
        process.wait(timeout=10)
        raise RuntimeError("rankguide serve did not start:\n" + "".join(output))
    return ServedProcess(process, url, output)


def test_serve_binds_loopback_only_and_keeps_its_key_out_of_logs(
    tiny_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"
    config = write_config(tmp_path / "tiny.yaml", tiny_config_data(*tiny_pair))
    env = child_env(RG_TEST_SERVE_KEY=KEY)
    served = start_serve_default_host(
        config, "--api-key-env", "RG_TEST_SERVE_KEY", "--log-level", "debug", env=env
    )
    try:
        assert served.url.startswith("http://127.0.0.1:")
        listening = [
            c.laddr
            for c in psutil.Process(served.process.pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
        body = {"model": "srm", "prompt": "go", "max_tokens": 2}
        with httpx.Client(base_url=served.v1, timeout=60) as http:
            assert http.get("/models").status_code == 401
            wrong = http.post("/completions", json=body, headers={"Authorization": "Bearer x"})
            assert wrong.status_code == 401 and KEY not in wrong.text
            near = http.post(
                "/completions", json=body, headers={"Authorization": f"Bearer {KEY[:-1]}"}
            )
            assert near.status_code == 401 and KEY[:-1] not in near.text
            good = {"Authorization": f"Bearer {KEY}"}
            assert http.post("/completions", json=body, headers=good).status_code == 200
            bad = http.post("/completions", json={"model": "nope"}, headers=good)
            assert bad.status_code == 400 and KEY not in bad.text
    finally:
        served.stop()
    log = "".join(served.output)
    assert "GET /v1/models" in log or "POST /v1/completions" in log, "debug logs were captured"
    assert KEY not in log and KEY[:-1] not in log


class _Echo:
    def _run(self) -> Generation:
        yield Piece("ok")
        return Outcome("stop", 1, 1)

    def chat(self, request: Any, cancelled: Callable[[], bool]) -> Generation:
        return self._run()

    def complete(self, request: Any, cancelled: Callable[[], bool]) -> Generation:
        return self._run()


def test_bearer_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    app = create_app({"echo": _Echo()}, api_key=SecretStr(KEY))
    with InProcessServer(app) as server, httpx.Client(base_url=server.v1) as http:
        sent = ["Bearer nope", f"Bearer {KEY}", ""]
        codes = [
            http.get("/models", headers={"Authorization": value} if value else {}).status_code
            for value in sent
        ]
    assert codes == [401, 200, 401]
    assert [a for a, _ in compared] == [s.encode() for s in sent]
    assert all(b == f"Bearer {KEY}".encode() for _, b in compared)


def test_nothing_in_a_request_is_used_as_a_file_path(
    tiny_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    from langchain_rankguide.server.app import ServerLimits, build_app_from_config

    vector = SteeringVector(torch.ones(32), layer=1).save(tmp_path / "v.safetensors")
    config = load_config(None, overrides=tiny_config_data(*tiny_pair))
    app = build_app_from_config(config, limits=ServerLimits(max_tokens=8))
    go = [{"role": "user", "content": "go"}]
    with InProcessServer(app) as server, httpx.Client(base_url=server.v1, timeout=60) as http:
        # Model names are looked up in a fixed table; a path (even of a real model) is not loaded.
        for name in (str(tiny_pair[1]), "../../etc/passwd", "/etc/passwd", str(tiny_pair[0])):
            response = http.post("/completions", json={"model": name, "prompt": "go"})
            assert response.status_code == 404, name
        # Per-request extras cannot name files: steering vectors, calibrations, checkpoints.
        for key, value in (
            ("steering_vector", str(vector)),
            ("calibration", str(tmp_path / "c.json")),
            ("checkpoint", str(tmp_path / "runs.sqlite")),
            ("thread_id", "../x"),
        ):
            body = {"model": "rankguide", "messages": go, "rankguide": {key: value}}
            response = http.post("/chat/completions", json=body)
            assert response.status_code == 400, key
            assert response.json()["error"]["param"] == f"rankguide.{key}"
        # A client-supplied chat template (it could read nothing, but it is not even rendered).
        body = {"model": "srm", "messages": go, "chat_template_kwargs": {"chat_template": "x"}}
        assert http.post("/chat/completions", json=body).status_code == 400
    assert not (tmp_path / "runs.sqlite").exists()
    assert not (tmp_path / "c.json").exists()


# --------------------------------------------------------------------------- API keys


@pytest.fixture
def fake_lrm() -> Iterator[dict[str, FakeServer]]:
    servers = {
        "ok": FakeServer("ok").start(),
        "echo": FakeServer("echo", behaviour="status", status=500, echo_auth_in_error=True).start(),
        # A 200 reply whose text carries the key (an LRM that repeats its prompt or headers).
        "leak": FakeServer("leak", script=f"12 + 5 = 17, key {KEY}.\n\nAnswer: 17").start(),
    }
    yield servers
    for server in servers.values():
        server.stop()


def remote_config(tiny_pair: tuple[Path, Path], url: str, path: Path, **lrm: Any) -> Path:
    section = {
        "provider": "openai_compatible",
        "base_url": url,
        "model": "fake-lrm",
        "tokenizer": str(tiny_pair[1]),
        "api_key_env": "RG_TEST_LRM_KEY",
        "timeouts": {"connect": 1.0, "read": 5.0},
        "retries": {"max_attempts": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.02},
        **lrm,
    }
    data = tiny_config_data(tiny_pair[0], section, steps={"max_steps": 4})
    return write_config(path, data)


def stored_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


def test_api_key_never_in_checkpoints_traces_logs_or_errors(
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tiny_pair: tuple[Path, Path],
    fake_lrm: dict[str, FakeServer],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("RG_TEST_LRM_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    # 1. A healthy remote LRM: steps escalate to it; the run is checkpointed.
    ok_cfg = remote_config(tiny_pair, fake_lrm["ok"].url, tmp_path / "ok.yaml")
    db = tmp_path / "runs.sqlite"
    argv = ["run", "--config", str(ok_cfg), "--checkpoint", str(db), "--thread-id", "t1"]
    assert main([*argv, "--json", "go"]) == 0
    out, err = capsys.readouterr()
    assert any(s["author"] == "lrm" for s in json.loads(out)["steps"]), "the LRM was used"
    assert fake_lrm["ok"].last.headers["Authorization"] == f"Bearer {KEY}"  # it was sent
    texts += [out, err]
    # The live trace of the same run, rendered for a terminal.
    assert main([*argv[:-1], "t2", "go"]) == 0
    texts += list(capsys.readouterr())
    # 2. A hostile LRM that echoes the Authorization header in its errors, with fallback.
    echo_cfg = remote_config(
        tiny_pair, fake_lrm["echo"].url, tmp_path / "echo.yaml", on_failure="fallback_srm"
    )
    argv = ["run", "--config", str(echo_cfg), "--checkpoint", str(db), "--thread-id", "t3"]
    assert main([*argv, "--json", "go"]) == 0
    out, err = capsys.readouterr()
    fallbacks = [s["fallback"] for s in json.loads(out)["steps"] if s["fallback"]]
    assert fallbacks, "the failure was recorded on the steps"
    texts += [out, err]
    # 3. An LRM whose 200 reply echoes the key: scrubbed before anything stores or prints it.
    leak_cfg = remote_config(tiny_pair, fake_lrm["leak"].url, tmp_path / "leak.yaml")
    argv = ["run", "--config", str(leak_cfg), "--checkpoint", str(db), "--thread-id", "t4"]
    assert main([*argv, "--policy", "lrm", "--json", "go"]) == 0
    out, err = capsys.readouterr()
    assert "key ***" in out, "the LRM's step reached the trace, scrubbed"
    texts += [out, err]
    # 4. The same with on_failure: fail -> one error line, exit 2.
    fail_cfg = remote_config(tiny_pair, fake_lrm["echo"].url, tmp_path / "fail.yaml")
    assert main(["run", "--config", str(fail_cfg), "--policy", "lrm", "go"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("rankguide: error: ") and len(err.strip().splitlines()) == 1
    texts += [out, err, caplog.text]
    texts += [repr(load_config(echo_cfg)), load_config(echo_cfg).to_yaml()]
    for text in texts:
        assert KEY not in text
    stored = stored_bytes(db)
    assert KEY.encode() not in stored
    rows = sqlite3.connect(db).execute("select count(*) from checkpoints").fetchone()[0]
    assert rows > 0


# --------------------------------------------------------------------------- hostile LRM


@pytest.fixture
def hostile_lrm() -> Iterator[dict[str, FakeServer]]:
    servers = {
        "huge": FakeServer("huge", behaviour="huge").start(),  # 20 MB for any max_tokens
        "trickle": FakeServer("trickle", behaviour="trickle", trickle_s=0.2).start(),
    }
    yield servers
    for server in servers.values():
        server.stop()


def test_a_hostile_lrm_is_bounded_in_size_and_time(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tiny_pair: tuple[Path, Path],
    hostile_lrm: dict[str, FakeServer],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("RG_TEST_LRM_KEY", KEY)
    # R1: 20 MB answered for a 24-token step: cut at its bound, not retried, one line, exit 2.
    huge = remote_config(tiny_pair, hostile_lrm["huge"].url, tmp_path / "huge.yaml")
    started = time.monotonic()
    assert main(["run", "--config", str(huge), "--policy", "lrm", "go"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "lrm.reply_limit" in err, err
    assert hostile_lrm["huge"].count == 1
    # With fallback_srm the SRM's draft stands in, and the step says why.
    fallback = remote_config(
        tiny_pair, hostile_lrm["huge"].url, tmp_path / "fb.yaml", on_failure="fallback_srm"
    )
    assert main(["run", "--config", str(fallback), "--policy", "lrm", "--json", "go"]) == 0
    steps = json.loads(capsys.readouterr().out)["steps"]
    assert steps and all("longer than" in (s["fallback"] or "") for s in steps)
    # R2: one byte every 0.2 s never trips the 5 s read timeout; the deadlines end it.
    trickle = remote_config(
        tiny_pair,
        hostile_lrm["trickle"].url,
        tmp_path / "trickle.yaml",
        timeouts={"connect": 1.0, "read": 5.0, "request": 0.5, "step": 1.0},
    )
    assert main(["run", "--config", str(trickle), "--policy", "lrm", "go"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "lrm.timeouts" in err, err
    assert hostile_lrm["trickle"].count == 2  # the request deadline is retried, once here
    assert time.monotonic() - started < 30


# --------------------------------------------------------------------------- remote code


def evil_model(tiny_pair: tuple[Path, Path], folder: Path, marker: Path) -> Path:
    """The tiny SRM plus ``auto_map`` custom code that, if ever imported, writes ``marker``."""
    shutil.copytree(tiny_pair[0], folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.Evil"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import LlamaConfig as EvilConfig, LlamaForCausalLM as Evil\n"
    )
    return folder


def test_trust_remote_code_is_off_unless_configured(
    tiny_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    defaults = RankGuideConfig()
    assert defaults.srm.trust_remote_code is False
    assert defaults.lrm.trust_remote_code is False  # type: ignore[union-attr]
    markers = {trust: tmp_path / f"remote-code-ran-{trust}" for trust in (False, True)}
    configs = {}
    for trust, marker in markers.items():
        data = tiny_config_data(
            evil_model(tiny_pair, tmp_path / f"evil-{trust}", marker), tiny_pair[1]
        )
        data["srm"]["trust_remote_code"] = trust
        configs[trust] = write_config(tmp_path / f"trust-{trust}.yaml", data)
    # Trusting runs in its own process: the imported custom code must not leak into this one.
    script = (
        "import sys; from langchain_rankguide.config import load_config; "
        "from langchain_rankguide.pipeline import RankGuidePipeline; "
        "print(RankGuidePipeline(load_config(sys.argv[1])).srm.identity)"
    )
    trusting = subprocess.Popen(
        [sys.executable, "-c", script, str(configs[True])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(HF_MODULES_CACHE=str(tmp_path / "hf-modules")),
        cwd=tmp_path,
    )
    untrusted = RankGuidePipeline(load_config(configs[False]), registry=ModelRegistry()).srm
    assert type(untrusted.model).__module__.startswith("transformers.")
    _, err = trusting.communicate(timeout=180)
    assert trusting.returncode == 0, err[-2000:]
    results = {trust: marker.exists() for trust, marker in markers.items()}
    # Off by default: the model loads with the built-in architecture and its code never runs.
    # The same folder with trust_remote_code: true does run it, so the check is real.
    assert results == {False: False, True: True}


# --------------------------------------------------------------------------- pickle


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: evidence that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


@pytest.fixture
def payload(tmp_path: Path) -> tuple[bytes, Path]:
    marker = tmp_path / "pickle-ran"
    data = pickle.dumps(_Payload(marker))
    pickle.loads(data).close()  # the payload works ...
    assert marker.exists()
    marker.unlink()  # ... and is now armed again
    return data, marker


def test_steering_and_calibration_files_are_never_unpickled(
    capsys: pytest.CaptureFixture[str],
    tiny_pair: tuple[Path, Path],
    payload: tuple[bytes, Path],
    tmp_path: Path,
) -> None:
    data, marker = payload
    for name in ("vector.safetensors", "vector.pt", "vector.bin"):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SteeringError, match="not a readable safetensors"):
            SteeringVector.load(tmp_path / name)
    torch_file = tmp_path / "torch-save.safetensors"
    torch.save({"vector": _Payload(marker)}, torch_file)  # a torch.save zip holding the payload
    with pytest.raises(SteeringError):
        SteeringVector.load(torch_file)
    for name in ("cal.json", "cal.pkl"):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CalibrationError, match="not JSON text"):
            Calibration.load(tmp_path / name)
    # Through configuration files and the CLI: one error line, nothing executed.
    cases = {
        "steer.yaml": {"steering": {"enabled": True, "vector": str(tmp_path / "vector.pt")}},
        "cal.yaml": {"routing": {"policy": "rankguide", "calibration": str(tmp_path / "cal.json")}},
    }
    for name, sections in cases.items():
        config = write_config(tmp_path / name, tiny_config_data(*tiny_pair, **sections))
        assert main(["run", "--config", str(config), "go"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("rankguide: error: ") and len(err.strip().splitlines()) == 1
    assert main(["steer", "show", str(tmp_path / "vector.bin")]) == 2
    capsys.readouterr()
    assert not marker.exists(), "a pickle was executed"


UNSAFE_LOADERS = re.compile(
    r"\bpickle\.loads?\(|\btorch\.load\(|\bjoblib\.|\bdill\.|\bmarshal\.loads?\("
    r"|allow_pickle\s*=\s*True|\bweights_only\s*=\s*False|\byaml\.(unsafe_)?load\((?![^)]*Loader)"
    r"|(?<![.\w])eval\(|(?<![.\w])exec\("
)


def test_package_source_has_no_unsafe_loader() -> None:
    """No module of the package calls a loader that can execute code from a file."""
    offenders = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if UNSAFE_LOADERS.search(line) and not line.lstrip().startswith("#")
    ]
    assert not offenders, "\n".join(offenders)
