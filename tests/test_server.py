"""``rankguide serve`` over real HTTP: the official ``openai`` client, error statuses, limits.

The served process (``served``, see ``server_fixtures.py``) runs the tiny models; its answers are
checked against the same handlers and graph run in this process. Auth, back-pressure, the
deadline and client disconnects are tested on in-process apps (``create_app`` under uvicorn in a
thread) whose handlers are slowed down and count the work they do.
"""

from __future__ import annotations

import json
import re
import select
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import SecretStr
from server_fixtures import (
    SERVE_MAX_BODY,
    SERVE_MAX_TOKENS,
    InProcessServer,
    ServedProcess,
    open_raw,
    read_until_closed,
)

from langchain_rankguide.config import load_config
from langchain_rankguide.engine.grammar import llguidance_available
from langchain_rankguide.graph import answer_of, build_graph
from langchain_rankguide.pipeline import RankGuidePipeline
from langchain_rankguide.server.app import ServerLimits, create_app
from langchain_rankguide.server.connection import TimedH11Protocol, uvicorn_settings
from langchain_rankguide.server.handlers import (
    Cancelled,
    Generation,
    Outcome,
    Piece,
    PlainModelHandler,
)
from langchain_rankguide.server.protocol import ChatCompletionRequest, CompletionRequest

pytest_plugins = ["server_fixtures"]

needs_llguidance = pytest.mark.skipif(
    not llguidance_available(), reason="llguidance (the [structured] extra) is not installed"
)

GO = [{"role": "user", "content": "go"}]
KEY = "sk-serve-test-5e4d3c2b1a"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def client(served: ServedProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=served.v1, api_key="unused", max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def http(served: ServedProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.v1, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def local(served_config: Path) -> RankGuidePipeline:
    """The served configuration, run in this process (reference answers)."""
    return RankGuidePipeline(load_config(str(served_config)))


def drain(generation: Generation) -> tuple[list[Piece], Outcome]:
    pieces: list[Piece] = []
    while True:
        try:
            pieces.append(next(generation))
        except StopIteration as done:
            return pieces, done.value


def local_plain(
    local: RankGuidePipeline, role: str, endpoint: str, **body: Any
) -> tuple[str, Outcome]:
    loaded = local.srm if role == "srm" else local.lrm_loaded()
    handler = PlainModelHandler(loaded, role=role, max_tokens=SERVE_MAX_TOKENS)
    if endpoint == "chat":
        request = ChatCompletionRequest.model_validate({"model": role, **body})
        pieces, outcome = drain(handler.chat(request, lambda: False))
    else:
        request = CompletionRequest.model_validate({"model": role, **body})
        pieces, outcome = drain(handler.complete(request, lambda: False))
    return "".join(p.text for p in pieces), outcome


def local_run(local: RankGuidePipeline, **configurable: Any) -> dict[str, Any]:
    return build_graph(local).invoke({"question": "go"}, {"configurable": configurable})


def raw_prompt(local: RankGuidePipeline) -> str:
    return str(
        local.lrm_loaded().tokenizer.apply_chat_template(
            GO, tokenize=False, add_generation_prompt=True
        )
    )


def assert_error(response: httpx.Response, status: int, kind: str, param: str | None = None):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["type"] == kind and error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    if param is not None:
        assert error["param"] == param
    return error


# --------------------------------------------------------------------------- openai client


def test_models_list(client: openai.OpenAI) -> None:
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids[:3] == ["rankguide", "srm", "lrm"]
    assert {"tiny-srm", "tiny-lrm"} <= set(ids), "model identities are aliases"
    assert all(m.object == "model" and m.owned_by == "langchain-rankguide" for m in models.data)


def test_chat_plain_model(client: openai.OpenAI, local: RankGuidePipeline) -> None:
    resp = client.chat.completions.create(model="lrm", messages=GO, max_tokens=40)
    expected, outcome = local_plain(local, "lrm", "chat", messages=GO, max_tokens=40)
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected and expected
    assert choice.finish_reason == outcome.finish_reason
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == outcome.prompt_tokens > 0
    assert resp.usage.completion_tokens == outcome.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-")
    assert resp.model == "lrm"
    assert "rankguide" not in (resp.model_extra or {}), "plain models carry no vendor field"
    # An identity is an alias of the same model.
    again = client.chat.completions.create(model="tiny-lrm", messages=GO, max_tokens=40)
    assert again.choices[0].message.content == expected


def test_chat_rankguide_reasoning_and_vendor_field(
    client: openai.OpenAI, local: RankGuidePipeline
) -> None:
    resp = client.chat.completions.create(model="rankguide", messages=GO, max_tokens=200)
    reference = local_run(local)
    vendor = (resp.model_extra or {})["rankguide"]
    steps = vendor["steps"]
    assert [s["text"] for s in steps] == [s["text"] for s in reference["steps"]]
    assert [s["author"] for s in steps] == [s["author"] for s in reference["steps"]]
    assert {s["author"] for s in steps} == {"srm", "lrm"}, "random at 0.5 uses both models"
    message = resp.choices[0].message
    reasoning = (message.model_extra or {})["reasoning_content"]
    assert reasoning == "".join(s["text"] for s in steps if not s["is_answer"])
    assert steps[-1]["is_answer"] and message.content == reference["answer"]
    assert message.content == answer_of(steps[-1]["text"], ["done"])
    assert vendor["answer_author"] == steps[-1]["author"]
    assert vendor["stop_reason"] == "answer" and resp.choices[0].finish_reason == "stop"
    assert vendor["correct"] is None, "'go' is not a demo task question"
    usage = vendor["usage_by_model"]
    assert set(usage) == {"srm", "lrm"} and usage == reference["usage"]
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == sum(u["prefill_tokens"] for u in usage.values())
    assert resp.usage.completion_tokens == sum(u["decode_tokens"] for u in usage.values())


def test_chat_stream_rankguide(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="rankguide", messages=GO, max_tokens=200)
    stream = client.chat.completions.create(
        model="rankguide", messages=GO, max_tokens=200, stream=True
    )
    chunks = list(stream)  # ends at [DONE] without error
    deltas = [c.choices[0].delta for c in chunks]
    assert deltas[0].role == "assistant"
    reasoning = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
    content = "".join(d.content or "" for d in deltas)
    message = whole.choices[0].message
    assert reasoning == (message.model_extra or {})["reasoning_content"]
    assert content == message.content
    steps = [(c.model_extra or {}).get("rankguide", {}).get("step") for c in chunks]
    steps = [s for s in steps if s is not None]
    whole_steps = (whole.model_extra or {})["rankguide"]["steps"]
    assert [s["text"] for s in steps] == [s["text"] for s in whole_steps if not s["is_answer"]]
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop"
    assert last.usage is not None and whole.usage is not None
    assert last.usage.total_tokens == whole.usage.total_tokens
    final_vendor = (last.model_extra or {})["rankguide"]
    assert final_vendor["stop_reason"] == "answer" and "steps" not in final_vendor
    assert (
        final_vendor["usage_by_model"] == (whole.model_extra or {})["rankguide"]["usage_by_model"]
    )
    assert {c.id for c in chunks} == {chunks[0].id}


def test_chat_stream_plain_model(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="srm", messages=GO, max_tokens=30)
    chunks = list(
        client.chat.completions.create(model="srm", messages=GO, max_tokens=30, stream=True)
    )
    assert len(chunks) > 3, "text arrives in pieces"
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks)
        == whole.choices[0].message.content
    )
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None and whole.usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 30


