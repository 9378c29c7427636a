"""Durability: a ``rankguide run`` killed with SIGKILL resumes from its checkpoint (SQLite or
PostgreSQL) with no committed step lost, duplicated or printed twice; numerical faults escalate
with a recorded reason.

The killed processes are real: ``rankguide run --checkpoint DB --thread-id T ...`` with the test
hook of ``tests/hooks/sitecustomize.py`` on its path, which wraps one graph node so that its Nth
call SIGKILLs the process once the state the node was handed is on disk. ``guard:N`` is
therefore a kill between the Nth SRM draft and its guard (the draft is checkpointed, the
decision is not), ``lrm_step:N`` a kill with an escalation pending, ``srm_step:N`` a kill
between committed steps. Another run is killed from outside at an arbitrary moment while it
prints its trace, and two more (one per store) right after their live trace printed a step. The
resume runs in this process (``cli.main``) and must equal an uninterrupted run step for step.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from server_fixtures import (
    REPO,
    hooked_env,
    rankguide_command,
    start_serve,
    tiny_config_data,
    write_config,
)

from langchain_rankguide.checkpoints import open_checkpointer
from langchain_rankguide.cli import main
from langchain_rankguide.config import CheckpointConfig, load_config
from langchain_rankguide.engine.hooks import find_decoder_layers
from langchain_rankguide.graph import build_graph
from langchain_rankguide.pipeline import RunSession

THREAD = "durable-1"
QUESTION = "go"

# The reference run: srm_step guard | srm_step lrm_step x3 | srm_step guard | srm_step lrm_step.
KILL_POINTS = ["guard:2", "lrm_step:2", "srm_step:3"]


def strip(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Step records without wall-clock fields."""
    return [
        {k: v for k, v in s.items() if k not in ("latency_s", "draft_latency_s")} for s in steps
    ]


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code = main(["run", *argv, "--json", QUESTION])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def saved_state(config_path: Path, store: Path | str) -> Any:
    """The run's latest checkpoint, read as a fresh process would."""
    saver = open_checkpointer(CheckpointConfig(), target=str(store), setup=False)
    graph = build_graph(load_config(config_path), checkpointer=saver)
    return graph.get_state({"configurable": {"thread_id": THREAD}})


