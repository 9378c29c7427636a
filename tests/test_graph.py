"""The LangGraph state machine on real (tiny) models: policies, streaming, durable resume."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
from pathlib import Path

import pytest

from langchain_rankguide.config import load_config
from langchain_rankguide.engine import ModelRegistry, StepEngine, StepSettings
from langchain_rankguide.errors import InputError
from langchain_rankguide.graph import build_graph
from langchain_rankguide.lrm import render_prompt
from langchain_rankguide.pipeline import RankGuidePipeline

ROOT = Path(__file__).resolve().parents[1]
STEP_CAP = 24
MAX_STEPS = 10


def tiny_config(tiny_pair, **routing):
    routing.setdefault("calibration", None)
    return load_config(
        None,
        overrides={
            "srm": {"model": str(tiny_pair[0])},
            "lrm": {"model": str(tiny_pair[1])},
            "routing": routing,
            "steps": {
                "max_steps": MAX_STEPS,
                "max_step_tokens": STEP_CAP,
                "thinking_budget": 200,
                "force_answer": False,
            },
        },
    )


def alone(loaded, n_steps: int) -> list[str]:
    """Steps of one model alone through the engine (greedy)."""
    engine = StepEngine(loaded, settings=StepSettings(max_step_tokens=STEP_CAP))
    engine.start(render_prompt(loaded.tokenizer, [{"role": "user", "content": "go"}]))
    return [draft.text for draft in engine.generate_steps(n_steps)]


def run(graph, config=None, question="go"):
    events, final = [], {}
    for mode, event in graph.stream(
        {"question": question}, config, stream_mode=["custom", "values"]
    ):
        if mode == "custom":
            events.append(event)
        else:
            final = event
    return events, final


@pytest.mark.parametrize("policy,author", [("srm", 0), ("lrm", 1)])
def test_single_model_policies_equal_each_model_alone(tiny_pair, policy, author):
    pipeline = RankGuidePipeline(tiny_config(tiny_pair, policy=policy))
    events, final = run(build_graph(pipeline))
    loaded = pipeline.srm if author == 0 else pipeline.lrm_loaded()
    texts = [s["text"] for s in final["steps"]]
    assert texts == alone(loaded, len(texts))
    assert {s["author"] for s in final["steps"]} == {policy}
    idle = "lrm" if policy == "srm" else "srm"
    assert final["usage"][idle] == {"prefill_tokens": 0, "decode_tokens": 0}
    assert len(events) == len(final["steps"])


def test_stream_events_follow_the_schema(tiny_pair):
    graph = build_graph(tiny_config(tiny_pair, policy="random", random_rate=0.5))
    events, final = run(graph)
    assert events and all(e["type"] == "rankguide.step" for e in events)
    assert [e["step"]["text"] for e in events] == [s["text"] for s in final["steps"]]
    authors = {e["step"]["author"] for e in events}
    assert authors == {"srm", "lrm"}, "random at 0.5 over 10 steps should use both models"
    json.dumps(final, allow_nan=False)
    last = events[-1]["usage"]
    assert last == final["usage"]


def test_forced_escalation_records_the_discarded_draft(tiny_pair):
    graph = build_graph(tiny_config(tiny_pair, policy="rank", threshold=-1e9))
    _, final = run(graph)
    step = final["steps"][0]
    assert step["author"] == "lrm" and step["escalated"] and step["decision"] == "escalate"
    assert step["draft_text"] and step["draft_latency_s"] > 0
    assert step["latency_s"] >= step["draft_latency_s"]
    assert step["signals"]["rank.window.effective"] is not None


def test_budget_rules_cap_escalations(tiny_pair):
    pipeline = RankGuidePipeline(tiny_config(tiny_pair, policy="lrm", max_escalations=2))
    _, final = run(build_graph(pipeline))
    assert sum(s["escalated"] for s in final["steps"]) == 2
    assert final["steps"][2]["author"] == "srm"


def test_per_run_overrides_through_configurable(tiny_pair):
    graph = build_graph(tiny_config(tiny_pair, policy="srm"))
    _, final = run(graph, {"configurable": {"policy": "lrm"}})
    assert {s["author"] for s in final["steps"]} == {"lrm"}


@pytest.mark.parametrize(
    "configurable,message",
    [
        ({"steering": True}, "no steering vector"),
        ({"threshold": float("nan")}, "threshold must be a finite number"),
        ({"steering_scale": float("inf")}, "steering_scale must be a finite number"),
    ],
)
def test_run_options_that_cannot_be_honoured_fail_before_any_step(tiny_pair, configurable, message):
    graph = build_graph(tiny_config(tiny_pair, policy="srm"))
    with pytest.raises(InputError, match=message):
        run(graph, {"configurable": configurable})


def _resume_matches(tiny_pair, tmp_path, stop_after_node: str, skip: int) -> None:
    config = tiny_config(tiny_pair, policy="random", random_rate=0.4)
    _, reference = run(build_graph(config))

    db = tmp_path / f"runs-{stop_after_node}.sqlite"
    from langgraph.checkpoint.sqlite import SqliteSaver

    saver = SqliteSaver(sqlite3.connect(db, check_same_thread=False))
    graph = build_graph(RankGuidePipeline(config), checkpointer=saver)
    thread = {"configurable": {"thread_id": "t1"}}
    seen = 0
    for update in graph.stream({"question": "go"}, thread, stream_mode="updates"):
        if stop_after_node in update:
            seen += 1
            if seen == skip:
                break  # the run is interrupted here, as a killed process would be
    assert graph.get_state(thread).next, "the run should be unfinished"

    # A new pipeline and model registry: no engine or cache survives, as in a new process.
    fresh = RankGuidePipeline(config, registry=ModelRegistry())
    saver2 = SqliteSaver(sqlite3.connect(db, check_same_thread=False))
    resumed = build_graph(fresh, checkpointer=saver2).invoke(None, thread)
    strip = ("latency_s", "draft_latency_s")
    clean = [{k: v for k, v in s.items() if k not in strip} for s in resumed["steps"]]
    expected = [{k: v for k, v in s.items() if k not in strip} for s in reference["steps"]]
    assert clean == expected
    assert resumed["stop_reason"] == reference["stop_reason"]


def test_resume_after_a_committed_step_equals_uninterrupted(tiny_pair, tmp_path):
    _resume_matches(tiny_pair, tmp_path, "guard", 3)


def test_resume_between_draft_and_guard_equals_uninterrupted(tiny_pair, tmp_path):
    _resume_matches(tiny_pair, tmp_path, "srm_step", 4)


def test_langgraph_json_graphs_import_and_compile():
    spec = json.loads((ROOT / "langgraph.json").read_text())
    for name, target in spec["graphs"].items():
        path, attr = target.split(":")
        module_spec = importlib.util.spec_from_file_location(f"graphs_{name}", ROOT / path)
        assert module_spec and module_spec.loader
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        graph = getattr(module, attr)
        nodes = set(graph.get_graph().nodes)
        if name == "rankguide":
            assert nodes >= {"start", "srm_step", "guard", "lrm_step", "finish"}
        else:
            assert len(nodes) > 2


def test_a_run_without_an_answer_gets_a_forced_one(tiny_pair):
    config = load_config(
        None,
        overrides={
            "srm": {"model": str(tiny_pair[0])},
            "lrm": {"model": str(tiny_pair[1])},
            "routing": {"policy": "srm", "calibration": None},
            "steps": {
                "max_steps": 3,
                "max_step_tokens": STEP_CAP,
                "answer_markers": ["Answer:"],
                "force_answer": True,
            },
        },
    )
    _, final = run(build_graph(config))
    last = final["steps"][-1]
    assert final["stop_reason"] == "max_steps"
    assert last["is_answer"] and last["decision"] == "forced"
    assert last["text"].startswith("Answer: ") and "answer forced" in last["reason"]
    assert final["answer"] is not None and final["answer_author"] == "srm"


def test_demo_pair_with_a_forced_escalation():
    from langchain_rankguide.commands.run import DEMO_QUESTION

    config = load_config(None, overrides={"routing": {"policy": "rank", "threshold": -1e9}})
    _, final = run(build_graph(config), question=DEMO_QUESTION)
    assert final["steps"] and all(s["author"] == "lrm" for s in final["steps"])
    assert all(s["escalated"] and s["draft_text"] for s in final["steps"])
    assert final["answer"] is not None and final["correct"] is not None
    assert final["usage"]["srm"]["decode_tokens"] > 0 and final["usage"]["lrm"]["decode_tokens"] > 0