def test_completions_plain_and_streaming(client: openai.OpenAI, local: RankGuidePipeline) -> None:
    prompt = raw_prompt(local)
    resp = client.completions.create(model="lrm", prompt=prompt, max_tokens=40)
    expected, outcome = local_plain(local, "lrm", "completions", prompt=prompt, max_tokens=40)
    assert resp.object == "text_completion" and resp.id.startswith("cmpl-")
    assert resp.choices[0].text == expected
    assert resp.choices[0].finish_reason == outcome.finish_reason
    assert resp.usage is not None and resp.usage.prompt_tokens == outcome.prompt_tokens
    chunks = list(client.completions.create(model="lrm", prompt=prompt, max_tokens=40, stream=True))
    assert len(chunks) > 3
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == outcome.finish_reason
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == outcome.completion_tokens


def test_completions_rankguide_takes_the_prompt_as_question(
    client: openai.OpenAI, local: RankGuidePipeline
) -> None:
    resp = client.completions.create(model="rankguide", prompt="go", max_tokens=200)
    reference = local_run(local)
    assert resp.choices[0].text == reference["answer"]
    vendor = (resp.model_extra or {})["rankguide"]
    assert [s["text"] for s in vendor["steps"]] == [s["text"] for s in reference["steps"]]
    chunks = list(
        client.completions.create(model="rankguide", prompt="go", max_tokens=200, stream=True)
    )
    assert "".join(c.choices[0].text for c in chunks) == reference["answer"]
    steps = [(c.model_extra or {}).get("rankguide", {}).get("step") for c in chunks]
    assert [s["text"] for s in steps if s] == [
        s["text"] for s in reference["steps"] if not s["is_answer"]
    ]
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_end_the_text_and_are_not_returned(
    client: openai.OpenAI, local: RankGuidePipeline, stream: bool
) -> None:
    prompt = raw_prompt(local)
    free = client.completions.create(model="lrm", prompt=prompt, max_tokens=60).choices[0].text
    words = [w for w in re.findall(r"[a-z]{4,}", free) if free.index(w) > 0]
    assert words, free
    stop = words[0]  # several tokens: the tokenizer is per character
    cut = free[: free.index(stop)]

    def text_and_finish(**kwargs: Any) -> tuple[str, str | None, Any]:
        if not stream:
            choice = client.completions.create(**kwargs).choices[0]
        else:
            chunks = list(client.completions.create(stream=True, **kwargs))
            choice = chunks[-1].choices[0]
            choice.text = "".join(c.choices[0].text for c in chunks)
        # vLLM's stop_reason: which stop string matched, so a client can tell it from EOS.
        return choice.text, choice.finish_reason, (choice.model_extra or {})["stop_reason"]

    got = text_and_finish(model="lrm", prompt=prompt, max_tokens=60, stop=["never-seen", stop])
    assert got == (cut, "stop", stop)
    assert text_and_finish(model="lrm", prompt=prompt, max_tokens=3) == (free[:3], "length", None)
    # chat: the same stop on the served chat template
    chat_free = client.chat.completions.create(model="lrm", messages=GO, max_tokens=60)
    chat_text = chat_free.choices[0].message.content or ""
    assert chat_text == free
    if stream:
        chunks = list(
            client.chat.completions.create(
                model="lrm", messages=GO, max_tokens=60, stop=stop, stream=True
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        last = chunks[-1].choices[0]
        finish, reason = last.finish_reason, (last.model_extra or {})["stop_reason"]
    else:
        choice = client.chat.completions.create(
            model="lrm", messages=GO, max_tokens=60, stop=stop
        ).choices[0]
        text, finish = choice.message.content or "", choice.finish_reason
        reason = (choice.model_extra or {})["stop_reason"]
    assert (text, finish, reason) == (cut, "stop", stop)
    assert stop not in text


def test_per_request_extras(client: openai.OpenAI, local: RankGuidePipeline) -> None:
    for policy in ("srm", "lrm"):
        resp = client.chat.completions.create(
            model="rankguide",
            messages=GO,
            max_tokens=200,
            extra_body={"rankguide": {"policy": policy}},
        )
        vendor = (resp.model_extra or {})["rankguide"]
        reference = local_run(local, policy=policy)
        assert {s["author"] for s in vendor["steps"]} == {policy}
        assert [s["text"] for s in vendor["steps"]] == [s["text"] for s in reference["steps"]]
        idle = "lrm" if policy == "srm" else "srm"
        assert vendor["usage_by_model"][idle] == {"prefill_tokens": 0, "decode_tokens": 0}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="rankguide", messages=GO, extra_body={"rankguide": {"policy": "oracle"}}
        )
    assert caught.value.status_code == 400
    assert "rankguide.policy" in caught.value.message


# --------------------------------------------------------------------------- error statuses


def test_malformed_json_is_400(http: httpx.Client) -> None:
    for path in ("/chat/completions", "/completions"):
        response = http.post(
            path,
            content=b'{"model": "srm", "prompt": ',
            headers={"content-type": "application/json"},
        )
        error = assert_error(response, 400, "invalid_request_error")
        assert "JSON" in error["message"]
    assert_error(
        http.post("/completions", json=["not", "an", "object"]), 400, "invalid_request_error"
    )


@pytest.mark.parametrize(
    "path,body,param",
    [
        ("/completions", {"model": "srm", "prompt": "go", "max_tokens": "many"}, "max_tokens"),
        ("/completions", {"model": "srm", "prompt": 7}, "prompt"),
        ("/completions", {"model": "srm"}, "prompt"),
        ("/completions", {"model": "srm", "prompt": "go", "temperature": 5}, "temperature"),
        (
            "/completions",
            {"model": "srm", "prompt": "go", "stop": ["a", "b", "c", "d", "e"]},
            "stop",
        ),
        ("/chat/completions", {"model": "srm"}, "messages"),
        ("/chat/completions", {"model": "srm", "messages": [{"role": "robot"}]}, "messages.0.role"),
        ("/chat/completions", {"model": "srm", "messages": GO, "n": 2}, "n"),
        ("/chat/completions", {"model": "srm", "messages": GO, "stream": "sometimes"}, "stream"),
        (
            "/chat/completions",
            {"model": "rankguide", "messages": GO, "rankguide": {"policy": "oracle"}},
            "rankguide.policy",
        ),
        (
            "/chat/completions",
            {"model": "rankguide", "messages": GO, "rankguide": {"unknown": 1}},
            "rankguide.unknown",
        ),
        (
            "/chat/completions",
            {"model": "rankguide", "messages": GO, "rankguide": {"threshold": "nan"}},
            "rankguide.threshold",
        ),
        (
            "/chat/completions",
            {"model": "rankguide", "messages": GO, "rankguide": {"steering_scale": "-inf"}},
            "rankguide.steering_scale",
        ),
        (
            "/completions",
            {"model": "rankguide", "prompt": "go", "rankguide": {"thread_id": "../../etc"}},
            "rankguide.thread_id",
        ),
    ],
)
def test_wrong_types_are_400_naming_the_field(
    http: httpx.Client, path: str, body: dict[str, Any], param: str
) -> None:
    error = assert_error(http.post(path, json=body), 400, "invalid_request_error", param)
    assert error["message"].startswith(f"{param}:")


def test_steering_without_a_vector_is_400_not_a_silent_unsteered_run(
    http: httpx.Client,
) -> None:
    body = {"model": "rankguide", "messages": GO, "rankguide": {"steering": True}}
    resp = http.post("/chat/completions", json=body)
    assert resp.status_code == 400, resp.text
    assert "no steering vector" in resp.json()["error"]["message"]


def test_unknown_model_is_404(http: httpx.Client) -> None:
    for path, body in (
        ("/chat/completions", {"model": "gpt-9", "messages": GO}),
        ("/completions", {"model": "gpt-9", "prompt": "go"}),
    ):
        error = assert_error(http.post(path, json=body), 404, "invalid_request_error", "model")
        assert "gpt-9" in error["message"]


def test_max_tokens_over_the_limit_is_400(http: httpx.Client, client: openai.OpenAI) -> None:
    over = SERVE_MAX_TOKENS + 1
    for path, body in (
        ("/completions", {"model": "srm", "prompt": "go", "max_tokens": over}),
        ("/chat/completions", {"model": "srm", "messages": GO, "max_tokens": over}),
        ("/chat/completions", {"model": "srm", "messages": GO, "max_completion_tokens": over}),
    ):
        error = assert_error(http.post(path, json=body), 400, "invalid_request_error", "max_tokens")
        assert str(SERVE_MAX_TOKENS) in error["message"]
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="srm", prompt="go", max_tokens=over)


