"""End to end over loopback HTTP: the collaboration with its LRM behind ``rankguide serve``.

The LRM of these runs is the served ``lrm`` model (the tiny LRM in the ``served`` process, see
``server_fixtures.py``), reached with ``lrm.provider: openai_compatible``; the same runs with the
LRM loaded in this process (``hf_local``) are the reference. Under greedy decoding both must
commit the same steps. The fault-policy tests point the LRM at a port nobody listens on.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from remote_servers import refused_url
from server_fixtures import (
    ServedProcess,
    child_env,
    rankguide_command,
    tiny_config_data,
    write_config,
)

from langchain_rankguide.config import load_config
from langchain_rankguide.graph import build_graph
from langchain_rankguide.remote import LRMUnavailableError

pytest_plugins = ["server_fixtures"]

KEY = "sk-e2e-fake-key-0a1b2c3d4e"
KEY_ENV = "RANKGUIDE_E2E_LRM_KEY"
FAST_RETRIES = {"max_attempts": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.02, "jitter": 0.0}
POLICIES = {
    "random": {},  # rate 0.5, seed 0: some steps escalate
    "rank": {"policy": "rank", "threshold": -1e9},  # every draft rejected, the LRM rewrites it
}
_REFERENCE: dict[str, dict[str, Any]] = {}


def remote_lrm(base_url: str, tokenizer: Path, **fields: Any) -> dict[str, Any]:
    return {
        "provider": "openai_compatible",
        "base_url": base_url,
        "model": "lrm",
        "mode": "completions",
        "tokenizer": str(tokenizer),
        "api_key_env": None,
        "timeouts": {"connect": 2.0, "read": 60.0},
        "retries": FAST_RETRIES,
        **fields,
    }


def run_graph(config_path: Path, configurable: dict[str, Any], checkpointer: Any = None):
    graph = build_graph(load_config(str(config_path)), checkpointer=checkpointer)
    return graph, graph.invoke({"question": "go"}, {"configurable": configurable})


def reference(tiny_pair: tuple[Path, Path], tmp_path: Path, policy: str) -> dict[str, Any]:
    """The run with the LRM in this process (computed once per policy)."""
    if policy not in _REFERENCE:
        path = write_config(tmp_path / f"local-{policy}.yaml", tiny_config_data(*tiny_pair))
        _REFERENCE[policy] = run_graph(path, dict(POLICIES[policy]))[1]
    return _REFERENCE[policy]


def summary(state: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (s["index"], s["author"], s["text"], s["finish_reason"], s["is_answer"])
        for s in state["steps"]
    ]


@pytest.fixture(scope="module")
def cli_run(
    served: ServedProcess, tiny_pair, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[str]]:
    """``rankguide run --config remote.yaml --json`` against the served LRM, started early.

    The process starts with the module's first test and runs while the in-process tests do;
    :func:`test_rankguide_run_cli_against_the_served_lrm` reads its result.
    """
    folder = tmp_path_factory.mktemp("cli")
    data = tiny_config_data(tiny_pair[0], remote_lrm(served.v1, tiny_pair[1]))
    path = write_config(folder / "remote.yaml", data)
    process = subprocess.Popen(
        rankguide_command("run", "go", "--config", str(path), "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=folder,
    )
    yield process
    if process.poll() is None:
        process.kill()
        process.communicate(timeout=10)


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("mode", ["completions", "chat"])
def test_remote_lrm_commits_the_same_steps_as_the_local_one(
    served, cli_run, tiny_pair, tmp_path, mode: str, policy: str
) -> None:
    local = reference(tiny_pair, tmp_path, policy)
    data = tiny_config_data(tiny_pair[0], remote_lrm(served.v1, tiny_pair[1], mode=mode))
    _, remote = run_graph(write_config(tmp_path / "remote.yaml", data), dict(POLICIES[policy]))
    assert summary(remote) == summary(local)
    escalated = [s for s in remote["steps"] if s["author"] == "lrm"]
    assert escalated, "the policy escalates steps"
    if policy == "rank":
        assert all(s["author"] == "lrm" and s["draft_text"] for s in remote["steps"])
    assert remote["answer"] == local["answer"] and remote["stop_reason"] == local["stop_reason"]
    # The documented differences: servers return no token ids, and every remote request
    # re-sends the prompt and trace, so the LRM's prefill count is larger (decode counts
    # differ by the delimiter tokens the server cut off and the client put back).
    assert all("lrm" not in s["token_ids"] for s in escalated)
    assert all(s["fallback"] is None for s in remote["steps"])
    assert remote["usage"]["srm"] == local["usage"]["srm"]
    assert remote["usage"]["lrm"]["prefill_tokens"] > local["usage"]["lrm"]["prefill_tokens"]
    assert remote["usage"]["lrm"]["decode_tokens"] > 0


def _sqlite(tmp_path: Path) -> Any:
    from langgraph.checkpoint.sqlite import SqliteSaver

    return SqliteSaver(sqlite3.connect(tmp_path / "runs.sqlite", check_same_thread=False))


def _assert_no_key(tmp_path: Path, *texts: str) -> None:
    for text in texts:
        assert KEY not in text
    blob = (tmp_path / "runs.sqlite").read_bytes()
    assert KEY.encode() not in blob, "the key reached the checkpoint"


def test_fallback_srm_keeps_every_step_when_the_lrm_is_unreachable(
    tiny_pair, tmp_path, monkeypatch, caplog
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    url = refused_url()
    lrm = remote_lrm(url, tiny_pair[1], on_failure="fallback_srm", api_key_env=KEY_ENV)
    path = write_config(tmp_path / "fallback.yaml", tiny_config_data(tiny_pair[0], lrm))
    thread = {"thread_id": "fallback-run"}
    with caplog.at_level(logging.DEBUG):
        graph, state = run_graph(path, thread, checkpointer=_sqlite(tmp_path))
    local = reference(tiny_pair, tmp_path, "random")
    steps = state["steps"]
    assert state["stop_reason"] is not None and steps
    assert all(s["author"] == "srm" for s in steps), "every step is the SRM's"
    # The router's draws do not depend on the text: the steps the local run gave the LRM are
    # the ones that fell back here.
    common = min(len(steps), len(local["steps"]))
    for mine, theirs in zip(steps[:common], local["steps"][:common], strict=True):
        assert (mine["fallback"] is not None) == (theirs["author"] == "lrm")
    fell_back = [s for s in steps if s["fallback"]]
    assert fell_back
    for step in fell_back:
        assert step["fallback"].startswith(f"lrm_unavailable: no response from {url}/completions: ")
        assert step["reason"].startswith(f"LRM unavailable: no response from {url}/")
        assert step["decision"] == "forced" and step["author"] == "srm"
        assert step["text"] and step["token_ids"]["srm"]
    # No step is lost: the committed trace is the SRM's own greedy trace, step by step.
    srm_path = write_config(tmp_path / "srm.yaml", tiny_config_data(*tiny_pair))
    _, alone = run_graph(srm_path, {"policy": "srm"})
    assert [s["text"] for s in steps] == [s["text"] for s in alone["steps"]][: len(steps)]
    assert [s["index"] for s in steps] == list(range(len(steps)))
    assert state["usage"]["lrm"] == {"prefill_tokens": 0, "decode_tokens": 0}
    saved = graph.get_state({"configurable": thread}).values
    assert saved["steps"] == steps
    _assert_no_key(tmp_path, json.dumps(saved), caplog.text)


def test_fail_policy_raises_a_typed_error_naming_the_url(
    tiny_pair, tmp_path, monkeypatch, caplog
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    url = refused_url()
    lrm = remote_lrm(url, tiny_pair[1], on_failure="fail", api_key_env=KEY_ENV)
    path = write_config(tmp_path / "fail.yaml", tiny_config_data(tiny_pair[0], lrm))
    thread = {"thread_id": "failing-run"}
    saver = _sqlite(tmp_path)
    with caplog.at_level(logging.DEBUG), pytest.raises(LRMUnavailableError) as caught:
        run_graph(path, thread, checkpointer=saver)
    error = caught.value
    assert error.url == f"{url}/completions" and error.url in str(error)
    assert error.status is None and error.attempts == FAST_RETRIES["max_attempts"]
    assert error.retryable
    # The steps committed before the first escalation are in the checkpoint.
    local = reference(tiny_pair, tmp_path, "random")
    first_lrm = next(s["index"] for s in local["steps"] if s["author"] == "lrm")
    graph = build_graph(load_config(str(path)), checkpointer=saver)
    snapshot = graph.get_state({"configurable": thread})
    assert snapshot.next == ("lrm_step",), "the run stopped at the LRM step"
    saved = snapshot.values
    assert [s["text"] for s in saved["steps"]] == [s["text"] for s in local["steps"][:first_lrm]]
    _assert_no_key(tmp_path, str(error), repr(error), json.dumps(saved), caplog.text)


def test_rankguide_run_cli_against_the_served_lrm(cli_run, tiny_pair, tmp_path) -> None:
    stdout, stderr = cli_run.communicate(timeout=120)
    assert cli_run.returncode == 0, stderr
    result = json.loads(stdout)
    local = reference(tiny_pair, tmp_path, "random")
    assert [(s["author"], s["text"]) for s in result["steps"]] == [
        (s["author"], s["text"]) for s in local["steps"]
    ]
    assert {s["author"] for s in result["steps"]} == {"srm", "lrm"}
    assert result["answer"] == local["answer"] and result["stop_reason"] == "answer"
    assert result["usage"]["lrm"]["decode_tokens"] > 0
    assert all(s["fallback"] is None for s in result["steps"])


def test_demo_tokenizer_reference_loads_the_demo_model_folder(tiny_pair, monkeypatch) -> None:
    """``lrm.tokenizer: demo:lrm`` (as in docs/serving.md) loads the embedded model's files."""
    from langchain_rankguide.engine import loading
    from langchain_rankguide.remote.backend import _load_tokenizer

    monkeypatch.setattr(loading, "demo_model_dir", lambda name: tiny_pair[1])
    tokenizer = _load_tokenizer("demo:lrm")
    assert (
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "go"}], tokenize=False, add_generation_prompt=True
        )
        == "<s>user: go\n<s>assistant: "
    )


