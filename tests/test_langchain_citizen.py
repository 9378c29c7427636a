"""RankGuide as a first-class LangChain and LangGraph citizen (issue 17), one finding per test.

Each test reproduces what a demanding user met -- graphs whose schemas LangGraph could not
describe on 3.11, a collaboration graph that was no chat graph, ``finish_reason="stop"`` on a
budget-truncated reply, token counts of 0, chat models that could not be pickled or serialized,
an agent graph outside the package -- and checks it is fixed. Tiny models; no weights load where
none are needed.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import warnings
from pathlib import Path
from typing import Any

import pytest
from langchain_core.load import Serializable, dumpd, dumps, loads
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    HumanMessage,
    SystemMessage,
    trim_messages,
)
from langgraph.checkpoint.memory import InMemorySaver

from langchain_rankguide.app import RankGuideApp
from langchain_rankguide.chat_models import ChatRankGuide, ChatSteeredHuggingFace
from langchain_rankguide.config import load_config
from langchain_rankguide.engine import MODELS, ModelRegistry
from langchain_rankguide.graph import build_graph
from langchain_rankguide.graphs import build_agent_graph
from langchain_rankguide.schemas import chat_finish_reason
from langchain_rankguide.server.handlers import RankGuideHandler
from langchain_rankguide.server.protocol import ChatCompletionRequest

ROOT = Path(__file__).resolve().parents[1]
NAMESPACES = ["langchain_rankguide"]
CLASSES: list[type[Serializable]] = [ChatRankGuide, ChatSteeredHuggingFace]
# A hosted-API key: the constructor drops it, with a warning.
HOSTED_KEY: dict[str, Any] = {"api_key": "sk-dropped-5678"}


def tiny_overrides(tiny_pair, **steps: Any) -> dict[str, Any]:
    return {
        "srm": {"model": str(tiny_pair[0])},
        "lrm": {"model": str(tiny_pair[1])},
        "routing": {"policy": "random", "random_rate": 0.5, "calibration": None},
        "steps": {
            "max_steps": 6,
            "max_step_tokens": 24,
            "answer_markers": ["done"],
            "force_answer": True,
            **steps,
        },
    }


@pytest.fixture(scope="module")
def graph(tiny_pair):
    return build_graph(load_config(None, overrides=tiny_overrides(tiny_pair)))


def tiny_rankguide(tiny_pair, **fields: Any) -> ChatRankGuide:
    model_kwargs = {
        "routing": {"calibration": None, "policy": "random", "random_rate": 0.5},
        "steps": {"max_steps": 8, "max_step_tokens": 24, "answer_markers": ["done"]},
    }
    return ChatRankGuide(
        model=f"rankguide:{tiny_pair[0]}+{tiny_pair[1]}", model_kwargs=model_kwargs, **fields
    )


def load_entry_point(path: str) -> Any:
    """A ``langgraph.json`` target (``./graphs/x.py:graph``), loaded as ``langgraph dev`` does."""
    file, attr = path.split(":")
    spec = importlib.util.spec_from_file_location(Path(file).stem, ROOT / file)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, attr)


# --------------------------------------------------------------------------- 1. schemas


def test_graph_input_and_output_schemas_are_describable_for_studio():
    # langgraph-cli/langgraph-api are not installed here; `langgraph dev` serves these same
    # get_*_jsonschema() results as the graphs' input and output schemas (Studio's form).
    spec = json.loads((ROOT / "langgraph.json").read_text())
    loaded_before = dict(MODELS._models)
    graphs = {name: load_entry_point(target) for name, target in spec["graphs"].items()}
    graphs["package"] = build_graph(load_config())
    for name, compiled in graphs.items():
        inputs, outputs = compiled.get_input_jsonschema(), compiled.get_output_jsonschema()
        assert inputs["properties"] and outputs["properties"], name
        assert "messages" in inputs["properties"] and "messages" in outputs["properties"]
        json.dumps([inputs, outputs])
    for rankguide in (graphs["rankguide"], graphs["package"]):
        inputs = rankguide.get_input_jsonschema()["properties"]
        outputs = rankguide.get_output_jsonschema()["properties"]
        assert {"question", "messages", "prompt"} <= set(inputs)
        assert "steps" not in inputs and "pending" not in inputs
        assert {"answer", "steps", "usage", "stop_reason", "messages"} <= set(outputs)
        assert rankguide.get_context_jsonschema()["properties"]["policy"]
    agent = graphs["rankguide_agent"].get_input_jsonschema()
    assert set(agent["properties"]) == {"messages"} and agent["required"] == ["messages"]
    assert MODELS._models == loaded_before, "building and describing a graph loads no model"


# --------------------------------------------------------------------------- 2. messages


def test_the_collaboration_graph_is_a_chat_graph(graph, tiny_pair):
    for conversation in (
        [("user", "go")],
        [{"role": "user", "content": "go"}],
        [HumanMessage("go")],
        [SystemMessage("Be brief."), HumanMessage("go")],
    ):
        out = graph.invoke({"messages": conversation})
        *asked, reply = out["messages"]
        assert [type(m) for m in asked][-1] is HumanMessage and len(asked) == len(conversation)
        assert isinstance(reply, AIMessage) and reply.content == (out["answer"] or "")
        steps = out["steps"]
        assert reply.additional_kwargs["reasoning_content"] == "".join(
            s["text"] for s in steps if not s["is_answer"]
        )
        meta = reply.response_metadata
        assert meta["steps"] == [{k: v for k, v in s.items() if k != "token_ids"} for s in steps]
        assert meta["model_provider"] == "rankguide" and meta["stop_reason"] == out["stop_reason"]
        assert meta["finish_reason"] == chat_finish_reason(out["stop_reason"], steps)
        assert meta["model_name"] == f"rankguide:{tiny_pair[0]}+{tiny_pair[1]}"
        assert reply.usage_metadata and reply.usage_metadata["output_tokens"] == sum(
            s["tokens"] for s in steps
        )
        assert out["question"] == "go"

    # stream_mode="messages": the tokens of each committed step, then of the answer; the chunks
    # add up to the reply (which is not sent again), while custom StepEvents still flow.
    chunks, events, final = [], [], {}
    for mode, payload in graph.stream(
        {"messages": [("user", "go")]}, stream_mode=["messages", "custom", "values"]
    ):
        if mode == "messages":
            chunks.append(payload)
        elif mode == "custom":
            events.append(payload)
        else:
            final = payload
    reply = final["messages"][-1]
    assert all(isinstance(c, AIMessageChunk) and c.id == reply.id for c, _ in chunks)
    assert len(chunks) > len(final["steps"]) + 1, "token by token, not one chunk per step"
    assert {meta["langgraph_node"] for _, meta in chunks} >= {"finish"}
    whole = chunks[0][0]
    for chunk, _ in chunks[1:]:
        whole = whole + chunk
    assert whole.content == reply.content
    assert whole.additional_kwargs == reply.additional_kwargs
    assert whole.response_metadata == reply.response_metadata
    assert whole.usage_metadata == reply.usage_metadata
    assert [e["step"]["text"] for e in events] == [s["text"] for s in final["steps"]]

    # The question input and everything the run stream reads work as before.
    result = RankGuideApp(load_config(None, overrides=tiny_overrides(tiny_pair))).invoke("go")
    assert result.finished and result.steps and not result.state.get("messages")
    json.dumps(result.state, allow_nan=False)


def test_a_checkpointed_thread_is_a_conversation(tiny_pair):
    config = load_config(None, overrides=tiny_overrides(tiny_pair))
    graph = build_graph(config, checkpointer=InMemorySaver())
    thread = {"configurable": {"thread_id": "chat-1"}}
    first = graph.invoke({"messages": [("user", "go")]}, thread)
    second = graph.invoke({"messages": [("user", "go on")]}, thread)
    assert [type(m) for m in second["messages"]] == [HumanMessage, AIMessage] * 2
    assert second["question"] == "go on" and second["prompt"] is None
    # Each turn is a run of its own: steps and usage start again.
    assert [s["index"] for s in second["steps"]] == list(range(len(second["steps"])))
    assert second["messages"][1].id == first["messages"][1].id != second["messages"][3].id


# --------------------------------------------------------------------------- 4. finish_reason


def test_finish_reason_tells_length_from_stop_everywhere(tiny_pair, graph):
    # The mapping: the token budget cut the run (even with an answer forced after it), or the
    # step cap did before any answer: "length"; every other end is "stop".
    answer = {"is_answer": True, "finish_reason": "delimiter"}
    assert chat_finish_reason("budget", [answer]) == "length"
    assert chat_finish_reason("max_steps", []) == "length"
    assert chat_finish_reason("max_steps", [answer]) == "stop"
    for natural in ("answer", "eos", "end_marker", "repeat"):
        assert chat_finish_reason(natural, [answer]) == "stop"

    # ChatRankGuide: a budget-truncated reply with a forced answer said "stop".
    model = tiny_rankguide(tiny_pair)
    capped = model.invoke("go", max_tokens=20)
    assert capped.response_metadata["stop_reason"] == "budget"
    assert capped.response_metadata["steps"][-1]["decision"] == "forced"
    assert capped.response_metadata["finish_reason"] == "length"
    assert model.invoke("go").response_metadata["finish_reason"] == "stop"

    # ChatSteeredHuggingFace at max_tokens.
    hf = ChatSteeredHuggingFace(model=str(tiny_pair[0]))
    assert hf.invoke("go", max_tokens=3).response_metadata["finish_reason"] == "length"

    # The graph's reply and the server's rankguide model use the same mapping.
    out = graph.invoke({"messages": [("user", "go")]}, context={"thinking_budget": 10})
    assert out["stop_reason"] == "budget"
    assert out["messages"][-1].response_metadata["finish_reason"] == "length"
    app = RankGuideApp(load_config(None, overrides=tiny_overrides(tiny_pair)))
    handler = RankGuideHandler(app, max_tokens=10)
    request = ChatCompletionRequest.model_validate(
        {"model": "rankguide", "messages": [{"role": "user", "content": "go"}], "max_tokens": 10}
    )
    generation = handler.chat(request, lambda: False)
    while True:
        try:
            next(generation)
        except StopIteration as done:
            assert done.value.finish_reason == "length"
            break


# --------------------------------------------------------------------------- 5. token counts


def test_token_counts_use_the_models_own_tokenizer(tiny_pair, monkeypatch):
    from langchain_core.language_models import base
    from transformers import AutoTokenizer

    def no_hub(text: str) -> list[int]:
        raise AssertionError("the GPT-2 tokenizer from the hub was asked for")

    monkeypatch.setattr(base, "_get_token_ids_default_method", no_hub)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_pair[0]), local_files_only=True)
    conversation = [SystemMessage("Be brief."), HumanMessage("go go go")]
    for model_class in CLASSES:
        registry = ModelRegistry()
        if model_class is ChatRankGuide:
            model: Any = tiny_rankguide(tiny_pair, registry=registry)
        else:
            model = ChatSteeredHuggingFace(model=str(tiny_pair[0]), registry=registry)
        text = "go on, go on"
        assert model.get_num_tokens(text) == len(tokenizer.encode(text, add_special_tokens=False))
        assert model.get_num_tokens(text) > 0
        counted = model.get_num_tokens_from_messages(conversation)
        assert registry._models == {}, "counting loads the tokenizer only"
        # What a call reports as its input tokens (chat template and configured prompt).
        reply = model.invoke(conversation, max_tokens=8)
        assert reply.usage_metadata["input_tokens"] == counted
        # trim_messages can use the model as its token counter now.
        history = [HumanMessage("go " * 20), AIMessage("ok"), HumanMessage("go")]
        trimmed = trim_messages(history, max_tokens=counted, token_counter=model, strategy="last")
        assert 0 < len(trimmed) < len(history)


# --------------------------------------------------------------------------- 6. serialization


# langchain-core marks `loads` as beta; the round trip through it is what this test checks.
@pytest.mark.filterwarnings("ignore:The function `loads` is in beta")
def test_both_chat_models_pickle_and_serialize_without_secrets(tiny_pair, monkeypatch):
    monkeypatch.setenv("RG_CITIZEN_KEY", "sk-never-serialized-1234")
    remote = {
        "lrm": {
            "provider": "openai_compatible",
            "base_url": "http://127.0.0.1:9/v1",
            "model": "remote-lrm",
            "api_key_env": "RG_CITIZEN_KEY",
        }
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models: list[Any] = [
            tiny_rankguide(tiny_pair, max_tokens=48, policy="srm", **HOSTED_KEY),
            ChatRankGuide(config=load_config(None, overrides=remote), temperature=0.5),
            ChatSteeredHuggingFace(
                model=str(tiny_pair[0]), max_tokens=8, stop=["\n"], **HOSTED_KEY
            ),
        ]
    for model in models[::2]:
        model.invoke("go")  # locks held, models loaded, run apps cached
    for model in models:
        # pickle: configuration kept, locks and loaded things left behind.
        copy = pickle.loads(pickle.dumps(model))
        assert type(copy) is type(model) and copy.model_dump() == model.model_dump()
        assert copy.registry is MODELS
        if isinstance(copy, ChatRankGuide):
            assert copy._apps == {} and copy._base == model._base
        # dumpd / loads.
        text = dumps(model)
        assert "sk-never-serialized" not in text and "sk-dropped" not in text
        assert dumpd(model)["id"][-1] == type(model).__name__
        revived = loads(text, valid_namespaces=NAMESPACES, allowed_objects=CLASSES)
        assert type(revived) is type(model) and revived.model_dump() == model.model_dump()
        if isinstance(revived, ChatRankGuide):
            assert revived._base == model._base
    # Revived models load again on first use and answer as the originals do.
    hf = models[2]
    revived = loads(dumps(hf), valid_namespaces=NAMESPACES, allowed_objects=CLASSES)
    assert revived.invoke("go").content == hf.invoke("go").content
    assert pickle.loads(pickle.dumps(hf)).invoke("go").content == hf.invoke("go").content
    assert pickle.loads(pickle.dumps(ModelRegistry()))._models == {}


# --------------------------------------------------------------------------- 7. graphs


def test_public_graphs_live_in_the_package():
    import langchain_rankguide.graphs as graphs_package

    entry = load_entry_point("./graphs/agent_graph.py:build_agent_graph")
    assert entry is build_agent_graph
    assert Path(graphs_package.__file__).parent == ROOT / "langchain_rankguide" / "graphs"
    assert graphs_package.build_graph is build_graph
    # The docs import the agent graph from the package, as an installed user must.
    docs = (ROOT / "docs" / "langchain.md").read_text()
    assert "from langchain_rankguide.graphs import build_agent_graph" in docs
    assert "from graphs." not in docs
    # graphs/*.py are thin entry points: no graph is defined there.
    for path in (ROOT / "graphs").glob("*.py"):
        assert "StateGraph" not in path.read_text(), path