def test_oversize_body_is_413(http: httpx.Client) -> None:
    body = json.dumps({"model": "srm", "prompt": "x" * SERVE_MAX_BODY}).encode()
    assert_error(
        http.post("/completions", content=body, headers={"content-type": "application/json"}),
        413,
        "invalid_request_error",
    )

    def chunks() -> Iterator[bytes]:  # no Content-Length: the body is counted as it arrives
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    assert_error(
        http.post("/completions", content=chunks(), headers={"content-type": "application/json"}),
        413,
        "invalid_request_error",
    )


# -------------------------------------------------------------------- tools, formats, logprobs

ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
NAMED_ADD = {"type": "function", "function": {"name": "add"}}


def assert_add_call(call: Any) -> dict[str, Any]:
    assert call.type == "function" and call.function.name == "add" and call.id
    args = json.loads(call.function.arguments)
    assert set(args) == {"a", "b"} and all(isinstance(v, int) for v in args.values())
    return args


def assert_person(text: str | None) -> None:
    data = json.loads(text or "")
    assert set(data) == {"name", "age"}
    assert isinstance(data["name"], str) and isinstance(data["age"], int)


@needs_llguidance
@pytest.mark.parametrize("model", ["srm", "lrm"])
def test_plain_models_call_forced_tools(
    client: openai.OpenAI, local: RankGuidePipeline, model: str
) -> None:
    body: dict[str, Any] = {"messages": GO, "tools": [ADD], "max_tokens": 40}
    for choice in ("required", NAMED_ADD):
        resp = client.chat.completions.create(model=model, tool_choice=choice, **body)
        message = resp.choices[0].message
        (call,) = message.tool_calls or []
        args = assert_add_call(call)
        assert message.content is None and resp.choices[0].finish_reason == "tool_calls"
    # Greedy: the served call is the one the same handler makes in this process.
    loaded = local.srm if model == "srm" else local.lrm_loaded()
    handler = PlainModelHandler(loaded, role=model, max_tokens=SERVE_MAX_TOKENS)
    request = ChatCompletionRequest.model_validate(
        {"model": model, "tool_choice": "required", **body}
    )
    pieces, outcome = drain(handler.chat(request, lambda: False))
    (piece,) = [p for p in pieces if p.kind == "tool_call"]
    assert piece.call is not None and json.loads(piece.call["function"]["arguments"]) == args
    assert outcome.finish_reason == "tool_calls"
    stream = client.chat.completions.create(
        model=model, tool_choice="required", stream=True, **body
    )
    deltas = [c.choices[0] for c in stream]
    (streamed,) = [call for d in deltas for call in d.delta.tool_calls or []]
    assert streamed.index == 0 and json.loads(streamed.function.arguments) == args
    assert deltas[-1].finish_reason == "tool_calls"


