"""The LangChain chat models on tiny models: what ChatHuggingFace users miss, fixed and checked."""

from __future__ import annotations

import asyncio
import json
import threading
import warnings
from pathlib import Path

import pytest
import torch
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from pydantic import BaseModel, Field

from langchain_rankguide.chat_models import ChatRankGuide, ChatSteeredHuggingFace
from langchain_rankguide.chat_models._common import StopMatcher
from langchain_rankguide.chat_models.messages import (
    OutputStream,
    TemplateInfo,
    render_chat,
    to_chat_dicts,
)
from langchain_rankguide.engine import MODELS, ModelRegistry
from langchain_rankguide.engine.grammar import llguidance_available
from langchain_rankguide.engine.loading import demo_model_dir
from langchain_rankguide.errors import InputError, ModelLoadError

needs_llguidance = pytest.mark.skipif(
    not llguidance_available(), reason="llguidance (the [structured] extra) is not installed"
)


class Person(BaseModel):
    name: str = Field(description="the name")
    age: int = Field(description="the age in years")


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@pytest.fixture(scope="module")
def srm_path(tiny_pair) -> str:
    return str(tiny_pair[0])


@pytest.fixture(scope="module")
def chat(srm_path) -> ChatSteeredHuggingFace:
    return ChatSteeredHuggingFace(model=srm_path, max_tokens=24)


def tiny_rankguide(tiny_pair, **fields) -> ChatRankGuide:
    overrides = {
        "routing": {"calibration": None, "policy": "random", "random_rate": 0.5},
        "steps": {"max_steps": 8, "max_step_tokens": 24, "answer_markers": ["done"]},
    }
    overrides.update(fields.pop("model_kwargs", {}))
    return ChatRankGuide(
        model=f"rankguide:{tiny_pair[0]}+{tiny_pair[1]}", model_kwargs=overrides, **fields
    )


# --------------------------------------------------------------------------- construction


def test_constructing_loads_nothing_and_a_bad_path_fails_only_on_use(tmp_path):
    registry = ModelRegistry()
    missing = str(tmp_path / "no-such-model")
    chat = ChatSteeredHuggingFace(model=missing, registry=registry)
    ChatRankGuide(registry=registry)
    assert registry._models == {}
    assert chat.model_name == missing
    with pytest.raises(ModelLoadError):
        chat.invoke("hi")


def test_model_alias_fields_and_unknown_parameters_warn(srm_path):
    with pytest.warns(UserWarning, match="api_key"):
        chat = ChatSteeredHuggingFace(model=srm_path, api_key="x", temperature=0.5, max_tokens=3)
    assert (chat.model_name, chat.temperature, chat.max_tokens) == (srm_path, 0.5, 3)
    with pytest.raises(ValueError, match="model_kwargs"):
        ChatSteeredHuggingFace(model_kwargs={"not_a_key": 1})
    rankguide = ChatRankGuide()
    assert rankguide.model_name == "rankguide:demo:srm+demo:lrm"
    with pytest.raises(ValueError, match="rankguide:<srm>\\+<lrm>"):
        ChatRankGuide(model="demo:srm")


def test_from_config(tmp_path, tiny_pair):
    path = tmp_path / "cfg.yaml"
    path.write_text(
        f"srm: {{model: {tiny_pair[0]}}}\nlrm: {{model: {tiny_pair[1]}}}\n"
        "sampling: {temperature: 0.7, seed: 3}\nprompt: {chat_template_kwargs: {flag: true}}\n"
    )
    chat = ChatSteeredHuggingFace.from_config(path, max_tokens=8)
    assert chat.model_name == str(tiny_pair[0])
    assert (chat.temperature, chat.seed, chat.max_tokens) == (0.7, 3, 8)
    assert chat.chat_template_kwargs == {"flag": True}
    rankguide = ChatRankGuide.from_config(path)
    assert rankguide.model_name == f"rankguide:{tiny_pair[0]}+{tiny_pair[1]}"


# --------------------------------------------------------------------------- generation