@pytest.fixture(scope="module")
def config_path(tiny_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("durable")
    # The random policy at 0.5 mixes SRM and LRM steps; the run ends in an answer at step 6.
    return write_config(folder / "tiny.yaml", tiny_config_data(*tiny_pair))


@pytest.fixture(scope="module")
def reference(config_path: Path) -> dict[str, Any]:
    """The uninterrupted run (no checkpointer), through the CLI."""
    from langchain_rankguide.commands.run import result_json

    state = build_graph(load_config(config_path)).invoke({"question": QUESTION})
    return result_json(state, 0.0)


def child(
    config_path: Path, store: Path | str, env: dict[str, str], **popen: Any
) -> subprocess.Popen[Any]:
    argv = ["run", "--config", str(config_path), "--checkpoint", str(store), "--thread-id", THREAD]
    return subprocess.Popen(rankguide_command(*argv, QUESTION), env=env, cwd=REPO, **popen)


@pytest.fixture(scope="module")
def killed(config_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One real CLI process per kill point, run side by side; each dies by SIGKILL."""
    folder = tmp_path_factory.mktemp("killed")
    procs: dict[str, tuple[subprocess.Popen[Any], Path]] = {}
    for point in KILL_POINTS:
        db = folder / f"{point.replace(':', '-')}.sqlite"
        env = hooked_env(RG_TEST_KILL_AT=point, RG_TEST_KILL_DB=str(db), RG_TEST_KILL_THREAD=THREAD)
        procs[point] = (
            child(config_path, db, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE),
            db,
        )
    out: dict[str, Path] = {}
    for point, (proc, db) in procs.items():
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == -signal.SIGKILL, f"{point}: not killed\n{err.decode()[-2000:]}"
        out[point] = db
    return out


@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkilled_run_resumes_without_losing_or_repeating_a_step(
    capsys: pytest.CaptureFixture[str],
    config_path: Path,
    reference: dict[str, Any],
    killed: dict[str, Path],
    point: str,
) -> None:
    db = killed[point]
    node = point.split(":")[0]
    saved = saved_state(config_path, db)
    assert saved.next == (node,), f"killed before {node}, the checkpoint must resume there"
    committed = saved.values.get("steps", [])
    assert 0 < len(committed) < len(reference["steps"]), "the kill must land mid-run"
    if node in ("guard", "lrm_step"):
        pending = saved.values["pending"]
        assert pending is not None and pending["index"] == len(committed)
        if node == "guard":
            assert pending["text"], "the SRM draft itself is in the checkpoint"

    resumed = run_json(
        capsys, "--config", str(config_path), "--checkpoint", str(db), "--thread-id", THREAD
    )
    assert strip(resumed["steps"]) == strip(reference["steps"])
    assert [s["text"] for s in resumed["steps"][: len(committed)]] == [
        s["text"] for s in committed
    ], "the committed steps are kept as they were"
    assert resumed["answer"] == reference["answer"]
    assert resumed["stop_reason"] == reference["stop_reason"]
    # Tokens generated are counted once: a resumed draft is restored, not generated again.
    for model in ("srm", "lrm"):
        assert (
            resumed["usage"][model]["decode_tokens"] == reference["usage"][model]["decode_tokens"]
        )
    final = saved_state(config_path, db)
    assert final.next == ()
    assert [s["index"] for s in final.values["steps"]] == list(range(len(reference["steps"])))


def test_run_killed_from_outside_mid_trace_resumes(
    capsys: pytest.CaptureFixture[str],
    config_path: Path,
    reference: dict[str, Any],
    tmp_path: Path,
) -> None:
    """SIGKILL from outside at whatever moment the second step is printed."""
    db = tmp_path / "outside.sqlite"
    proc = child(
        config_path,
        db,
        hooked_env(RG_TEST_SLOW_S="0.05"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:  # the live trace: "[ 0] SRM accept ...", one header per step
        seen.append(line)
        if line.startswith("[ 1]"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    saved = saved_state(config_path, db)
    # Unfinished: no stop reason yet. (``next`` can be empty here: killed after a node's writes
    # were saved but before its step's checkpoint, the state shows those writes and no task
    # left in that step; resuming applies them and goes on.)
    assert saved.values.get("stop_reason") is None, "".join(seen)
    resumed = run_json(
        capsys, "--config", str(config_path), "--checkpoint", str(db), "--thread-id", THREAD
    )
    assert strip(resumed["steps"]) == strip(reference["steps"])


PRINTED = 2
"""The live trace kills its process right after it printed this step."""

STEP_LINE = re.compile(r"^\[\s*(\d+)\] (SRM|LRM) (\w+)", re.MULTILINE)


def printed_steps(trace: str) -> list[tuple[int, str, str]]:
    """The (index, author, decision) of each step a live trace printed, in order."""
    return [(int(i), author.lower(), decision) for i, author, decision in STEP_LINE.findall(trace)]


@pytest.fixture(scope="module")
def killed_after_print(
    request: pytest.FixtureRequest, config_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[str, str]]:
    """One real ``rankguide run`` per store (side by side), SIGKILLed by its own live trace
    right after it printed step ``PRINTED``: the store and what the process printed."""
    stores = {"sqlite": str(tmp_path_factory.mktemp("printed") / "printed.sqlite")}
    try:
        stores["postgres"] = request.getfixturevalue("postgres").database_url("printed")
    except pytest.skip.Exception:
        pass  # the postgres case skips with the fixture's reason
    procs = {
        kind: child(
            config_path,
            store,
            hooked_env(RG_TEST_KILL_AFTER_PRINT=str(PRINTED)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for kind, store in stores.items()
    }
    out = {}
    for kind, proc in procs.items():
        printed, err = proc.communicate(timeout=180)
        assert proc.returncode == -signal.SIGKILL, f"{kind}: not killed\n{err[-2000:]}"
        out[kind] = (stores[kind], printed)
    return out


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_printed_step_is_durable_and_printed_once(
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
    config_path: Path,
    reference: dict[str, Any],
    killed_after_print: dict[str, tuple[str, str]],
    kind: str,
) -> None:
    """Killed right after the live trace printed a step, the step is in the checkpoint; the
    resume prints only the rest, so the two traces hold every step exactly once."""
    if kind not in killed_after_print:
        request.getfixturevalue("postgres")  # skips with the reason
    store, first = killed_after_print[kind]
    before = printed_steps(first)
    assert [i for i, _, _ in before] == list(range(PRINTED + 1)), first
    saved = saved_state(config_path, store)
    assert len(saved.values["steps"]) == PRINTED + 1, "a printed step is not in the checkpoint"
    code = main(["run", "--config", str(config_path), "--checkpoint", store, "--thread-id",
                 THREAD, QUESTION])  # fmt: skip
    second, err = capsys.readouterr()
    assert code == 0, err
    assert f"resuming thread '{THREAD}' after {PRINTED + 1} committed steps" in second
    expected = [(i, s["author"], s["decision"]) for i, s in enumerate(reference["steps"])]
    assert before + printed_steps(second) == expected


CROSS_THREAD = "cross-worker-1"


def completion(url: str, thread_id: str | None) -> dict[str, Any]:
    """The demo question through the ``rankguide`` model, under the random policy, seed 1
    (the demo pair then writes SRM, LRM, LRM, SRM, SRM, SRM and answers 69)."""
    import httpx

    from langchain_rankguide.commands.run import DEMO_QUESTION

    extras: dict[str, Any] = {"policy": "random"}
    if thread_id is not None:
        extras["thread_id"] = thread_id
    body = {"model": "rankguide", "prompt": DEMO_QUESTION, "seed": 1, "rankguide": extras}
    reply = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def test_a_run_killed_on_one_worker_resumes_on_another(postgres: Any, tmp_path: Path) -> None:
    """``rankguide serve --workers 2`` on PostgreSQL with the demo models: the worker running a
    durable request is SIGKILLed with an escalation pending; the same request sent again is
    served by another process, which resumes the run to the uninterrupted run's steps and
    answer."""
    import httpx
    import psutil

    db = postgres.database_url("workers")
    config = write_config(
        tmp_path / "durable.yaml", {"version": 1, "checkpoint": {"backend": "postgres"}}
    )
    marker = tmp_path / "killed-pid"
    env = hooked_env(
        RANKGUIDE_POSTGRES_URL=db,
        RG_TEST_KILL_AT="lrm_step:2",
        RG_TEST_KILL_DB=db,
        RG_TEST_KILL_THREAD=CROSS_THREAD,
        RG_TEST_KILL_ONCE=str(marker),
    )
    server = start_serve(config, "--workers", "2", env=env)
    try:
        reference = completion(server.url, None)  # a plain run: no thread, no checkpoint
        with pytest.raises(httpx.TransportError):  # its worker dies mid-run
            completion(server.url, CROSS_THREAD)
        killed = int(marker.read_text())
        saved = open_checkpointer(CheckpointConfig(), target=db, setup=False)
        state = build_graph(load_config(), checkpointer=saved).get_state(
            {"configurable": {"thread_id": CROSS_THREAD}}
        )
        assert state.next == ("lrm_step",) and len(state.values["steps"]) == 2
        resumed = completion(server.url, CROSS_THREAD)
    finally:
        server.stop()
    gone = not psutil.pid_exists(killed) or psutil.Process(killed).status() == "zombie"
    assert gone and killed != server.process.pid, "the worker that ran it first is dead"
    ours, theirs = resumed["rankguide"], reference["rankguide"]
    assert [s["author"] for s in theirs["steps"]] == ["srm", "lrm", "lrm", "srm", "srm", "srm"]
    assert strip(ours["steps"]) == strip(theirs["steps"])
    assert resumed["choices"][0]["text"] == reference["choices"][0]["text"] == "69"
    assert ours["thread_id"] == CROSS_THREAD
    for model in ("srm", "lrm"):  # no token generated twice: the pending escalation resumed
        decoded = ours["usage_by_model"][model]["decode_tokens"]
        assert decoded == theirs["usage_by_model"][model]["decode_tokens"]


def test_a_thread_runs_in_one_place_at_a_time_across_savers(postgres: Any) -> None:
    """Two savers on one PostgreSQL database stand for two workers: while one holds a thread's
    lease the other is refused, and the lease is free again once released."""
    from langchain_rankguide.checkpoints import thread_lease
    from langchain_rankguide.errors import ThreadBusyError

    db = postgres.database_url("leases")
    first, second = (open_checkpointer(CheckpointConfig(), target=db) for _ in range(2))
    with thread_lease(first, "t"):
        with pytest.raises(ThreadBusyError, match="thread 't' is being run by another request"):
            with thread_lease(second, "t"):
                pass
        with thread_lease(second, "another thread"):
            pass
    with thread_lease(second, "t"):
        pass


# --------------------------------------------------------------------------- numerical faults


class NaNResidual:
    """An engine intervention that writes NaN into the residual stream entering one block while
    ``armed`` (the engine's ``interventions=`` protocol, like a steering vector)."""

    def __init__(self, layer: int) -> None:
        self.layer = layer
        self.armed = False
        self.fired = 0

    @contextmanager
    def __call__(self, model: Any, positions: torch.Tensor, input_ids: Any) -> Iterator[None]:
        def pre_hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if not self.armed:
                return None
            self.fired += 1
            if args:
                return (torch.full_like(args[0], float("nan")), *args[1:]), kwargs
            return args, {
                **kwargs,
                "hidden_states": torch.full_like(kwargs["hidden_states"], float("nan")),
            }

        block = find_decoder_layers(model)[self.layer]
        handle = block.register_forward_pre_hook(pre_hook, with_kwargs=True, prepend=True)
        try:
            yield
        finally:
            handle.remove()


def test_nan_hidden_states_at_one_step_escalate_with_a_reason(
    tiny_pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The rank policy with an unreachable threshold: only a numerical fault escalates.
    data = tiny_config_data(*tiny_pair, routing={"policy": "rank", "threshold": 1e9})
    config = load_config(None, overrides=data)
    clean = build_graph(config).invoke({"question": QUESTION})
    assert {s["author"] for s in clean["steps"]} == {"srm"}

    fault = NaNResidual(layer=1)  # the signal layer of the 2-block SRM
    broken_step = 2
    draft = RunSession.draft

    def draft_with_fault(self: RunSession, index: int, max_new: int, *, answer_phase: bool) -> Any:
        fault.armed = index == broken_step
        try:
            return draft(self, index, max_new, answer_phase=answer_phase)
        finally:
            fault.armed = False

    monkeypatch.setattr(RunSession, "draft", draft_with_fault)
    monkeypatch.setattr(RunSession, "_interventions", lambda self, loaded, n: [fault])
    state = build_graph(config).invoke({"question": QUESTION})
    assert fault.fired > 0
    json.dumps(state, allow_nan=False)  # the fault left no NaN in the state
    step = state["steps"][broken_step]
    assert step["author"] == "lrm" and step["escalated"] and step["decision"] == "escalate"
    assert step["failure_mode"] == "numerical_fault"
    assert "non-finite hidden states" in step["reason"]
    assert step["signals"]["rank.window.effective"] is None
    assert "non-finite" in step["signal_notes"]["rank.window.effective"]
    assert step["draft_text"] is not None, "the faulty draft is recorded, not committed"
    others = [s for s in state["steps"] if s["index"] != broken_step]
    assert all(s["failure_mode"] != "numerical_fault" and s["author"] == "srm" for s in others)
    # Before the fault the run is the clean run, step for step.
    assert strip(state["steps"][:broken_step]) == strip(clean["steps"][:broken_step])


@pytest.fixture(scope="module")
def inf_srm(tiny_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny SRM whose first MLP has infinite weights: every hidden state from
    block 1 on, and every logit, is NaN or infinite."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("inf") / "tiny-srm-inf"
    shutil.copytree(tiny_pair[0], folder)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.fill_(float("inf"))
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("temperature", [0.0, 0.8], ids=["greedy", "sampling"])
def test_model_with_infinite_weights_escalates_every_step_instead_of_crashing(
    capsys: pytest.CaptureFixture[str],
    tiny_pair: tuple[Path, Path],
    inf_srm: Path,
    tmp_path: Path,
    temperature: float,
) -> None:
    data = tiny_config_data(
        inf_srm,
        tiny_pair[1],
        routing={"policy": "rank", "threshold": 1e9},
        sampling={"temperature": temperature, "seed": 3},
        steps={"max_steps": 4},
    )
    config_path = write_config(tmp_path / "inf.yaml", data)
    result = run_json(capsys, "--config", str(config_path))  # exit 0, NaN-free JSON
    assert result["steps"]
    for step in result["steps"]:
        assert step["author"] == "lrm" and step["escalated"]
        assert step["failure_mode"] == "numerical_fault"
        assert "non-finite" in step["reason"]


def test_a_finished_run_is_immutable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Asking a finished thread again returns the stored result; another question is refused."""
    import sqlite3

    from langgraph.checkpoint.sqlite import SqliteSaver

    from langchain_rankguide.app import RankGuideApp
    from langchain_rankguide.config import load_config
    from langchain_rankguide.errors import InputError
    from langchain_rankguide.pipeline import RunOptions

    connection = sqlite3.connect(tmp_path / "ck.sqlite", check_same_thread=False)
    app = RankGuideApp(load_config(), checkpointer=SqliteSaver(connection))
    question = "Start at 72. Subtract 39, then add 14. What is the result?"
    first = app.invoke(question, RunOptions(policy="lrm"), run_id="t1")
    for _ in range(2):
        again = app.invoke(question, RunOptions(policy="lrm"), run_id="t1")
        assert (again.answer, again.steps) == (first.answer, first.steps)
    assert app.invoke(None, run_id="t1").answer == first.answer
    with pytest.raises(InputError, match="already finished a run on another question"):
        app.invoke("Start at 12. Add 5. What is the result?", run_id="t1")
    snapshot = app.graph.get_state({"configurable": {"thread_id": "t1"}})
    assert len(snapshot.values["steps"]) == len(first.steps)
