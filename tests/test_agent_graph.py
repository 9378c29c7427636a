"""The example agent graph (graphs/agent_graph.py): RankGuide as one node of a larger workflow."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk
from langgraph.checkpoint.memory import InMemorySaver

from langchain_rankguide.engine.loading import demo_model_dir

ROOT = Path(__file__).resolve().parents[1]
DEMO_READY = all((demo_model_dir(name) / "config.json").is_file() for name in ("srm", "lrm"))
PROBLEM = "Start at 12. Add 3. What is the result?"


def load_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("agent_graph", ROOT / "graphs" / "agent_graph.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def agent(tiny_pair, tmp_path_factory):
    config = tmp_path_factory.mktemp("agent") / "tiny.yaml"
    config.write_text(
        f"srm: {{model: {tiny_pair[0]}}}\nlrm: {{model: {tiny_pair[1]}}}\n"
        "routing: {policy: random, random_rate: 0.5, calibration: null}\n"
        "steps: {max_steps: 8, max_step_tokens: 24, answer_markers: [done]}\n"
    )
    return load_module().build_agent_graph(config, checkpointer=InMemorySaver(), max_tokens=64)


def test_module_graph_compiles_without_loading_weights():
    module = load_module()
    nodes = set(module.graph.get_graph().nodes)
    assert {"triage", "solve", "chat", "check"} <= nodes


def test_a_checkable_question_is_solved_checked_and_retried_with_the_lrm(agent):
    config = {"configurable": {"thread_id": "t-solve"}}
    out = agent.invoke({"messages": [("user", PROBLEM)]}, config)
    replies = [m for m in out["messages"] if isinstance(m, AIMessage)]
    first = replies[0].response_metadata
    assert first["model_provider"] == "rankguide" and first["steps"]
    if out["verified"] is False:
        # The tiny models get arithmetic wrong: one retry, every step by the LRM.
        assert len(replies) == 2 and out["attempts"] == 2
        assert {s["author"] for s in replies[1].response_metadata["steps"]} == {"lrm"}
    # The inner RankGuide run did not join this checkpointed thread as a subgraph.
    namespaces = {c.config["configurable"]["checkpoint_ns"] for c in agent.checkpointer.list(None)}
    assert namespaces == {""}


def test_other_questions_go_to_the_srm_and_tokens_stream(agent):
    config = {"configurable": {"thread_id": "t-chat"}}
    chunks = [
        chunk
        for chunk, meta in agent.stream(
            {"messages": [("user", "go")]}, config, stream_mode="messages"
        )
        if isinstance(chunk, AIMessageChunk) and meta["langgraph_node"] == "chat"
    ]
    assert len([c for c in chunks if c.content]) > 5
    final = agent.get_state(config).values["messages"][-1]
    assert final.response_metadata["model_provider"] == "huggingface"


def test_reasoning_steps_stream_from_the_solve_node(agent):
    config = {"configurable": {"thread_id": "t-stream"}}
    reasoning = [
        chunk.additional_kwargs["reasoning_content"]
        for chunk, meta in agent.stream(
            {"messages": [("user", PROBLEM)]}, config, stream_mode="messages"
        )
        if meta["langgraph_node"] == "solve"
        and isinstance(chunk, AIMessageChunk)
        and chunk.additional_kwargs.get("reasoning_content")
    ]
    assert reasoning


@pytest.mark.skipif(not DEMO_READY, reason="the embedded demo models are not trained yet")
def test_demo_models_solve_a_demo_problem():
    graph = load_module().build_agent_graph(max_tokens=256)
    out = graph.invoke({"messages": [("user", "Start at 12. Add 5. What is the result?")]})
    answer = out["messages"][-1]
    assert answer.response_metadata["steps"]
    assert out["verified"] is not None