def test_invoke_reports_usage_and_metadata_without_echoing_the_prompt(chat):
    tokenizer = MODELS.get(chat.model_name).tokenizer
    reply = chat.invoke("go")
    prompt_ids = tokenizer.encode(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "go"}], tokenize=False, add_generation_prompt=True
        ),
        add_special_tokens=False,
    )
    assert reply.content.startswith("we add 12")  # the reply, not "user: go"
    usage = reply.usage_metadata
    assert usage == {
        "input_tokens": len(prompt_ids),
        "output_tokens": 24,
        "total_tokens": len(prompt_ids) + 24,
    }
    meta = reply.response_metadata
    assert meta["model_name"] == chat.model_name
    assert meta["model_provider"] == "huggingface"
    assert meta["finish_reason"] == "length"
    assert meta["usage_by_model"] == {
        "srm": {"prefill_tokens": len(prompt_ids), "decode_tokens": 24}
    }
    first = meta["steps"][0]
    assert first["text"] == "we add 12 and 3.\n\n"
    assert set(first["signals"]) == {
        "entropy.first_token",
        "logprob.mean",
        "step.tokens",
        "reflection.cue",
    }
    json.dumps(meta, allow_nan=False)


def test_streams_token_by_token_in_the_calling_thread(chat):
    threads_before = threading.active_count()
    chunks = []
    for chunk in chat.stream("go"):
        assert threading.active_count() == threads_before
        chunks.append(chunk)
    texts = [c.content for c in chunks if c.content]
    assert len(texts) >= 20 and all(len(t) <= 4 for t in texts)
    full = sum(chunks[1:], chunks[0])
    assert full.content == chat.invoke("go").content
    assert chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata["output_tokens"] == 24
    assert sum(1 for c in chunks if c.usage_metadata) == 1


def test_per_call_max_tokens_stop_and_temperature(chat):
    assert chat.invoke("go", max_tokens=5).usage_metadata["output_tokens"] == 5
    assert chat.bind(max_tokens=3).invoke("go").response_metadata["finish_reason"] == "length"
    # A stop string spanning several tokens (this tokenizer is one character per token).
    reply = chat.invoke("go", stop=["and 3"], max_tokens=24)
    assert reply.content == "we add 12 "
    assert reply.response_metadata["finish_reason"] == "stop"
    assert reply.response_metadata["stop"] == "and 3"
    streamed = "".join(c.content for c in chat.stream("go", stop=["and 3"]))
    assert streamed == "we add 12 "
    greedy = chat.invoke("go").content
    hot = [chat.invoke("go", temperature=5.0, seed=s).content for s in (1, 1, 2)]
    assert hot[0] == hot[1] != greedy
    assert hot[2] != hot[0]


def test_stop_matcher_holds_back_partial_stop_strings():
    stops = StopMatcher(["\n\nUser:"])
    assert stops.push("hello\n") == "hello"
    assert stops.push("\nUs") == ""
    assert stops.push("er: x") == ""
    assert stops.hit == "\n\nUser:"
    stops = StopMatcher(["XY"])
    assert stops.push("aX") == "a"
    assert stops.push("b") == "Xb"
    assert stops.flush() == ""


def test_unknown_call_keywords_warn(chat):
    with pytest.warns(UserWarning, match="frobnicate"):
        chat.invoke("go", max_tokens=1, frobnicate=True)


def test_per_call_model_override(chat, tiny_pair):
    reply = chat.invoke("go", model=str(tiny_pair[1]), max_tokens=2)
    assert reply.response_metadata["model_name"] == str(tiny_pair[1])
    assert chat._get_ls_params(model="x")["ls_model_name"] == "x"


def test_chat_template_kwargs_and_template_override(srm_path):
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if flag %}!{% endif %}"
    chat = ChatSteeredHuggingFace(model=srm_path, chat_template=template, max_tokens=1)
    plain = chat.invoke("go").usage_metadata["input_tokens"]
    flagged = chat.invoke("go", chat_template_kwargs={"flag": True}).usage_metadata
    assert flagged["input_tokens"] == plain + 1


# --------------------------------------------------------------------------- messages


