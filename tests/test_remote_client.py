"""The remote LRM client and backend against real loopback servers, well-behaved and faulty.

Every server is a real HTTP server on 127.0.0.1 (see ``remote_servers.py``); attempt counts are
read from the server's own request log. Retries use a 0.01 s backoff base so the suite is fast.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import pickle
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr, ValidationError
from remote_servers import (
    JUDGE_QUESTION,
    SCRIPT,
    FakeServer,
    refused_url,
    start_servers,
    stop_servers,
    tokens,
)

from langchain_rankguide.config.models import OpenAICompatibleLRMConfig
from langchain_rankguide.errors import ConfigError, RankGuideError
from langchain_rankguide.lrm import JUDGE_PROMPT, LRMBackend
from langchain_rankguide.remote import (
    LRMDeadlineError,
    LRMFallback,
    LRMReplyTooLargeError,
    LRMStreamCutError,
    LRMUnavailableError,
    OpenAICompatibleClient,
    RemoteLRM,
    ReplyLimit,
    RetryPolicy,
    SSEDecoder,
    aggregate_stream,
    chat_request,
    completions_request,
)
from langchain_rankguide.remote.backend import render_plain_prompt
from langchain_rankguide.remote.bounds import BoundedLines, BoundHit
from langchain_rankguide.remote.retry import Attempts, parse_retry_after, status_failure
from langchain_rankguide.schemas import StepRecord

KEY = "sk-test-9f8e7d6c5b4a"
STEP1 = "12 + 5 = 17, total 17.\n\n"
STEP2 = "Wait, check: 12 + 5 = 17.\n\n"
MESSAGES = [{"role": "user", "content": "What is 12 + 5?"}]
FAST = RetryPolicy(max_attempts=3, backoff_base_s=0.01, backoff_max_s=0.05, jitter=0.5)

assert JUDGE_PROMPT.endswith(JUDGE_QUESTION)


@pytest.fixture(scope="session")
def servers() -> Iterator[dict[str, FakeServer]]:
    started = start_servers()
    yield started
    stop_servers(started)


@pytest.fixture
def srv(servers: dict[str, FakeServer]) -> dict[str, FakeServer]:
    for server in servers.values():
        server.reset()
    return servers


def config(url: str, **overrides: Any) -> OpenAICompatibleLRMConfig:
    data: dict[str, Any] = {
        "base_url": url,
        "model": "fake-lrm",
        "timeouts": {"connect": 1.0, "read": 2.0},
        "retries": {"max_attempts": 3, "backoff_base_s": 0.01, "backoff_max_s": 0.05},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return OpenAICompatibleLRMConfig.model_validate(data)


def client(url: str, **kwargs: Any) -> OpenAICompatibleClient:
    kwargs.setdefault("retry", FAST)
    kwargs.setdefault("read_timeout_s", 2.0)
    return OpenAICompatibleClient(url, model="fake-lrm", **kwargs)


def backend(url: str, **overrides: Any) -> RemoteLRM:
    end_markers = overrides.pop("end_markers", ())
    lrm = RemoteLRM(
        config(url, **overrides), delimiter="\n\n", max_step_tokens=64, end_markers=end_markers
    )
    lrm.begin(MESSAGES)
    return lrm


# --------------------------------------------------------------------------- well-behaved


def test_completions_request_and_result(srv: dict[str, FakeServer]) -> None:
    ok = srv["ok"]
    with client(ok.url, api_key=SecretStr(KEY)) as c:
        result = c.completions(
            "Q: 12 + 5?\n",
            max_tokens=32,
            stop=["\n\n"],
            temperature=0.0,
            extra_body={"top_k": 1, "max_tokens": 999, "stop": ["x"]},
        )
    assert result.text == "12 + 5 = 17, total 17."
    assert result.finish_reason == "stop"
    assert result.matched_stop == "\n\n" and result.matched_stop_reported
    assert result.usage["completion_tokens"] > 0 and result.usage["prompt_tokens"] > 0
    assert result.attempts == 1
    sent = ok.last
    assert sent.path == "/v1/completions"
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    # extra_body adds vendor fields but never overrides what the client relies on.
    assert sent.body["top_k"] == 1
    assert sent.body["max_tokens"] == 32 and sent.body["stop"] == ["\n\n"]
    assert sent.body["model"] == "fake-lrm" and sent.body["temperature"] == 0.0


def test_chat_continues_the_final_message(srv: dict[str, FakeServer]) -> None:
    ok = srv["ok"]
    messages = [*MESSAGES, {"role": "assistant", "content": STEP1}]
    with client(ok.url) as c:
        result = c.chat(messages, max_tokens=32, stop=["\n\n"])
        assert ok.last.body["continue_final_message"] is True
        assert ok.last.body["add_generation_prompt"] is False
        assert result.text == STEP2.rstrip("\n")
        fresh = c.chat(MESSAGES, max_tokens=32, stop=["\n\n"])
    # An ordinary request carries no vendor extras (strict servers reject unknown fields).
    assert "continue_final_message" not in ok.last.body
    assert fresh.text == STEP1.rstrip("\n")


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_chat_reads_split_reasoning(srv: dict[str, FakeServer], field: str) -> None:
    ok = srv["ok"].configure(reasoning_field=field, script="a b</think>Answer: 7")
    with client(ok.url) as c:
        result = c.chat(MESSAGES, max_tokens=32)
        streamed = aggregate_stream(c.stream(chat_request(MESSAGES, max_tokens=32)))
    assert (result.reasoning, result.text) == ("a b", "Answer: 7")
    assert (streamed.reasoning, streamed.text) == ("a b", "Answer: 7")


def test_streaming_matches_non_streaming(srv: dict[str, FakeServer]) -> None:
    ok = srv["ok"]
    with client(ok.url) as c:
        whole = c.completions("", max_tokens=64)
        chunks = list(c.stream(completions_request("", max_tokens=64)))
        assert ok.last.body["stream"] is True and ok.last.body["model"] == "fake-lrm"
        assert ok.last.body["stream_options"] == {"include_usage": True}
        chat_chunks = list(c.stream(chat_request(MESSAGES, max_tokens=64, stop=["\n\n"])))
    assert len(chunks) > 3
    streamed = aggregate_stream(chunks)
    assert streamed.text == whole.text == SCRIPT
    assert streamed.finish_reason == "stop" and streamed.usage == whole.usage
    assert aggregate_stream(chat_chunks).text == STEP1.rstrip("\n")


def test_async_variants(srv: dict[str, FakeServer]) -> None:
    ok = srv["ok"]

    async def main() -> tuple[str, str, str]:
        async with client(ok.url) as c:
            first = await c.asend(completions_request("", max_tokens=64, stop=["\n\n"]))
            chat = await c.asend(chat_request(MESSAGES, max_tokens=64, stop=["\n\n"]))
            chunks = c.astream(completions_request("", max_tokens=64))
            text = "".join([chunk.text async for chunk in chunks])
            return first.text, chat.text, text

    first, chat, streamed = asyncio.run(main())
    assert first == chat == STEP1.rstrip("\n")
    assert streamed == SCRIPT


def test_async_retries_and_stream_cut(srv: dict[str, FakeServer]) -> None:
    flaky = srv["error500"].configure(failures=1)
    cut = srv["cut"]

    async def main() -> tuple[int, LRMStreamCutError]:
        async with client(flaky.url) as c, client(cut.url) as broken:
            result = await c.asend(chat_request(MESSAGES, max_tokens=64))
            try:
                async for _ in broken.astream(chat_request(MESSAGES, max_tokens=64)):
                    pass
            except LRMStreamCutError as exc:
                return result.attempts, exc
        raise AssertionError("the cut stream did not raise")

    attempts, err = asyncio.run(main())
    assert attempts == 2 and flaky.count == 2
    assert err.partial and cut.count == 1


def test_sse_decoder_and_retry_delays() -> None:
    decoder = SSEDecoder()
    lines = [": keep-alive", "event: x", 'data: {"a":', "data: 1}", "", "data:[DONE]", ""]
    events = [e for e in (decoder.feed(line) for line in lines) if e is not None]
    assert events == ['{"a":\n1}', "[DONE]"]
    policy = RetryPolicy(max_attempts=5, backoff_base_s=1.0, backoff_max_s=3.0, jitter=0.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 3.0, 3.0]
    assert policy.delay(1, retry_after=2.5) == 2.5
    assert policy.delay(1, retry_after=1e6) == policy.retry_after_max_s
    jittered = RetryPolicy(backoff_base_s=1.0, backoff_max_s=8.0, jitter=0.2)
    assert all(0.8 <= jittered.delay(1) <= 1.2 for _ in range(50))


def test_attempts_wait_count_and_give_up() -> None:
    policy = RetryPolicy(max_attempts=2, backoff_base_s=1.0, jitter=0.0)
    attempts = Attempts(policy, "http://user:pw@host/v1/completions", KEY)
    busy = status_failure(503, f"busy, key {KEY}", "7")
    assert attempts.wait(busy) == 7.0 and attempts.number == 2  # Retry-After beats the 1 s
    with pytest.raises(LRMUnavailableError) as info:
        attempts.wait(busy)
    err = info.value
    assert (err.attempts, err.status, err.url) == (2, 503, "http://host/v1/completions")
    assert KEY not in str(err) and "***" in err.reason
    with pytest.raises(LRMUnavailableError) as denied:
        Attempts(policy, "http://host/v1", None).wait(status_failure(401, "bad key"))
    assert (denied.value.attempts, denied.value.retryable) == (1, False)
    with pytest.raises(LRMStreamCutError) as cut:
        Attempts(policy, "http://host/v1", None).wait(busy, partial="12 +")
    assert (cut.value.partial, cut.value.status, cut.value.attempts) == ("12 +", 200, 1)
    assert status_failure(500, "x", "5").retry_after is None  # counts on 429/503 only
    assert parse_retry_after("2.5") == 2.5 and parse_retry_after("soon") is None
    in_30s = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < (parse_retry_after(in_30s) or 0) <= 30


def test_a_request_needs_a_model() -> None:
    with OpenAICompatibleClient("http://127.0.0.1:9/v1") as c, pytest.raises(ValueError):
        c.send(completions_request("x", max_tokens=1))


# --------------------------------------------------------------------------- faults (client)


def test_refused_connection_is_retried_then_raises() -> None:
    url = refused_url()
    with client(url) as c, pytest.raises(LRMUnavailableError) as info:
        c.completions("x", max_tokens=4)
    err = info.value
    assert (err.status, err.attempts, err.retryable) == (None, 3, True)
    assert err.url == f"{url}/completions" and url in str(err)
    assert "no response" in str(err)


def test_slow_response_times_out_and_is_retried(srv: dict[str, FakeServer]) -> None:
    slow = srv["slow"]
    retry = RetryPolicy(max_attempts=2, backoff_base_s=0.01, backoff_max_s=0.01)
    started = time.perf_counter()
    with client(slow.url, read_timeout_s=0.2, retry=retry) as c:
        with pytest.raises(LRMUnavailableError) as info:
            c.completions("x", max_tokens=4)
    assert time.perf_counter() - started < 0.9  # gave up before the server answered
    assert slow.count == 2 and info.value.status is None
    assert "ReadTimeout" in info.value.reason


def test_500_then_success(srv: dict[str, FakeServer]) -> None:
    flaky = srv["error500"].configure(failures=2)
    with client(flaky.url) as c:
        result = c.completions("", max_tokens=64, stop=["\n\n"])
    assert result.text == STEP1.rstrip("\n") and result.attempts == 3
    assert flaky.count == 3


def test_500_until_attempts_run_out(srv: dict[str, FakeServer]) -> None:
    broken = srv["error500"]
    with client(broken.url) as c, pytest.raises(LRMUnavailableError) as info:
        c.completions("x", max_tokens=4)
    err = info.value
    assert (err.status, err.attempts, broken.count) == (500, 3, 3)
    assert "HTTP 500" in str(err) and "fake failure 500" in str(err)


def test_429_honours_retry_after(srv: dict[str, FakeServer]) -> None:
    limited = srv["ratelimit"]  # one 429 with "Retry-After: 1", then success
    started = time.perf_counter()
    with client(limited.url) as c:
        result = c.completions("", max_tokens=64, stop=["\n\n"])
    elapsed = time.perf_counter() - started
    assert result.attempts == 2 and limited.count == 2
    assert elapsed >= 0.9, elapsed  # the 0.01 s backoff was raised to the header's 1 s


def test_malformed_json_is_retried(srv: dict[str, FakeServer]) -> None:
    bad = srv["malformed"].configure(failures=1)
    with client(bad.url) as c:
        assert c.completions("", max_tokens=64, stop=["\n\n"]).attempts == 2
    bad.reset()
    with client(bad.url) as c, pytest.raises(LRMUnavailableError) as info:
        c.completions("", max_tokens=64)
    assert (info.value.status, info.value.attempts, bad.count) == (200, 3, 3)
    assert "malformed response body" in info.value.reason


@pytest.mark.parametrize("mode", ["chunked", "eof"])
def test_stream_cut_midway_raises_with_partial_text(srv: dict[str, FakeServer], mode: str) -> None:
    cut = srv["cut"].configure(cut_mode=mode)
    received: list[str] = []
    with client(cut.url) as c, pytest.raises(LRMStreamCutError) as info:
        for chunk in c.stream(completions_request("", max_tokens=64)):
            received.append(chunk.text)
    err = info.value
    assert received and err.partial == "".join(received)
    assert err.status == 200 and err.attempts == 1 and cut.count == 1  # no silent repeat
    assert isinstance(err, LRMUnavailableError)


def test_stream_is_retried_before_any_text(srv: dict[str, FakeServer]) -> None:
    flaky = srv["error500"].configure(failures=1)
    with client(flaky.url) as c:
        text = "".join(chunk.text for chunk in c.stream(completions_request("", max_tokens=64)))
    assert text == SCRIPT and flaky.count == 2


def test_stream_error_event_is_retried_before_any_text() -> None:
    bodies = [
        b'data: {"error": {"message": "overloaded"}}\n\n',
        b'data: {"choices": [{"text": "17", "finish_reason": "stop"}]}\n\n',
    ]
    sent: list[bytes] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request.content)
        return httpx.Response(200, content=bodies[len(sent) - 1])

    with client("http://lrm.test/v1", transport=httpx.MockTransport(answer)) as c:
        chunks = list(c.stream(completions_request("12 + 5 =", max_tokens=4)))
    assert [chunk.text for chunk in chunks] == ["17"] and len(sent) == 2


def test_401_is_not_retried(srv: dict[str, FakeServer]) -> None:
    denied = srv["unauthorized"]
    with client(denied.url, api_key=SecretStr(KEY)) as c, pytest.raises(LRMUnavailableError) as e:
        c.chat(MESSAGES, max_tokens=4)
    assert (e.value.status, e.value.attempts, e.value.retryable, denied.count) == (401, 1, False, 1)


def test_api_key_never_leaks(
    srv: dict[str, FakeServer], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RG_TEST_LRM_KEY", KEY)
    caplog.set_level(logging.DEBUG)  # httpx and httpcore debug logs included
    # A hostile server echoes the Authorization header into its error message.
    echo = srv["unauthorized"].configure(echo_auth_in_error=True)
    cfg = config(echo.url, api_key_env="RG_TEST_LRM_KEY")
    lrm = RemoteLRM(cfg, delimiter="\n\n", max_step_tokens=8)
    lrm.begin(MESSAGES)
    with pytest.raises(LRMUnavailableError) as info:
        lrm.write_step(max_new_tokens=8)
    assert echo.last.headers["Authorization"] == f"Bearer {KEY}"  # it was sent
    assert "***" in str(info.value)
    retried = srv["error500"].configure(echo_auth_in_error=True)
    fallback = backend(retried.url, api_key_env="RG_TEST_LRM_KEY", on_failure="fallback_srm")
    with pytest.raises(LRMFallback) as signal:
        fallback.write_step(max_new_tokens=8)
    assert retried.count == 3 and caplog.records  # retries were logged
    texts = [
        str(info.value),
        repr(info.value),
        str(signal.value),
        signal.value.fallback,
        repr(lrm),
        repr(lrm.client),
        repr(cfg),
        caplog.text,
        str(pickle.loads(pickle.dumps(info.value))),
    ]
    for text in texts:
        assert KEY not in text


def test_missing_key_variable_is_a_config_error(
    srv: dict[str, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RG_TEST_UNSET_KEY", raising=False)
    lrm = backend(srv["ok"].url, api_key_env="RG_TEST_UNSET_KEY", on_failure="fallback_srm")
    with pytest.raises(ConfigError, match="RG_TEST_UNSET_KEY"):
        lrm.write_step(max_new_tokens=8)
    assert srv["ok"].count == 0


# --------------------------------------------------------------------------- RemoteLRM


def test_remote_lrm_writes_steps_ending_at_the_delimiter(srv: dict[str, FakeServer]) -> None:
    ok = srv["ok"]
    lrm = backend(ok.url)
    assert isinstance(lrm, LRMBackend) and lrm.identity == "fake-lrm"
    first = lrm.write_step(max_new_tokens=100)
    assert (first.text, first.finish_reason) == (STEP1, "delimiter")
    prompt = render_plain_prompt(MESSAGES)
    assert ok.last.body["prompt"] == prompt and ok.last.body["max_tokens"] == 64
    assert ok.last.body["stop"] == ["\n\n"] and ok.last.body["temperature"] == 0.0
    lrm.observe(STEP2)  # an SRM step: no request
    assert ok.count == 1
    answer = lrm.write_step(max_new_tokens=100, answer_phase=True)
    assert (answer.text, answer.finish_reason) == ("Answer: 17", "eos")
    assert ok.last.body["prompt"] == prompt + STEP1 + STEP2 and "stop" not in ok.last.body
    assert lrm.steps == (STEP1, STEP2, "Answer: 17")
    # Usage is the server's: prompt_tokens -> prefill, completion_tokens -> decode (the
    # stripped stop string counts as generated, as on real servers).
    assert lrm.usage["decode_tokens"] == first.tokens + answer.tokens == 16 + 4
    assert lrm.usage["prefill_tokens"] == sum(len(tokens(r.body["prompt"])) for r in ok.requests)
    lrm.close()


def test_stop_string_and_end_markers_without_stop_reason(srv: dict[str, FakeServer]) -> None:
    script = "12 + 5 = 17.\n\nSo 17</think>\n\nAnswer: 17"
    ok = srv["ok"].configure(script=script)
    lrm = backend(ok.url, end_markers=["</think>"])
    assert lrm.write_step(max_new_tokens=64).text == "12 + 5 = 17.\n\n"
    second = lrm.write_step(max_new_tokens=64)
    assert (second.text, second.finish_reason) == ("So 17</think>", "end_marker")
    assert ok.last.body["stop"] == ["\n\n", "</think>"]
    # A server that does not say which stop matched: the delimiter is assumed mid-trace.
    ok.reset().configure(report_stop_reason=False)
    quiet = backend(ok.url)
    assert quiet.write_step(max_new_tokens=64).finish_reason == "delimiter"
    quiet.observe(STEP2)
    assert quiet.write_step(max_new_tokens=64, answer_phase=True).finish_reason == "eos"


def test_step_cap_gives_max_tokens(srv: dict[str, FakeServer]) -> None:
    lrm = backend(srv["ok"].url)
    step = lrm.write_step(max_new_tokens=3)
    assert (step.text, step.finish_reason, step.tokens) == ("12 +", "max_tokens", 3)
    assert srv["ok"].last.body["max_tokens"] == 3


def test_resume_from_committed_records(srv: dict[str, FakeServer]) -> None:
    lrm = RemoteLRM(config(srv["ok"].url), delimiter="\n\n", max_step_tokens=64)
    lrm.begin(MESSAGES, [StepRecord(index=0, author="srm", text=STEP1)])
    assert lrm.write_step(max_new_tokens=64).text == STEP2


def test_client_side_chat_template(srv: dict[str, FakeServer], tmp_path: Path) -> None:
    from tiny_models import build_tokenizer

    build_tokenizer(tmp_path)
    ok = srv["ok"]
    lrm = backend(ok.url, tokenizer=str(tmp_path))
    lrm.write_step(max_new_tokens=64)
    assert ok.last.body["prompt"] == "<s>user: What is 12 + 5?\n<s>assistant: "
    template = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
    template += "{% if add_generation_prompt %}[assistant]{% endif %}"
    jinja = backend(ok.url, chat_template=template)
    step = jinja.write_step(max_new_tokens=64)
    assert ok.last.body["prompt"] == "[user]What is 12 + 5?[assistant]" and step.text == STEP1


def test_chat_mode_and_a_server_ignoring_continue(srv: dict[str, FakeServer]) -> None:
    ok = srv["ok"]
    lrm = backend(ok.url, mode="chat")
    assert lrm.write_step(max_new_tokens=64).text == STEP1
    assert "continue_final_message" not in ok.last.body  # nothing to continue yet
    second = lrm.write_step(max_new_tokens=64)
    assert second.text == STEP2
    assert ok.last.body["messages"][-1] == {"role": "assistant", "content": STEP1}
    assert ok.last.body["continue_final_message"] is True
    # Ignoring continue_final_message, the server answers in a new turn: the request works but
    # the model does not continue the trace (here it restarts) -- the documented difference.
    ok.reset().configure(honour_continue=False)
    ignoring = backend(ok.url, mode="chat")
    ignoring.observe(STEP1)
    assert ignoring.write_step(max_new_tokens=64).text == STEP1


def test_chat_mode_with_reasoning_split(srv: dict[str, FakeServer]) -> None:
    ok = srv["ok"].configure(reasoning_field="reasoning", script="a b.\n\nc</think>Answer: 7")
    lrm = backend(ok.url, mode="chat", end_markers=["</think>"], extra_body={"x_vendor": 1})
    assert lrm.write_step(max_new_tokens=64).text == "a b.\n\n"
    assert ok.last.body["x_vendor"] == 1
    # The end marker is a stop string: the server stops there and reports it.
    assert lrm.write_step(max_new_tokens=64).text == "c</think>"
    answer = lrm.write_step(max_new_tokens=64, answer_phase=True)
    assert answer.text == "Answer: 7" and answer.finish_reason == "eos"


def test_judge(srv: dict[str, FakeServer]) -> None:
    ok = srv["ok"]
    lrm = backend(ok.url)
    assert lrm.judge(STEP1) == 8
    body = ok.last.body
    assert body["max_tokens"] == 1 and body["temperature"] == 0.0 and "logprobs" not in body
    assert body["prompt"].endswith(STEP1 + JUDGE_PROMPT)
    assert lrm.steps == ()  # judged text is never committed
    ok.configure(judge_reply="x")
    assert lrm.judge(STEP1) is None
    # With log-probs, the most likely digit among the top alternatives wins (" 9": -0.7).
    scored = RemoteLRM(config(ok.url), delimiter="\n\n", max_step_tokens=8, judge_logprobs=5)
    scored.begin(MESSAGES)
    assert scored.judge(STEP1) == 9 and ok.last.body["logprobs"] == 5
    chat = RemoteLRM(
        config(ok.url, mode="chat"), delimiter="\n\n", max_step_tokens=8, judge_logprobs=5
    )
    chat.begin(MESSAGES)
    assert chat.judge(STEP1) == 9 and ok.last.body["top_logprobs"] == 5


# --------------------------------------------------------------------------- failure policy

FAULTS = {
    # name: (server or None for refused, settings, expected status, expected attempts)
    "refused": (None, {}, None, 3),
    "slow": ("slow", {}, None, 2),
    "error500": ("error500", {}, 500, 3),
    "ratelimit": ("ratelimit", {"failures": 10**9, "retry_after": "0"}, 429, 3),
    "malformed": ("malformed", {}, 200, 3),
    "cut": ("cut", {}, None, 3),
    "unauthorized": ("unauthorized", {}, 401, 1),
}


def faulty_backend(
    srv: dict[str, FakeServer], fault: str, on_failure: str
) -> tuple[RemoteLRM, FakeServer | None]:
    name, settings, _, _ = FAULTS[fault]
    server = srv[name].configure(**settings) if name else None
    url = server.url if server else refused_url()
    extra: dict[str, Any] = {"on_failure": on_failure}
    if fault == "slow":
        extra.update(timeouts={"read": 0.2}, retries={"max_attempts": 2})
    lrm = RemoteLRM(config(url, **extra), delimiter="\n\n", max_step_tokens=64)
    lrm.begin(MESSAGES, [StepRecord(index=0, author="srm", text=STEP1)])
    return lrm, server


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_with_fail_policy(srv: dict[str, FakeServer], fault: str) -> None:
    lrm, server = faulty_backend(srv, fault, "fail")
    with pytest.raises(LRMUnavailableError) as info:
        lrm.write_step(max_new_tokens=64)
    _, _, status, attempts = FAULTS[fault]
    assert (info.value.status, info.value.attempts) == (status, attempts)
    assert server is None or server.count == attempts
    assert isinstance(info.value, RankGuideError)
    assert lrm.steps == (STEP1,) and lrm.usage == {"prefill_tokens": 0, "decode_tokens": 0}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_with_fallback_policy(srv: dict[str, FakeServer], fault: str) -> None:
    lrm, server = faulty_backend(srv, fault, "fallback_srm")
    with pytest.raises(LRMFallback) as signal:
        lrm.write_step(max_new_tokens=64)
    _, _, status, attempts = FAULTS[fault]
    assert server is None or server.count == attempts
    assert signal.value.fallback.startswith("lrm_unavailable: ")
    assert signal.value.cause.status == status and signal.value.cause.attempts == attempts
    assert not isinstance(signal.value, LRMUnavailableError)
    assert lrm.steps == (STEP1,)
    if fault == "error500":
        with pytest.raises(LRMFallback):
            lrm.judge(STEP2)  # the judge follows the same policy
    lrm.observe(STEP2)  # the collaboration keeps the SRM draft and goes on
    assert lrm.steps == (STEP1, STEP2)


def test_committed_steps_survive_a_failed_write(srv: dict[str, FakeServer]) -> None:
    flaky = srv["error500"].configure(failures=3)
    lrm = backend(flaky.url, retries={"max_attempts": 2})
    lrm.observe(STEP1)
    with pytest.raises(LRMUnavailableError):
        lrm.write_step(max_new_tokens=64)
    assert lrm.steps == (STEP1,) and flaky.count == 2
    # The server recovers (4th request): the next write sends the whole committed trace.
    step = lrm.write_step(max_new_tokens=64)
    assert step.text == STEP2 and flaky.count == 4
    assert flaky.last.body["prompt"] == render_plain_prompt(MESSAGES) + STEP1
    assert lrm.steps == (STEP1, STEP2)


# --------------------------------------------------------------------------- bounds


def test_a_huge_reply_is_cut_at_its_bound_and_not_retried(srv: dict[str, FakeServer]) -> None:
    # 20 MB for max_tokens 64 (R1): read up to 64 KiB + 2 KiB per token, then refused.
    huge = srv["huge"]
    cap = 65536 + 2048 * 64
    started = time.perf_counter()
    with client(huge.url) as c:
        with pytest.raises(LRMReplyTooLargeError) as whole:
            c.completions("x", max_tokens=64)
        with pytest.raises(LRMReplyTooLargeError) as streamed:
            list(c.stream(completions_request("x", max_tokens=64)))
    assert time.perf_counter() - started < 5
    for err in (whole.value, streamed.value):
        assert err.attempts == 1 and not err.retryable and err.status == 200
        assert f"longer than {cap} bytes" in str(err) and "lrm.reply_limit" in str(err)
    assert huge.count == 2, "a reply over its bound is not asked for again"


def test_async_huge_reply_is_cut_at_its_bound(srv: dict[str, FakeServer]) -> None:
    huge = srv["huge"]
    limit = ReplyLimit(bytes_per_token=16, base_bytes=4096)

    async def main() -> None:
        async with client(huge.url, reply_limit=limit) as c:
            with pytest.raises(LRMReplyTooLargeError, match="longer than 4112 bytes"):
                await c.asend(completions_request("x", max_tokens=1))
            with pytest.raises(LRMReplyTooLargeError):
                async for _ in c.astream(completions_request("x", max_tokens=1)):
                    pass

    asyncio.run(main())
    assert huge.count == 2


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_reply_is_read_no_further_than_its_bound(streamed: bool) -> None:
    """An endless body: the client pulls at most the bound (plus the read in flight)."""
    pulled: list[int] = []
    piece = b"data: " + b"x" * 1000 + b"\n" if streamed else b"x" * 1000

    class Endless(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            while True:
                pulled.append(len(piece))
                yield piece

    def reply(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Endless())

    limit = ReplyLimit(bytes_per_token=100, base_bytes=5000)
    with client("http://lrm.test/v1", transport=httpx.MockTransport(reply), reply_limit=limit) as c:
        request = completions_request("x", max_tokens=10)
        with pytest.raises(LRMReplyTooLargeError):
            list(c.stream(request)) if streamed else c.send(request)
    assert 6000 <= sum(pulled) <= 6000 + len(piece)


def test_reply_limit_scales_with_max_tokens(srv: dict[str, FakeServer]) -> None:
    assert ReplyLimit(bytes_per_token=10, base_bytes=100).cap(7) == 170
    assert ReplyLimit().cap(None) == ReplyLimit().cap(32768)  # a body without max_tokens
    # A long, honest reply fits: the oracle's whole script under max_tokens 64.
    with client(srv["ok"].url, reply_limit=ReplyLimit(bytes_per_token=256, base_bytes=1024)) as c:
        assert c.completions("", max_tokens=64).text == SCRIPT
        assert "".join(ch.text for ch in c.stream(completions_request("", max_tokens=64))) == SCRIPT


@pytest.mark.parametrize("headers", [False, True], ids=["body", "headers"])
def test_a_trickled_reply_hits_the_request_deadline(
    srv: dict[str, FakeServer], headers: bool
) -> None:
    # One byte every 0.2 s never trips the 2 s read timeout (R2); the 0.5 s request deadline
    # ends each attempt, and the 1.4 s call deadline leaves room for two.
    slow = srv["trickle"].configure(trickle_headers=headers)
    started = time.perf_counter()
    with client(slow.url, request_timeout_s=0.5, call_timeout_s=1.4) as c:
        with pytest.raises(LRMDeadlineError) as info:
            c.completions("", max_tokens=64)
    elapsed = time.perf_counter() - started
    assert 0.9 < elapsed < 1.9, elapsed
    assert slow.count in (2, 3) and info.value.status is None
    assert "lrm.timeouts" in str(info.value)


def test_the_call_deadline_bounds_every_attempt_and_wait(srv: dict[str, FakeServer]) -> None:
    slow = srv["trickle"]

    def attempt(backoff_s: float) -> tuple[LRMDeadlineError, float]:
        # No jitter: a wait drawn a little short would start attempt 2 before 0.6 s, and its
        # own request timeout, not the call's deadline, would end it.
        retry = RetryPolicy(
            max_attempts=10, backoff_base_s=backoff_s, backoff_max_s=backoff_s, jitter=0.0
        )
        started = time.perf_counter()
        with client(slow.url, request_timeout_s=0.4, call_timeout_s=1.0, retry=retry) as c:
            with pytest.raises(LRMDeadlineError) as info:
                c.completions("", max_tokens=64)
        return info.value, time.perf_counter() - started

    # Attempt 1 ends at 0.4 s; a 0.7 s wait would reach the 1.0 s deadline: no attempt 2.
    err, elapsed = attempt(0.7)
    assert err.attempts == 1 and slow.count == 1 and elapsed < 0.7
    assert "no time is left for another attempt within lrm.timeouts.step (1 s)" in str(err)
    # A 0.2 s wait leaves room: attempt 2 starts at 0.6 s and is cut at 1.0 s.
    slow.reset()
    err, elapsed = attempt(0.2)
    assert err.attempts == 2 and slow.count == 2 and 0.9 < elapsed < 1.3
    assert "the call took longer than lrm.timeouts.step (1 s)" in str(err)
    assert not err.retryable


def test_async_and_stream_deadlines(srv: dict[str, FakeServer]) -> None:
    slow = srv["trickle"]

    async def main() -> None:
        async with client(slow.url, request_timeout_s=0.4, call_timeout_s=0.6) as c:
            with pytest.raises(LRMDeadlineError):
                await c.asend(completions_request("", max_tokens=64))
            with pytest.raises(LRMDeadlineError):
                async for _ in c.astream(completions_request("", max_tokens=64)):
                    pass

    started = time.perf_counter()
    asyncio.run(main())
    with client(slow.url, request_timeout_s=0.4, call_timeout_s=0.6) as c:
        with pytest.raises(LRMDeadlineError):
            list(c.stream(completions_request("", max_tokens=64)))
    assert time.perf_counter() - started < 3


def test_deadline_holds_with_a_transport_passed_in(srv: dict[str, FakeServer]) -> None:
    # Without the deadline-aware backend the clock is checked between reads: late by one read.
    slow = srv["trickle"]
    retry = RetryPolicy(max_attempts=1)
    started = time.perf_counter()
    with client(slow.url, transport=httpx.HTTPTransport(), request_timeout_s=0.5, retry=retry) as c:
        with pytest.raises(LRMDeadlineError):
            c.completions("", max_tokens=64)
    assert time.perf_counter() - started < 1.0


def test_remote_lrm_reads_bounds_from_its_config(srv: dict[str, FakeServer]) -> None:
    lrm = RemoteLRM(
        config(
            srv["trickle"].url,
            timeouts={"request": 0.3, "step": 0.5},
            on_failure="fallback_srm",
        ),
        delimiter="\n\n",
        max_step_tokens=64,
    )
    lrm.begin(MESSAGES)
    with pytest.raises(LRMFallback) as signal:
        lrm.write_step(max_new_tokens=64)
    assert isinstance(signal.value.cause, LRMDeadlineError)
    assert "lrm.timeouts" in signal.value.fallback
    c = lrm.client
    assert (c.request_timeout_s, c.call_timeout_s) == (0.3, 0.5)
    defaults = OpenAICompatibleClient.from_config(config(srv["ok"].url, reply_limit={}))
    assert defaults.reply_limit == ReplyLimit(bytes_per_token=2048, base_bytes=65536)
    assert (defaults.request_timeout_s, defaults.call_timeout_s) == (180.0, 600.0)
    lrm.close()


@pytest.mark.parametrize(
    "bad",
    [
        {"timeouts": {"request": 0}},
        {"timeouts": {"step": -1}},
        {"reply_limit": {"bytes_per_token": 0}},
        {"reply_limit": {"base_bytes": 100}},
    ],
)
def test_bound_settings_are_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        config("http://127.0.0.1:9/v1", **bad)


def test_bound_errors_pickle_and_name_their_kind() -> None:
    for cls in (LRMReplyTooLargeError, LRMDeadlineError):
        err = cls("http://x/v1/completions", 200, 1, "why", retryable=False)
        copy = pickle.loads(pickle.dumps(err))
        assert type(copy) is cls and str(copy) == str(err) and not copy.retryable
        assert isinstance(copy, LRMUnavailableError)


def test_sse_lines_split_anywhere() -> None:
    lines = BoundedLines(1000)
    out = lines.feed(b"data: a\r")  # "\r" may be half of "\r\n"
    out += lines.feed(b"\ndata: \xc3")  # a UTF-8 character split across reads
    out += lines.feed(b"\xa9\rdata: b\n\ndata: \xe2\x80\xa8 c")  # U+2028 is not a line break
    assert out == ["data: a", "data: \u00e9", "data: b", ""]
    assert lines.close() == ["data: \u2028 c"]
    with pytest.raises(BoundHit):
        BoundedLines(10).feed(b"x" * 11)  # a line that never ends is bounded too
