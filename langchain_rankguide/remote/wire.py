"""The OpenAI-compatible wire format: request bodies in, typed results out (no I/O).

Builds the JSON bodies of ``/completions`` and ``/chat/completions`` requests and reads what
vLLM, SGLang, Ollama or a hosted API send back: whole responses, Server-Sent Events streams and
error bodies. Vendor fields are read where servers differ: split-off reasoning
(``reasoning_content`` in older vLLM and SGLang, ``reasoning`` in newer vLLM), the stop string
that ended generation (vLLM's ``stop_reason``, SGLang's ``matched_stop``) and prefix-cache hits
(``usage.prompt_tokens_details.cached_tokens``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

_ERROR_TEXT_LIMIT = 300


class MalformedBody(ValueError):
    """The body (or a stream event) is not what an OpenAI-compatible server returns."""


# --------------------------------------------------------------------------- results


class Usage(dict[str, int]):
    """Token usage as the server reported it: ``prompt_tokens``, ``completion_tokens``.

    ``cached_tokens`` is present when the server reported prompt tokens served from its prefix
    cache (``usage.prompt_tokens_details.cached_tokens``).
    """


@dataclass
class CompletionResult:
    """One generation, non-streamed or aggregated from a stream.

    Attributes:
        text: the generated text (for chat: the message ``content``; ``""`` when absent).
        finish_reason: the server's ``finish_reason`` (``"stop"``, ``"length"``, ...), or
            ``None`` when it gave none.
        usage: ``prompt_tokens`` / ``completion_tokens`` (plus ``cached_tokens`` when
            reported); empty when the server sent no usage.
        reasoning: reasoning text a server split off (``reasoning_content`` in older vLLM and
            SGLang, ``reasoning`` in newer vLLM); ``None`` when absent.
        matched_stop: which stop string ended generation, when the server says: vLLM's
            ``stop_reason`` or SGLang's ``matched_stop`` (a string, or a token id for EOS).
        matched_stop_reported: ``True`` when the server sent one of those fields (even
            ``null``, which vLLM uses for EOS), so ``matched_stop`` can be trusted.
        top_logprobs: for the first generated token, token -> log-probability of the most
            likely alternatives, when log-probs were requested and returned.
        raw: the decoded response body (the last chunk for streams).
        attempts: attempts made, the first included.
        latency_s: wall time, retries included.
    """

    text: str
    finish_reason: str | None
    usage: Usage = field(default_factory=Usage)
    reasoning: str | None = None
    matched_stop: str | int | None = None
    matched_stop_reported: bool = False
    top_logprobs: dict[str, float] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    attempts: int = 1
    latency_s: float = 0.0


@dataclass
class StreamChunk:
    """One decoded SSE event of a streamed generation.

    Attributes:
        text: new text in this event (chat: ``delta.content``).
        reasoning: new reasoning text (``delta.reasoning_content`` / ``delta.reasoning``).
        finish_reason: set on the event that ends the choice.
        usage: set on the usage event (``stream_options.include_usage``).
        matched_stop: vLLM ``stop_reason`` / SGLang ``matched_stop`` when sent.
        matched_stop_reported: whether one of those fields was present.
        raw: the decoded event.
    """

    text: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    matched_stop: str | int | None = None
    matched_stop_reported: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


def aggregate_stream(chunks: Iterable[StreamChunk]) -> CompletionResult:
    """Join the chunks of a stream into one :class:`CompletionResult`."""
    text: list[str] = []
    reasoning: list[str] = []
    result = CompletionResult(text="", finish_reason=None)
    for chunk in chunks:
        text.append(chunk.text)
        reasoning.append(chunk.reasoning)
        if chunk.finish_reason is not None:
            result.finish_reason = chunk.finish_reason
        if chunk.matched_stop_reported:
            result.matched_stop = chunk.matched_stop
            result.matched_stop_reported = True
        if chunk.usage is not None:
            result.usage = chunk.usage
        result.raw = chunk.raw
    result.text = "".join(text)
    result.reasoning = "".join(reasoning) or None
    return result


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Request:
    """One generation request: the endpoint (relative to the base URL), its body, its kind.

    Build it with :func:`completions_request` or :func:`chat_request`. ``body["model"]`` is
    ``None`` when no model was named; the client then sends its own.
    """

    path: str
    body: dict[str, Any]
    chat: bool

    def streamed(self) -> Request:
        """The same request asking for an SSE stream, with a final usage event."""
        body = {**self.body, "stream": True}
        body.setdefault("stream_options", {"include_usage": True})
        return Request(self.path, body, self.chat)


def _body(
    core: dict[str, Any],
    *,
    temperature: float | None,
    extras: Mapping[str, Any],
    extra_body: Mapping[str, Any] | None,
) -> dict[str, Any]:
    # extra_body may override sampling and vendor extras, never what the client relies on
    # (model, prompt/messages, max_tokens, stop).
    body: dict[str, Any] = {}
    if temperature is not None:
        body["temperature"] = temperature
    body.update(extras)
    body.update(extra_body or {})
    body.update(core)
    return body


def completions_request(
    prompt: str,
    *,
    max_tokens: int,
    model: str | None = None,
    stop: Sequence[str] | None = None,
    temperature: float | None = None,
    logprobs: int | None = None,
    extra_body: Mapping[str, Any] | None = None,
) -> Request:
    """A ``/completions`` request continuing ``prompt``.

    Args:
        prompt: the raw text to continue (already templated).
        max_tokens: most tokens to generate.
        model: the model name as the server knows it (default: the client's).
        stop: stop strings; servers strip the matched one from the text.
        temperature: sampling temperature (``None`` = the server's default).
        logprobs: ask for this many top log-probs per token.
        extra_body: vendor extras merged into the body.
    """
    extras: dict[str, Any] = {} if logprobs is None else {"logprobs": logprobs}
    core: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": max_tokens}
    if stop:
        core["stop"] = list(stop)
    body = _body(core, temperature=temperature, extras=extras, extra_body=extra_body)
    return Request("/completions", body, chat=False)


def chat_request(
    messages: Sequence[Mapping[str, Any]],
    *,
    max_tokens: int,
    model: str | None = None,
    stop: Sequence[str] | None = None,
    temperature: float | None = None,
    continue_final_message: bool | None = None,
    add_generation_prompt: bool | None = None,
    top_logprobs: int | None = None,
    extra_body: Mapping[str, Any] | None = None,
) -> Request:
    """A ``/chat/completions`` request.

    A trailing assistant message is continued: ``continue_final_message: true`` and
    ``add_generation_prompt: false`` are sent as vendor extras (vLLM and SGLang honour them; a
    server that ignores them answers in a new assistant turn instead).

    Args:
        messages: OpenAI-style chat messages.
        max_tokens: most tokens to generate.
        model: the model name as the server knows it (default: the client's).
        stop: stop strings.
        temperature: sampling temperature (``None`` = the server's default).
        continue_final_message: continue the last message (default: when it is the
            assistant's).
        add_generation_prompt: default ``not continue_final_message``.
        top_logprobs: ask for this many top log-probs per token.
        extra_body: vendor extras merged into the body.
    """
    if continue_final_message is None:
        continue_final_message = bool(messages) and messages[-1].get("role") == "assistant"
    extras: dict[str, Any] = {}
    # Sent only when they differ from the OpenAI behaviour, so a strict server that rejects
    # unknown fields still accepts ordinary requests.
    if continue_final_message or add_generation_prompt is not None:
        extras["continue_final_message"] = continue_final_message
        extras["add_generation_prompt"] = (
            not continue_final_message if add_generation_prompt is None else add_generation_prompt
        )
    if top_logprobs is not None:
        extras["logprobs"] = True
        extras["top_logprobs"] = top_logprobs
    core: dict[str, Any] = {
        "model": model,
        "messages": [dict(m) for m in messages],
        "max_tokens": max_tokens,
    }
    if stop:
        core["stop"] = list(stop)
    body = _body(core, temperature=temperature, extras=extras, extra_body=extra_body)
    return Request("/chat/completions", body, chat=True)


# --------------------------------------------------------------------------- responses


def _first_choice(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise MalformedBody("the body is not a JSON object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedBody("no 'choices' list")
    return choices[0]


def _usage(body: Mapping[str, Any]) -> Usage:
    raw = body.get("usage")
    usage = Usage()
    if not isinstance(raw, Mapping):
        return usage
    for key in ("prompt_tokens", "completion_tokens"):
        value = raw.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            usage[key] = value
    details = raw.get("prompt_tokens_details")
    if isinstance(details, Mapping) and isinstance(details.get("cached_tokens"), int):
        usage["cached_tokens"] = int(details["cached_tokens"])
    return usage


def _matched_stop(choice: Mapping[str, Any]) -> tuple[str | int | None, bool]:
    for key in ("stop_reason", "matched_stop"):
        if key in choice:
            value = choice[key]
            if value is None or isinstance(value, (str, int)):
                return value, True
    return None, False


def _reasoning(message: Mapping[str, Any]) -> str | None:
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _top_logprobs(choice: Mapping[str, Any]) -> dict[str, float] | None:
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, Mapping):
        return None
    # Completions: {"top_logprobs": [{token: logprob, ...}, ...]}.
    top = logprobs.get("top_logprobs")
    if isinstance(top, list) and top and isinstance(top[0], Mapping):
        return {str(k): float(v) for k, v in top[0].items() if isinstance(v, (int, float))}
    # Chat: {"content": [{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}]}.
    content = logprobs.get("content")
    if isinstance(content, list) and content and isinstance(content[0], Mapping):
        first = content[0]
        found: dict[str, float] = {}
        for item in first.get("top_logprobs") or []:
            if isinstance(item, Mapping) and isinstance(item.get("logprob"), (int, float)):
                found[str(item.get("token"))] = float(item["logprob"])
        if isinstance(first.get("logprob"), (int, float)):
            found.setdefault(str(first.get("token")), float(first["logprob"]))
        return found or None
    return None


def _chat_message(choice: Mapping[str, Any]) -> tuple[str, str | None]:
    """The content and the split-off reasoning of a chat choice's message."""
    message = choice.get("message")
    if not isinstance(message, Mapping):
        raise MalformedBody("the choice has no 'message' object")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise MalformedBody("'message.content' is not a string")
    return content or "", _reasoning(message)


def parse_completion(body: Any, *, chat: bool) -> CompletionResult:
    """Read a non-streamed ``/completions`` or ``/chat/completions`` response body.

    Raises:
        MalformedBody: the body lacks the fields every OpenAI-compatible server sends.
    """
    choice = _first_choice(body)
    reasoning: str | None = None
    if chat:
        text, reasoning = _chat_message(choice)
    else:
        text_value = choice.get("text")
        if not isinstance(text_value, str):
            raise MalformedBody("the choice has no 'text' string")
        text = text_value
    finish = choice.get("finish_reason")
    matched, reported = _matched_stop(choice)
    return CompletionResult(
        text=text,
        finish_reason=finish if isinstance(finish, str) else None,
        usage=_usage(body),
        reasoning=reasoning,
        matched_stop=matched,
        matched_stop_reported=reported,
        top_logprobs=_top_logprobs(choice),
        raw=body,
    )


def parse_stream_event(event: Any, *, chat: bool) -> StreamChunk:
    """Read one decoded SSE event of a streamed response.

    Raises:
        MalformedBody: the event is not a streamed completion chunk.
    """
    if not isinstance(event, dict):
        raise MalformedBody("a stream event is not a JSON object")
    usage = _usage(event) if isinstance(event.get("usage"), Mapping) else None
    choices = event.get("choices")
    if not isinstance(choices, list):
        raise MalformedBody("a stream event has no 'choices' list")
    chunk = StreamChunk(usage=usage, raw=event)
    if not choices:
        return chunk  # the usage-only event
    choice = choices[0]
    if not isinstance(choice, Mapping):
        raise MalformedBody("a stream choice is not an object")
    if chat:
        delta = choice.get("delta") or {}
        if not isinstance(delta, Mapping):
            raise MalformedBody("a stream choice has no 'delta' object")
        content = delta.get("content")
        chunk.text = content if isinstance(content, str) else ""
        chunk.reasoning = _reasoning(delta) or ""
    else:
        text = choice.get("text")
        chunk.text = text if isinstance(text, str) else ""
    finish = choice.get("finish_reason")
    chunk.finish_reason = finish if isinstance(finish, str) else None
    chunk.matched_stop, chunk.matched_stop_reported = _matched_stop(choice)
    return chunk


def error_message(text: str, fallback: str) -> str:
    """The message of an error body (OpenAI ``error.message``, ``detail``), else its text.

    Args:
        text: the response body.
        fallback: what to say when the body is empty (the HTTP reason phrase).

    Returns:
        One line of at most about 300 characters.
    """
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    message: Any = None
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping):
            message = error.get("message")
        elif isinstance(error, str):
            message = error
        message = message or body.get("detail") or body.get("message")
    if not message:
        message = text.strip() or fallback
    line = " ".join(str(message).split())
    return line[:_ERROR_TEXT_LIMIT] + ("..." if len(line) > _ERROR_TEXT_LIMIT else "")


# --------------------------------------------------------------------------- streams


class SSEDecoder:
    """Incremental Server-Sent Events decoder: feed lines, get each event's data.

    ``data:`` lines of one event are joined with newlines; comments (``:``) and other fields
    (``event:``, ``id:``, ``retry:``) are ignored, as OpenAI-compatible servers use none of them.
    """

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        """Take one line (without its newline); return an event's data when the event ends."""
        if not line:
            return self.flush()
        if line.startswith(":"):
            return None  # a comment / keep-alive
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None

    def flush(self) -> str | None:
        """Return the pending event's data (at a blank line or the end of the stream)."""
        if not self._data:
            return None
        data, self._data = "\n".join(self._data), []
        return data


class StreamParser:
    """Turns the lines of one streamed response into chunks, and says how the stream ended.

    Feed it every line, stop reading once :attr:`done`, then call :meth:`close` for the event
    a body may end without a blank line. The stream ended properly (:attr:`complete`) when it
    sent ``data: [DONE]`` or a ``finish_reason``.

    Attributes:
        done: ``data: [DONE]`` was read; nothing after it counts.
        started: a chunk was produced, so text may have reached the caller.
    """

    def __init__(self, *, chat: bool) -> None:
        self.chat = chat
        self.done = False
        self.started = False
        self._finished = False
        self._decoder = SSEDecoder()
        self._text: list[str] = []

    @property
    def complete(self) -> bool:
        """Whether the stream ended properly (``[DONE]`` or a ``finish_reason``)."""
        return self.done or self._finished

    @property
    def partial(self) -> str:
        """The text of the chunks produced so far."""
        return "".join(self._text)

    def feed(self, line: str) -> StreamChunk | None:
        """Take one line; return a chunk when it ends an event.

        Raises:
            MalformedBody: an event is not JSON, is an error event, or is not a chunk.
        """
        payload = self._decoder.feed(line)
        return None if payload is None else self._decode(payload)

    def close(self) -> StreamChunk | None:
        """The body ended: return the chunk of an event left without its blank line."""
        payload = self._decoder.flush()
        return None if payload is None or self.done else self._decode(payload)

    def _decode(self, payload: str) -> StreamChunk | None:
        if payload.strip() == "[DONE]":
            self.done = True
            return None
        try:
            event = json.loads(payload)
        except ValueError as exc:
            raise MalformedBody(f"a stream event is not JSON ({exc})") from None
        if isinstance(event, Mapping) and event.get("error") is not None:
            error = event["error"]
            message = error.get("message") if isinstance(error, Mapping) else error
            raise MalformedBody(f"the server sent an error event: {message}")
        chunk = parse_stream_event(event, chat=self.chat)
        self._finished = self._finished or chunk.finish_reason is not None
        self._text.append(chunk.text)
        self.started = True
        return chunk