def test_every_message_type_goes_through_the_template(chat, srm_path):
    tokenizer = MODELS.get(srm_path).tokenizer
    history = [
        SystemMessage("be brief"),
        HumanMessage("add 1 and 2", name="ann"),
        AIMessage(
            "",
            tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1", "type": "tool_call"}],
            additional_kwargs={"reasoning_content": "use the tool"},
        ),
        ToolMessage("3", tool_call_id="c1", name="add"),
    ]
    dicts = to_chat_dicts(history)
    assert [d["role"] for d in dicts] == ["system", "user", "assistant", "tool"]
    assert dicts[2]["tool_calls"][0]["function"] == {"name": "add", "arguments": {"a": 1, "b": 2}}
    assert dicts[2]["reasoning_content"] == "use the tool"
    prompt = render_chat(tokenizer, dicts)
    # The tiny template knows no tool_calls: the call is written into the assistant turn.
    assert '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>' in prompt
    assert "tool: 3" in prompt and prompt.endswith("assistant: ")
    # A tool result as the last message is answered, not rejected.
    assert isinstance(chat.invoke(history, max_tokens=2), AIMessage)
    # A trailing assistant message is continued, not closed.
    continued = render_chat(tokenizer, to_chat_dicts([HumanMessage("go"), AIMessage("we add")]))
    assert continued.endswith("assistant: we add")


def test_templates_with_tool_support_get_tools_and_strict_templates_get_normalised(srm_path):
    from langchain_rankguide.demo.tokenizer import CHAT_TEMPLATE

    tokenizer = MODELS.get(srm_path).tokenizer
    tool = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
    assert TemplateInfo.of(tokenizer, CHAT_TEMPLATE, with_tools=True).tools
    native = render_chat(
        tokenizer, [{"role": "user", "content": "hi"}], tools=[tool], chat_template=CHAT_TEMPLATE
    )
    assert native.startswith('<|system|>Tools: [{"type": "function"')
    described = render_chat(tokenizer, [{"role": "user", "content": "hi"}], tools=[tool])
    assert "<tools>" in described and "<tool_call>" in described
    strict = (
        "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('roles must alternate') }}{% endif %}"
        "[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
    )
    messages = to_chat_dicts(
        [SystemMessage("s1"), SystemMessage("s2"), HumanMessage("a"), HumanMessage("b")]
    )
    assert render_chat(tokenizer, messages, chat_template=strict) == "[user]s1\n\ns2\n\na\n\nb"


def test_output_parsing_streams_content_and_parses_tool_calls(srm_path):
    tokenizer = MODELS.get(srm_path).tokenizer
    tools = [
        {
            "type": "function",
            "function": {
                "name": "add",
                "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}},
            },
        }
    ]
    text = '<think>hm</think>Sure.\n<tool_call>{"name": "add", "arguments": {"a": "4"}}</tool_call>'
    stream = OutputStream(tokenizer, prompt="", tools=tools)
    deltas = [d for ch in text for d in stream.feed(ch)] + stream.finish()
    assert "".join(d.text for d in deltas if d.kind == "reasoning") == "hm"
    assert "".join(d.text for d in deltas if d.kind == "content") == "Sure."
    calls = [d for d in deltas if d.kind == "tool_call"]
    assert [(c.name, c.arguments) for c in calls] == [("add", {"a": 4})]
    broken = OutputStream(tokenizer, prompt="", tools=tools)
    bad = broken.feed("x <tool_call>{oops</tool_call> y") + broken.finish()
    assert [d.kind for d in bad if d.kind != "content"] == ["invalid_tool_call"]
    # Without tools the markup is plain content.
    plain = OutputStream(tokenizer, prompt="", tools=None)
    assert "".join(d.text for d in plain.feed(text[17:]) + plain.finish()) == text[17:]


def test_a_tokenizer_response_template_is_used(srm_path):
    tokenizer = MODELS.get(srm_path).tokenizer
    template = {
        "defaults": {"role": "assistant"},
        "start_anchor": "assistant: ",
        "fields": {
            "tool_calls": {
                "open": "[CALL]",
                "close": "[/CALL]",
                "repeats": True,
                "content": "json",
                "transform": {"type": "function", "function": "{content}"},
            },
            "content": {"content": "text"},
        },
    }
    tokenizer.response_template = template
    try:
        stream = OutputStream(tokenizer, prompt="user: hi\nassistant: ", tools=[])
        deltas = stream.feed('ok[CALL]{"name": "f", "arguments": {}}[/CALL]') + stream.finish()
    finally:
        tokenizer.response_template = None
    assert [(d.kind, d.name or d.text) for d in deltas] == [("content", "ok"), ("tool_call", "f")]


# --------------------------------------------------------------------------- tools and structure