@needs_llguidance
def test_plain_models_honour_response_format_and_tool_choice_none(client: openai.OpenAI) -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    resp = client.chat.completions.create(
        model="lrm", messages=GO, response_format=schema, max_tokens=40
    )
    assert_person(resp.choices[0].message.content)
    loose = client.chat.completions.create(
        model="srm", messages=GO, response_format={"type": "json_object"}, max_tokens=40
    )
    assert isinstance(json.loads(loose.choices[0].message.content or ""), dict)
    text = client.completions.create(
        model="srm", prompt="go", max_tokens=40, extra_body={"response_format": schema}
    )
    assert_person(text.choices[0].text)
    # "none": the tools are not shown and nothing is called; the same text as without tools.
    free = client.chat.completions.create(model="lrm", messages=GO, max_tokens=20)
    none = client.chat.completions.create(
        model="lrm", messages=GO, max_tokens=20, tools=[ADD], tool_choice="none"
    )
    assert none.choices[0].message.content == free.choices[0].message.content
    assert none.choices[0].message.tool_calls is None


def test_plain_models_return_their_own_logprobs(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model="lrm", messages=GO, max_tokens=12, logprobs=True, top_logprobs=3
    )
    choice = resp.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    entries = choice.logprobs.content
    assert "".join(e.token for e in entries) == choice.message.content
    for entry in entries:
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        # Greedy: the chosen token is the likeliest one.
        assert entry.top_logprobs[0].token == entry.token
        assert entry.logprob == pytest.approx(tops[0]) and entry.logprob <= 0
        assert bytes(entry.bytes or []) == entry.token.encode()
    plain = client.completions.create(model="srm", prompt="go", max_tokens=8, logprobs=2)
    logprobs = plain.choices[0].logprobs
    assert logprobs is not None and "".join(logprobs.tokens or []) == plain.choices[0].text
    assert logprobs.text_offset == sorted(logprobs.text_offset or [])
    assert all(len(top) <= 2 for top in logprobs.top_logprobs or [])
    streamed = client.chat.completions.create(
        model="lrm", messages=GO, max_tokens=12, logprobs=True, stream=True
    )
    tokens = [
        e.token
        for c in streamed
        if c.choices[0].logprobs
        for e in c.choices[0].logprobs.content or []
    ]
    assert tokens == [e.token for e in entries]