def test_the_documented_remote_yaml_runs_against_the_served_lrm(served, tiny_pair, tmp_path):
    """The ``remote.yaml`` of docs/serving.md validates, and runs with the tiny pair swapped in."""
    import re

    import yaml

    docs = Path(__file__).resolve().parents[1] / "docs" / "serving.md"
    found = re.search(r"`remote\.yaml`:\n\n```yaml\n(.*?)```", docs.read_text(), re.DOTALL)
    assert found, "docs/serving.md lost its remote.yaml example"
    (tmp_path / "remote.yaml").write_text(found.group(1))
    documented = load_config(str(tmp_path / "remote.yaml"))
    lrm = documented.lrm
    assert lrm.provider == "openai_compatible" and lrm.model == "lrm"
    assert lrm.base_url == "http://127.0.0.1:8000/v1" and lrm.tokenizer == "demo:lrm"
    data = yaml.safe_load(found.group(1))
    mine = tiny_config_data(tiny_pair[0], {**data["lrm"], "base_url": served.v1})
    mine["lrm"].update(tokenizer=str(tiny_pair[1]), retries=FAST_RETRIES)
    _, state = run_graph(write_config(tmp_path / "mine.yaml", mine), {})
    local = reference(tiny_pair, tmp_path, "random")
    assert summary(state) == summary(local)