@needs_llguidance
def test_forced_tool_calls_are_valid_in_invoke_and_stream(chat):
    bound = chat.bind_tools([add], tool_choice="any")
    reply = bound.invoke("go")
    assert len(reply.tool_calls) == 1
    call = reply.tool_calls[0]
    assert call["name"] == "add" and set(call["args"]) == {"a", "b"}
    assert all(isinstance(v, int) for v in call["args"].values())
    assert call["id"] and reply.response_metadata["finish_reason"] == "tool_calls"
    chunks = list(bound.stream("go"))
    full = sum(chunks[1:], chunks[0])
    assert isinstance(full, AIMessageChunk) and full.tool_calls[0]["args"] == call["args"]
    # Forced calls are one completed value even when the budget is smaller than the markup.
    short = chat.bind_tools([add], tool_choice="add").invoke("go", max_tokens=4)
    assert short.tool_calls and short.tool_calls[0]["name"] == "add"


@needs_llguidance
@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_structured_output_returns_validated_objects(chat, method):
    structured = chat.with_structured_output(Person, method=method)
    person = structured.invoke("go")
    assert isinstance(person, Person)
    as_dict = chat.with_structured_output(Person.model_json_schema(), method=method).invoke("go")
    assert set(as_dict) == {"name", "age"}


@needs_llguidance
def test_structured_output_closes_within_a_tiny_budget(chat):
    raw = chat.with_structured_output(Person, include_raw=True).invoke("go", max_tokens=3)
    assert isinstance(raw["parsed"], Person) and raw["parsing_error"] is None
    assert raw["raw"].response_metadata["finish_reason"] == "stop"


# --------------------------------------------------------------------------- async and graphs


def test_async_does_not_block_the_event_loop(chat):
    async def main() -> tuple[int, str, str]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        streamed = "".join([c.content async for c in chat.astream("go")])
        invoked = (await chat.ainvoke("go")).content
        done.set()
        await task
        return ticks, streamed, invoked

    ticks, streamed, invoked = asyncio.run(main())
    assert streamed == invoked == chat.invoke("go").content
    assert ticks > 10