@needs_llguidance
def test_rankguide_writes_its_final_output_under_the_grammar(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model="rankguide", messages=GO, tools=[ADD], tool_choice=NAMED_ADD
    )
    choice = resp.choices[0]
    assert_add_call((choice.message.tool_calls or [None])[0])
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    steps = (resp.model_extra or {})["rankguide"]["steps"]
    assert steps[-1]["is_answer"] and steps[-1]["text"].startswith("<tool_call>")
    schema = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    structured = client.chat.completions.create(
        model="rankguide", messages=GO, response_format=schema
    )
    assert_person(structured.choices[0].message.content)
    question = client.completions.create(
        model="rankguide", prompt="go", extra_body={"response_format": schema}
    )
    assert_person(question.choices[0].text)


@pytest.mark.parametrize(
    ("endpoint", "body", "param", "needs"),
    [
        ("chat", {"model": "srm", "tool_choice": "required"}, "tool_choice", "needs tools"),
        (
            "chat",
            {
                "model": "lrm",
                "tools": [ADD],
                "tool_choice": {"type": "function", "function": {"name": "mul"}},
            },
            "tool_choice",
            "not among the tools (add)",
        ),
        ("chat", {"model": "srm", "tools": [{"type": "retrieval"}]}, "tools.0.type", "function"),
        (
            "chat",
            {"model": "srm", "response_format": {"type": "xml"}},
            "response_format",
            "json_object",
        ),
        ("chat", {"model": "lrm", "top_logprobs": 2}, "top_logprobs", "logprobs: true"),
        ("chat", {"model": "rankguide", "logprobs": True}, "logprobs", "ask the srm or lrm"),
        ("completions", {"model": "rankguide", "logprobs": 1}, "logprobs", "ask the srm or lrm"),
        ("completions", {"model": "srm", "tools": [ADD]}, "tools", "/v1/chat/completions"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_fields_that_cannot_be_honoured_are_400_naming_them(
    http: httpx.Client, endpoint: str, body: dict[str, Any], param: str, needs: str, stream: bool
) -> None:
    payload = {**body, "stream": stream, "max_tokens": 4}
    if endpoint == "chat":
        response = http.post("/chat/completions", json={**payload, "messages": GO})
    else:
        response = http.post("/completions", json={**payload, "prompt": "go"})
    # Refused before any generation: a streamed request gets the 400 too, not an SSE error.
    error = assert_error(response, 400, "invalid_request_error", param)
    assert param.split(".")[0] in error["message"] and needs in error["message"]


@pytest.mark.parametrize("mode", ["completions", "chat"])
def test_the_specreason_judge_reads_logprobs_from_rankguide_serve(
    served: ServedProcess, local: RankGuidePipeline, tiny_pair: tuple[Path, Path], mode: str
) -> None:
    """``RemoteLRM(judge_logprobs=...)`` against the served LRM scores as the local LRM does."""
    from langchain_rankguide.config.models import OpenAICompatibleLRMConfig
    from langchain_rankguide.lrm import LocalLRM
    from langchain_rankguide.remote import RemoteLRM

    config = OpenAICompatibleLRMConfig.model_validate(
        {"base_url": served.v1, "model": "lrm", "mode": mode, "tokenizer": str(tiny_pair[1])}
    )
    remote = RemoteLRM(config, delimiter="\n\n", max_step_tokens=8, judge_logprobs=20)
    reference = LocalLRM(local.lrm_loaded(), settings=local.step_settings)
    step = "we add 12 and 3.\n\n"
    for lrm in (remote, reference):
        lrm.begin(GO)
    sent: list[Any] = []
    original = remote.client.completions if mode == "completions" else remote.client.chat

    def spy(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        sent.append(result)
        return result

    setattr(remote.client, mode, spy)
    score = remote.judge(step)
    (result,) = sent
    assert result.top_logprobs, "the server honoured the log-probs request"
    assert score == reference.judge(step) is not None
    remote.close()


# --------------------------------------------------------------------------- in-process apps


class Ticker:
    """A slow handler: one piece every ``delay`` seconds; counts what it produced."""

    def __init__(self, delay: float = 0.05, n: int = 400) -> None:
        self.delay = delay
        self.n = n
        self.produced = 0
        self.ended = threading.Event()

    def _run(self, request: Any, cancelled: Callable[[], bool]) -> Generation:
        n = request.max_tokens or self.n
        try:
            for i in range(n):
                if cancelled():
                    raise Cancelled("request cancelled")
                time.sleep(self.delay)
                self.produced += 1
                yield Piece(f"t{i} ")
            return Outcome("length", 1, n)
        finally:
            self.ended.set()

    def chat(self, request: Any, cancelled: Callable[[], bool]) -> Generation:
        return self._run(request, cancelled)

    def complete(self, request: Any, cancelled: Callable[[], bool]) -> Generation:
        return self._run(request, cancelled)


class Counting:
    """Wrap a real handler: slow down its cancellation checks and count the pieces it yields."""

    def __init__(self, inner: PlainModelHandler, delay: float) -> None:
        self.inner = inner
        self.delay = delay
        self.pieces = 0
        self.ended = threading.Event()

    def _count(self, generation: Generation) -> Generation:
        try:
            while True:
                try:
                    piece = next(generation)
                except StopIteration as done:
                    return done.value
                self.pieces += 1
                yield piece
        finally:
            generation.close()
            self.ended.set()

    def _slow(self, cancelled: Callable[[], bool]) -> Callable[[], bool]:
        def check() -> bool:
            time.sleep(self.delay)
            return cancelled()

        return check

    def chat(self, request: Any, cancelled: Callable[[], bool]) -> Generation:
        return self._count(self.inner.chat(request, self._slow(cancelled)))

    def complete(self, request: Any, cancelled: Callable[[], bool]) -> Generation:
        return self._count(self.inner.complete(request, self._slow(cancelled)))


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def first_event(lines: Iterator[str]) -> str:
    for line in lines:
        if line.startswith("data: "):
            return line
    raise AssertionError("the stream ended without an event")


def test_bearer_token_is_required() -> None:
    app = create_app({"tick": Ticker(delay=0, n=3)}, api_key=SecretStr(KEY))
    with InProcessServer(app) as server, httpx.Client(base_url=server.v1) as http:
        body = {"model": "tick", "prompt": "go"}
        for headers in (
            {},
            {"Authorization": "Bearer sk-wrong"},
            {"Authorization": f"Bearer {KEY}x"},
            {"Authorization": f"Bearer {KEY[:-1]}"},
            {"Authorization": KEY},
            {"Authorization": f"Basic {KEY}"},
        ):
            response = http.post("/completions", json=body, headers=headers)
            assert_error(response, 401, "authentication_error")
            assert KEY not in response.text
        assert_error(http.get("/models"), 401, "authentication_error")
        ok = http.post("/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200 and ok.json()["choices"][0]["text"] == "t0 t1 t2 "
        with openai.OpenAI(base_url=server.v1, api_key="sk-wrong", max_retries=0) as wrong:
            with pytest.raises(openai.AuthenticationError):
                wrong.models.list()
        with openai.OpenAI(base_url=server.v1, api_key=KEY, max_retries=0) as right:
            assert [m.id for m in right.models.list().data] == ["tick"]


def test_full_queue_is_429_with_retry_after() -> None:
    ticker = Ticker(delay=0.05, n=400)
    limits = ServerLimits(max_concurrency=1, max_queue=1, retry_after_s=3)
    app = create_app({"tick": ticker}, limits=limits)
    admission = app.state.admission
    body = {"model": "tick", "prompt": "go"}
    with InProcessServer(app) as server, httpx.Client(base_url=server.v1, timeout=30) as http:
        with http.stream("POST", "/completions", json={**body, "stream": True}) as held:
            events = held.iter_lines()  # kept: dropping the iterator closes the connection
            first_event(events)  # the first request generates
            queued: list[httpx.Response] = []
            waiter = threading.Thread(
                target=lambda: queued.append(
                    http.post("/completions", json={**body, "max_tokens": 2})
                )
            )
            waiter.start()
            assert wait_until(lambda: admission._inside == 2), "the second request waits"
            refused = http.post("/completions", json=body)
            assert_error(refused, 429, "rate_limit_error")
            assert refused.headers["retry-after"] == "3"
            with openai.OpenAI(base_url=server.v1, api_key="x", max_retries=0) as c:
                with pytest.raises(openai.RateLimitError):
                    c.completions.create(model="tick", prompt="go")
            assert not queued, "the queued request waits for the slot"
        # The held stream is closed: its slot goes to the queued request.
        waiter.join(timeout=20)
        assert queued and queued[0].status_code == 200
        assert queued[0].json()["choices"][0]["finish_reason"] == "length"
        assert wait_until(lambda: admission._inside == 0)
        assert admission.rejected == 2


def test_deadline_is_504_and_stops_the_work() -> None:
    ticker = Ticker(delay=0.05, n=400)
    app = create_app({"tick": ticker}, limits=ServerLimits(request_timeout_s=0.5))
    with InProcessServer(app) as server, httpx.Client(base_url=server.v1, timeout=30) as http:
        started = time.monotonic()
        response = http.post("/completions", json={"model": "tick", "prompt": "go"})
        assert_error(response, 504, "timeout_error")
        assert time.monotonic() - started < 5
        assert ticker.ended.is_set() and ticker.produced < 40
        # Streaming: the error arrives as the last event, then the stream ends.
        ticker.ended.clear()
        with http.stream(
            "POST", "/chat/completions", json={"model": "tick", "messages": GO, "stream": True}
        ) as stream:
            events = [line for line in stream.iter_lines() if line.startswith("data: ")]
        assert json.loads(events[-1][6:])["error"]["type"] == "timeout_error"
        assert "data: [DONE]" not in events
        assert ticker.ended.wait(5)
        assert wait_until(lambda: app.state.admission._inside == 0)


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_client_disconnect_stops_generation(local: RankGuidePipeline, endpoint: str) -> None:
    handler = Counting(PlainModelHandler(local.srm, role="srm", max_tokens=512), delay=0.05)
    app = create_app({"srm": handler})
    path, body = (
        ("/completions", {"prompt": raw_prompt(local)})
        if endpoint == "completions"
        else ("/chat/completions", {"messages": GO})
    )
    body = {"model": "srm", "max_tokens": 400, "stream": True, **body}
    with InProcessServer(app) as server, httpx.Client(base_url=server.v1, timeout=30) as http:
        with http.stream("POST", path, json=body) as stream:
            lines = stream.iter_lines()
            first_event(lines)
            first_event(lines)
        # The client is gone after two events; generation must stop within a few tokens.
        assert handler.ended.wait(5), "the generation was not closed"
        stopped_at = handler.pieces
        assert stopped_at < 20
        time.sleep(0.3)
        assert handler.pieces == stopped_at
        assert wait_until(lambda: app.state.admission._inside == 0), "the slot was not released"
        # The server still serves.
        again = http.post(path, json={**body, "stream": False, "max_tokens": 3})
        assert again.status_code == 200


def test_unreachable_lrm_is_502(tiny_pair: tuple[Path, Path], tmp_path: Path) -> None:
    from remote_servers import refused_url
    from server_fixtures import tiny_config_data, write_config

    from langchain_rankguide.server.app import build_app_from_config

    url = refused_url()
    lrm = {
        "provider": "openai_compatible",
        "base_url": url,
        "model": "lrm",
        "tokenizer": str(tiny_pair[1]),
        "retries": {"max_attempts": 1},
        "on_failure": "fail",
    }
    path = write_config(tmp_path / "remote.yaml", tiny_config_data(tiny_pair[0], lrm))
    app = build_app_from_config(load_config(str(path)))
    body = {"model": "rankguide", "messages": GO, "rankguide": {"policy": "lrm"}}
    with InProcessServer(app) as server, httpx.Client(base_url=server.v1, timeout=60) as http:
        assert [m["id"] for m in http.get("/models").json()["data"]] == [
            "rankguide",
            "srm",
            "tiny-srm",
        ], "a remote LRM is not served"
        error = assert_error(http.post("/chat/completions", json=body), 502, "server_error")
        assert f"{url}/completions" in error["message"]
        with http.stream("POST", "/chat/completions", json={**body, "stream": True}) as stream:
            events = [line for line in stream.iter_lines() if line.startswith("data: ")]
        assert json.loads(events[-1][6:])["error"]["type"] == "server_error"
        assert "data: [DONE]" not in events
        assert wait_until(lambda: app.state.admission._inside == 0)


def test_a_thread_id_needs_a_server_with_a_checkpoint_store(http: httpx.Client) -> None:
    body = {"model": "rankguide", "prompt": "go", "rankguide": {"thread_id": "t1"}}
    error = assert_error(http.post("/completions", json=body), 400, "invalid_request_error")
    assert error["message"].startswith("rankguide.thread_id: this server keeps no checkpoints")


def test_a_durable_request_runs_once_at_a_time_resumes_and_keeps_its_result(
    served_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``rankguide.thread_id`` on a server with a store: while the run goes on, the same thread
    is refused with 409; a run cut off (the client hung up) resumes when the request comes
    again, and a finished one returns its stored result."""
    from langchain_rankguide.checkpoints import open_checkpointer
    from langchain_rankguide.config import CheckpointConfig
    from langchain_rankguide.engine import step_engine
    from langchain_rankguide.server.app import build_app_from_config

    app = build_app_from_config(
        load_config(str(served_config)),
        limits=ServerLimits(max_concurrency=2),
        checkpoint=str(tmp_path / "runs.sqlite"),
    )
    body = {"model": "rankguide", "prompt": "go", "rankguide": {"thread_id": "t-409"}}
    with InProcessServer(app) as server, httpx.Client(base_url=server.v1, timeout=60) as http:
        plain = http.post("/completions", json={**body, "rankguide": {}}).json()["rankguide"]
        feed = step_engine.StepEngine._feed

        def slow_feed(self: Any, *args: Any, **kwargs: Any) -> Any:
            time.sleep(0.02)
            return feed(self, *args, **kwargs)

        monkeypatch.setattr(step_engine.StepEngine, "_feed", slow_feed)
        with http.stream("POST", "/completions", json={**body, "stream": True}) as stream:
            first_event(stream.iter_lines())  # the run holds its thread
            busy = http.post("/completions", json=body)
            assert_error(busy, 409, "conflict_error")
            assert "thread 't-409' is being run by another request" in busy.text
        assert wait_until(lambda: app.state.admission._inside == 0)
        monkeypatch.setattr(step_engine.StepEngine, "_feed", feed)
        saver = open_checkpointer(CheckpointConfig(), target=str(tmp_path / "runs.sqlite"))
        cut = build_graph(load_config(str(served_config)), checkpointer=saver).get_state(
            {"configurable": {"thread_id": "t-409"}}
        )
        assert cut.next and 0 < len(cut.values["steps"]) < len(plain["steps"]), "cut mid-run"
        resumed = http.post("/completions", json=body).json()["rankguide"]
        again = http.post("/completions", json=body).json()["rankguide"]
    assert resumed["thread_id"] == "t-409"
    for reply in (resumed, again):
        assert [s["text"] for s in reply["steps"]] == [s["text"] for s in plain["steps"]]


# --------------------------------------------------------------------------- bounds on clients


class Broken:
    """A handler failing with an error no route expects: a stand-in for a bug."""

    def _fail(self, request: Any, cancelled: Callable[[], bool]) -> Generation:
        raise RuntimeError("an unexpected bug")
        yield Piece("")  # a generator, as handlers are

    def chat(self, request: Any, cancelled: Callable[[], bool]) -> Generation:
        return self._fail(request, cancelled)

    def complete(self, request: Any, cancelled: Callable[[], bool]) -> Generation:
        return self._fail(request, cancelled)


def test_an_unexpected_error_is_a_500_that_closes_the_connection_cleanly() -> None:
    app = create_app({"broken": Broken(), "tick": Ticker(delay=0, n=2)})
    with InProcessServer(app) as server, httpx.Client(base_url=server.v1, timeout=30) as http:
        for _ in range(3):  # each time, the pooled connection is given up, not found dead
            response = http.post("/completions", json={"model": "broken", "prompt": "go"})
            error = assert_error(response, 500, "server_error")
            assert response.headers["connection"] == "close"
            assert "unexpected bug" not in error["message"]  # logged, not sent
            ok = http.post("/completions", json={"model": "tick", "prompt": "go"})
            assert ok.status_code == 200
        body = {"model": "broken", "prompt": "go", "stream": True}
        with http.stream("POST", "/completions", json=body) as stream:
            events = [line for line in stream.iter_lines() if line.startswith("data: ")]
        assert json.loads(events[-1][6:])["error"]["type"] == "server_error"
        assert "data: [DONE]" not in events
        assert http.post("/completions", json={"model": "tick", "prompt": "go"}).status_code == 200
        assert wait_until(lambda: app.state.admission._inside == 0)


def test_an_abandoned_non_streamed_request_stops_generating() -> None:
    # H6: the client gives up after 0.5 s; the 400 pieces (20 s) are not generated for nobody.
    ticker = Ticker(delay=0.05, n=400)
    app = create_app({"tick": ticker})
    with InProcessServer(app) as server:
        with httpx.Client(base_url=server.v1, timeout=0.5) as quitter:
            with pytest.raises(httpx.ReadTimeout):
                quitter.post("/completions", json={"model": "tick", "prompt": "go"})
        assert ticker.ended.wait(5), "the generation went on after the client left"
        assert ticker.produced < 25
        assert wait_until(lambda: app.state.admission._inside == 0), "the slot was not released"
        with httpx.Client(base_url=server.v1, timeout=30) as http:
            started = time.monotonic()
            short = {"model": "tick", "prompt": "go", "max_tokens": 3}
            again = http.post("/completions", json=short)
            assert again.status_code == 200 and time.monotonic() - started < 2


def test_a_chunked_body_is_refused_as_it_arrives() -> None:
    # H7: a 300 MB chunked body; the 413 comes after about 1 MB, and the rest is never sent.
    app = create_app({"tick": Ticker(delay=0, n=2)}, limits=ServerLimits(max_body_bytes=1 << 20))
    with InProcessServer(app) as server:
        sock = open_raw(server.port)
        head = (
            b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        piece = b"x" * 65536
        frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        sent = 0
        sock.sendall(head)
        try:
            while sent < 300 << 20 and not select.select([sock], [], [], 0)[0]:
                sock.sendall(frame)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = read_until_closed(sock, 10)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"connection: close" in reply.lower()
    assert sent < 32 << 20, f"{sent >> 20} MB were sent before the 413"


def test_slow_clients_are_cut_off_while_others_are_served() -> None:
    # H8: connections that send nothing, half their headers, a trickle, or half their body.
    limits = ServerLimits(read_timeout_s=1.0)
    app = create_app({"tick": Ticker(delay=0, n=2)}, limits=limits)
    head = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    body_head = head + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    with InProcessServer(app, **uvicorn_settings(limits.read_timeout_s)) as server:
        started = time.monotonic()
        silent = [open_raw(server.port) for _ in range(5)]
        half_head = [open_raw(server.port, head) for _ in range(5)]
        half_body = [open_raw(server.port, body_head + b'{"model": "tick"') for _ in range(5)]
        trickle = open_raw(server.port)
        stop = threading.Event()

        def drip() -> None:  # one byte every 0.1 s: busy, but never done
            for byte in head * 10:
                if stop.wait(0.1):
                    return
                try:
                    trickle.send(bytes([byte]))
                except OSError:
                    return

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        with httpx.Client(base_url=server.v1, timeout=30) as http:
            ok = http.post("/completions", json={"model": "tick", "prompt": "go"})
            assert ok.status_code == 200, "a prompt client is served meanwhile"
        replies = {
            "silent": [read_until_closed(s, 5) for s in silent],
            "half_head": [read_until_closed(s, 5) for s in half_head],
            "half_body": [read_until_closed(s, 5) for s in half_body],
            "trickle": [read_until_closed(trickle, 5)],
        }
        stop.set()
        elapsed = time.monotonic() - started
    assert elapsed < 4, f"the slow clients were held {elapsed:.1f} s"
    for kind, answers in replies.items():
        for answer in answers:
            assert answer.startswith(b"HTTP/1.1 408"), (kind, answer[:200])
            assert b"connection: close" in answer.lower()
    assert b"request body not received within 1 s" in replies["half_body"][0]
    assert b"request headers not received within 1 s" in replies["half_head"][0]


def test_serve_bounds_slow_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    """``rankguide serve`` runs uvicorn with the request deadline and the header size bound."""
    import uvicorn

    from langchain_rankguide.cli import main
    from langchain_rankguide.server import app as app_module

    seen: dict[str, Any] = {}

    class Server:
        def __init__(self, config: Any) -> None:
            self.startup = None

        def run(self) -> None:
            pass

    monkeypatch.setattr(app_module, "build_app_from_config", lambda *a, **k: object())
    monkeypatch.setattr(uvicorn, "Config", lambda app, **kwargs: seen.update(kwargs))
    monkeypatch.setattr(uvicorn, "Server", Server)
    assert main(["serve", "--port", "0"]) == 0
    assert issubclass(seen["http"], TimedH11Protocol)
    assert seen["http"].read_timeout_s == ServerLimits().read_timeout_s
    assert seen["h11_max_incomplete_event_size"] == 16 * 1024
    assert seen["timeout_keep_alive"] == 5