def test_tokens_reach_a_langgraph_messages_stream(chat):
    from langgraph.graph import START, MessagesState, StateGraph

    def node(state: MessagesState) -> dict:
        return {"messages": [chat.invoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("model", node)
    builder.add_edge(START, "model")
    graph = builder.compile()
    pieces = [
        message.content
        for message, _ in graph.stream({"messages": [("user", "go")]}, stream_mode="messages")
        if isinstance(message, AIMessageChunk) and message.content
    ]
    assert len(pieces) >= 20 and "".join(pieces) == chat.invoke("go").content


@needs_llguidance
def test_works_inside_create_agent(srm_path):
    agents = pytest.importorskip("langchain.agents", reason="langchain (the [agents] extra)")
    from langchain_core.tools import tool

    from langchain_rankguide.demo.tokenizer import CHAT_TEMPLATE

    chat = ChatSteeredHuggingFace(model=srm_path, max_tokens=24, chat_template=CHAT_TEMPLATE)
    agent = agents.create_agent(chat, tools=[tool(add)])
    out = agent.invoke({"messages": [("user", "go")]})
    assert isinstance(out["messages"][-1], AIMessage)
    structured = agents.create_agent(chat, tools=[], response_format=Person)
    assert isinstance(
        structured.invoke({"messages": [("user", "go")]})["structured_response"], Person
    )


# --------------------------------------------------------------------------- ChatRankGuide


def test_rankguide_answer_reasoning_steps_and_usage(tiny_pair):
    model = tiny_rankguide(tiny_pair)
    reply = model.invoke("go")
    meta = reply.response_metadata
    steps = meta["steps"]
    assert steps and {s["author"] for s in steps} == {"srm", "lrm"}
    answer = steps[-1]
    assert answer["is_answer"] and reply.content == answer["text"].strip()[len("done") :].strip()
    assert reply.additional_kwargs["reasoning_content"] == "".join(s["text"] for s in steps[:-1])
    assert meta["model_provider"] == "rankguide" and meta["finish_reason"] == "stop"
    assert meta["model_name"] == f"rankguide:{tiny_pair[0]}+{tiny_pair[1]}"
    by_model = meta["usage_by_model"]
    assert set(by_model) == {"srm", "lrm"} and by_model["lrm"]["decode_tokens"] > 0
    usage = reply.usage_metadata
    assert usage["output_tokens"] == sum(s["tokens"] for s in steps)
    assert usage["output_token_details"]["reasoning"] == sum(s["tokens"] for s in steps[:-1])
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert all("token_ids" not in s for s in steps)
    json.dumps(meta, allow_nan=False)


def test_rankguide_streams_one_chunk_per_step_then_answer_tokens(tiny_pair):
    model = tiny_rankguide(tiny_pair)
    chunks = list(model.stream("go"))
    reasoning = [c for c in chunks if c.additional_kwargs.get("reasoning_content")]
    answer = [c.content for c in chunks if c.content]
    steps = chunks[-1].response_metadata["steps"]
    assert [c.additional_kwargs["reasoning_content"] for c in reasoning] == [
        s["text"] for s in steps[:-1]
    ]
    assert len(answer) > 1 and chunks.index(reasoning[-1]) < chunks.index(
        next(c for c in chunks if c.content)
    )
    full = sum(chunks[1:], chunks[0])
    assert full.content == "".join(answer)
    blocks = [b["type"] for b in full.content_blocks]
    assert blocks == ["reasoning", "text"]


def test_rankguide_max_tokens_bounds_reasoning_plus_answer_and_overrides_apply(tiny_pair):
    model = tiny_rankguide(tiny_pair)
    capped = model.invoke("go", max_tokens=20)
    assert capped.usage_metadata["output_tokens"] <= 20
    # The run hit its budget without an answer: one is forced, inside the same max_tokens.
    last = capped.response_metadata["steps"][-1]
    assert last["is_answer"] and last["decision"] == "forced"
    only_srm = model.invoke("go", policy="srm")
    assert {s["author"] for s in only_srm.response_metadata["steps"]} == {"srm"}
    assert only_srm.response_metadata["usage_by_model"]["lrm"]["decode_tokens"] == 0
    full = model.invoke("go").content
    stop = full[2:4]
    stopped = model.invoke("go", stop=[stop])
    assert stopped.content == full[: full.index(stop)]
    assert stopped.response_metadata["stop"] == stop


def test_rankguide_frees_the_run_when_a_stream_is_abandoned(tiny_pair):
    model = tiny_rankguide(tiny_pair)
    stream = model.stream("go")
    next(stream)
    stream.close()
    (app,) = model._apps.values()
    assert app.pipeline._sessions == {}


def test_rankguide_async(tiny_pair):
    model = tiny_rankguide(tiny_pair)

    async def main() -> tuple[str, str]:
        streamed = "".join([c.content async for c in model.astream("go")])
        return streamed, (await model.ainvoke("go")).content

    streamed, invoked = asyncio.run(main())
    assert streamed == invoked == model.invoke("go").content != ""


# --------------------------------------------------------------------------- ChatRankGuide: tools


def tiny_steps(**steps) -> dict:
    return {"steps": {"max_steps": 8, "max_step_tokens": 24, "answer_markers": ["done"], **steps}}


def last_step(reply: AIMessage) -> dict:
    return reply.response_metadata["steps"][-1]


@needs_llguidance
@pytest.mark.parametrize("author", ["srm", "lrm"])
def test_rankguide_structured_output_is_written_by_the_answers_author(tiny_pair, author):
    """The reasoning is routed as always; the final draft is replaced by its author's output."""
    # "Wait" makes the SRM's draft of the second step the answer (after the LRM's first step).
    steps = tiny_steps(final_answer_by=author, answer_markers=["Wait"])
    model = tiny_rankguide(tiny_pair, model_kwargs=steps)
    free = model.invoke("go")
    raw = model.with_structured_output(Person, include_raw=True).invoke("go")
    assert isinstance(raw["parsed"], Person) and raw["parsing_error"] is None
    reply, answer = raw["raw"], last_step(raw["raw"])
    assert answer["author"] == author and answer["is_answer"]
    assert answer["reason"] == f"final answer by {author}"
    # The same reasoning as the free run, then the output in place of the free answer.
    free_steps = free.response_metadata["steps"]
    assert [s["text"] for s in reply.response_metadata["steps"][:-1]] == [
        s["text"] for s in free_steps[:-1]
    ]
    assert answer["draft_text"] == free_steps[-1]["text"]
    assert json.loads(reply.content) == raw["parsed"].model_dump()
    assert (
        reply.additional_kwargs["reasoning_content"] == free.additional_kwargs["reasoning_content"]
    )


@needs_llguidance
@pytest.mark.parametrize("author", ["srm", "lrm"])
def test_rankguide_forced_tool_call_invoke_and_stream(tiny_pair, author):
    model = tiny_rankguide(tiny_pair, model_kwargs=tiny_steps(final_answer_by=author))
    bound = model.bind_tools([add], tool_choice="add")
    reply = bound.invoke("go")
    (call,) = reply.tool_calls
    assert call["name"] == "add" and set(call["args"]) == {"a", "b"}
    assert all(isinstance(v, int) for v in call["args"].values())
    assert reply.content == "" and reply.response_metadata["finish_reason"] == "tool_calls"
    assert last_step(reply)["author"] == author
    assert last_step(reply)["text"].startswith("<tool_call>")
    chunks = list(bound.stream("go"))
    full = sum(chunks[1:], chunks[0])
    assert [c["args"] for c in full.tool_calls] == [call["args"]]
    assert (
        full.additional_kwargs["reasoning_content"] == reply.additional_kwargs["reasoning_content"]
    )


@needs_llguidance
def test_rankguide_a_free_lrm_answer_is_taken_back_and_written_under_the_grammar(tiny_pair):
    # The lrm policy escalates before any draft; "we" makes the LRM's first free step an answer.
    model = tiny_rankguide(
        tiny_pair,
        model_kwargs={"routing": {"policy": "lrm", "calibration": None}, **tiny_steps()},
    )
    model.model_kwargs["steps"]["answer_markers"] = ["we"]
    raw = model.with_structured_output(Person, include_raw=True).invoke("go")
    assert isinstance(raw["parsed"], Person)
    (step,) = raw["raw"].response_metadata["steps"]
    assert step["author"] == "lrm" and step["is_answer"] and step["text"].startswith("{")
    usage = raw["raw"].response_metadata["usage_by_model"]
    # The free step the LRM wrote first is work done: it counts.
    assert usage["lrm"]["decode_tokens"] > step["tokens"] and usage["srm"]["decode_tokens"] == 0


@needs_llguidance
def test_rankguide_a_run_that_stops_early_still_owes_its_output(tiny_pair):
    model = tiny_rankguide(tiny_pair, model_kwargs=tiny_steps(max_steps=2))
    raw = model.with_structured_output(Person, include_raw=True).invoke("go")
    assert isinstance(raw["parsed"], Person)
    step = last_step(raw["raw"])
    assert step["decision"] == "forced" and step["is_answer"] and "max_steps" in step["reason"]


@needs_llguidance
def test_rankguide_tool_choice_auto_none_and_tool_results(tiny_pair):
    model = tiny_rankguide(tiny_pair, model_kwargs=tiny_steps(max_steps=2))
    plain = model.invoke("go").usage_metadata["input_tokens"]
    offered = model.bind_tools([add]).invoke("go").usage_metadata["input_tokens"]
    hidden = model.bind_tools([add], tool_choice="none").invoke("go")
    assert offered > plain == hidden.usage_metadata["input_tokens"]
    assert model.get_num_tokens_from_messages([HumanMessage("go")], tools=[add]) == offered
    # A tool result comes back as a ToolMessage in the next turn, and is answered.
    turn = [
        HumanMessage("go"),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1"}]),
        ToolMessage("3", tool_call_id="c1"),
    ]
    answered = model.bind_tools([add], tool_choice="none").invoke(turn)
    assert answered.usage_metadata["input_tokens"] > plain
    assert answered.usage_metadata["input_tokens"] == model.get_num_tokens_from_messages(turn)


@needs_llguidance
def test_rankguide_options_that_cannot_be_honoured_are_refused_by_name(tiny_pair):
    model = tiny_rankguide(tiny_pair)
    with pytest.raises(ValueError, match=r"tool_choice names 'mul'.*among the tools \(add\)"):
        model.bind_tools([add], tool_choice="mul")
    with pytest.raises(ValueError, match=r"unsupported tool_choice.*'auto', 'none', 'any'"):
        model.bind_tools([add], tool_choice={"type": "nonsense"})
    with pytest.raises(ValueError, match="tool_choice='any' needs tools"):
        model.invoke("go", tool_choice="any")
    with pytest.raises(ValueError, match=r"unsupported response_format.*json_object"):
        model.invoke("go", response_format={"type": "xml"})
    with pytest.raises(ValueError, match=r"unknown method 'xml'.*json_schema"):
        model.with_structured_output(Person, method="xml")  # type: ignore[arg-type]


@needs_llguidance
def test_rankguide_with_a_remote_lrm_the_srm_writes_the_structured_output(tiny_pair, tmp_path):
    from remote_servers import refused_url
    from server_fixtures import tiny_config_data

    remote = {"provider": "openai_compatible", "base_url": refused_url(), "model": "lrm"}
    data = tiny_config_data(
        tiny_pair[0],
        {**remote, "api_key_env": None, "tokenizer": str(tiny_pair[1])},
        # Every draft escalates; "we" makes the SRM's first draft the answer.
        routing={"policy": "rank", "threshold": -1e9},
        steps={"answer_markers": ["we"]},
    )
    model = ChatRankGuide(config=data)
    raw = model.with_structured_output(Person, include_raw=True).invoke("go")
    (step,) = raw["raw"].response_metadata["steps"]
    assert isinstance(raw["parsed"], Person) and step["author"] == "srm"
    assert "the LRM is remote" in step["reason"] and step["draft_text"].startswith("we")
    # A rule that makes the remote LRM the author cannot be honoured: refused, by name.
    by_lrm = ChatRankGuide(config=data, model_kwargs={"steps": {"final_answer_by": "lrm"}})
    with pytest.raises(InputError, match=r"steps.final_answer_by: lrm.*'router' or 'srm'"):
        by_lrm.bind_tools([add], tool_choice="add").invoke("go")


# --------------------------------------------------------------------------- steering


def test_steering_through_the_chat_model_changes_output_and_unhooks(srm_path, tmp_path):
    from langchain_rankguide.steering import SteeringVector

    loaded = MODELS.get(srm_path)
    torch.manual_seed(0)
    vector = SteeringVector(
        vector=torch.randn(loaded.hidden_size) * 20.0,
        layer=1,
        model_identity=loaded.identity,
        num_layers=loaded.num_layers,
    )
    path = vector.save(tmp_path / "v.safetensors")
    plain = ChatSteeredHuggingFace(model=srm_path, max_tokens=16)
    before = plain.invoke("go").content
    steered = plain.invoke(
        "go", steering_vector=str(path), steering_scale=1.0, steering_positions="generated"
    )
    assert steered.content != before
    assert steered.response_metadata["steering"]["steered_positions"] > 0
    hooked = [
        name
        for name, module in loaded.model.named_modules()
        if module._forward_pre_hooks or module._forward_hooks
    ]
    assert hooked == []
    assert plain.invoke("go").content == before
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        on_model = ChatSteeredHuggingFace(
            model=srm_path,
            max_tokens=16,
            steering_vector=str(Path(path)),
            steering_positions="generated",
        )
    assert on_model.invoke("go").content == steered.content
    assert on_model.invoke("go", steering=False).content == before


# --------------------------------------------------------------------------- the demo models

DEMO_READY = all((demo_model_dir(name) / "config.json").is_file() for name in ("srm", "lrm"))
needs_demo = pytest.mark.skipif(
    not DEMO_READY, reason="the embedded demo models are not trained yet (`rankguide demo train`)"
)
DEMO_QUESTION = "Start at 12. Add 5, then multiply by 3. What is the result?"


class Solution(BaseModel):
    result: int = Field(description="the final number")
    operations: int = Field(description="how many operations were applied")


@needs_demo
@needs_llguidance
def test_the_demo_model_returns_a_validated_pydantic_object():
    chat = ChatSteeredHuggingFace(model="demo:srm", max_tokens=32)
    solution = chat.with_structured_output(Solution).invoke(DEMO_QUESTION)
    assert isinstance(solution, Solution)
    raw = chat.with_structured_output(Solution, include_raw=True).invoke(DEMO_QUESTION)
    assert raw["parsing_error"] is None
    assert raw["raw"].usage_metadata["output_tokens"] <= 32 + 256


@needs_demo
def test_the_demo_pair_answers_with_reasoning_and_per_model_usage():
    model = ChatRankGuide(
        max_tokens=256, model_kwargs={"routing": {"policy": "random", "calibration": None}}
    )
    reply = model.invoke(DEMO_QUESTION)
    meta = reply.response_metadata
    assert reply.content and reply.additional_kwargs["reasoning_content"]
    assert meta["finish_reason"] == "stop" and meta["answer_author"] in ("srm", "lrm")
    assert set(meta["usage_by_model"]) == {"srm", "lrm"}
    assert reply.usage_metadata["output_tokens"] <= 256
