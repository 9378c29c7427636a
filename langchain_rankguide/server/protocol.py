"""OpenAI-compatible request models and response builders (the wire format only).

Bodies are decoded by :func:`decode_body`, which refuses what no model should see: JSON nested
deeper than :data:`MAX_JSON_DEPTH`, integers longer than :data:`MAX_INTEGER_DIGITS` digits and
text holding lone surrogates (not valid Unicode). Requests are then validated by pydantic: wrong
types and out-of-range values become 400 errors naming the field. Unknown top-level fields are
ignored, as OpenAI clients send fields a server may not use (``user``, ``stream_options``...);
RankGuide's own options travel in the vendor field ``rankguide`` (``extra_body={"rankguide":
{...}}`` in the ``openai`` client).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from langchain_rankguide.answer_format import AnswerFormat
from langchain_rankguide.config.models import RESERVED_TEMPLATE_KWARGS
from langchain_rankguide.errors import InputError

MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects a request body may have (OpenAI requests need < 10)."""

MAX_INTEGER_DIGITS = 20
"""Longest integer literal a request body may hold (a 64-bit integer has at most 20 digits)."""

MAX_TOP_LOGPROBS = 20
"""Most alternatives a request may ask for per token (OpenAI's limit)."""


class BodyError(ValueError):
    """A request body that is not an acceptable JSON object.

    Attributes:
        param: the field at fault (``messages.0.content``), or ``None`` for the whole body.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class _IntegerTooLong(ValueError):
    pass


def _bounded_int(literal: str) -> int:
    # int() of a long literal is quadratic, and Python refuses past 4300 digits with an error
    # that is not a JSON error; both are stopped here, before the conversion.
    if len(literal.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise _IntegerTooLong(
            f"request body holds an integer of {len(literal.lstrip('-'))} digits "
            f"(at most {MAX_INTEGER_DIGITS})"
        )
    return int(literal)


def decode_body(raw: bytes) -> dict[str, Any]:
    """Decode a request body: a JSON object, bounded in depth and integer size, valid Unicode.

    Raises:
        BodyError: the body is not JSON, not an object, nested too deeply, holds an oversized
            integer, or holds a lone surrogate (``param`` then names the field).
    """
    try:
        data = json.loads(raw, parse_int=_bounded_int)
    except _IntegerTooLong as exc:
        raise BodyError(str(exc)) from None
    except RecursionError:
        raise BodyError(_too_deep()) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise BodyError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BodyError("request body must be a JSON object")
    _check_values(data)
    return data


def _too_deep() -> str:
    return f"request body is nested more than {MAX_JSON_DEPTH} levels deep"


def _check_values(data: dict[str, Any]) -> None:
    """Walk the decoded body (without recursion): bounded depth, valid Unicode everywhere."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            _check_text(value, path)
        elif isinstance(value, (dict, list)):
            if len(path) >= MAX_JSON_DEPTH:
                raise BodyError(_too_deep(), ".".join(path) or None)
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                here = (*path, str(key))
                if isinstance(key, str):
                    _check_text(key, here)
                stack.append((item, here))


def _check_text(text: str, path: tuple[str, ...]) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # The path may end in the very key at fault: escape it, or the error cannot be sent.
        where = ".".join(part.encode("utf-8", "backslashreplace").decode() for part in path)
        raise BodyError(
            f"{where}: the text holds a lone surrogate ({text[exc.start]!a}), which is not "
            "valid Unicode",
            where,
        ) from None


class FieldError(InputError):
    """A request field that cannot be honoured (a 400 naming it in ``param``)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


class RankGuideExtras(BaseModel):
    """Per-request overrides for the ``rankguide`` model."""

    model_config = ConfigDict(extra="forbid")

    policy: (
        Literal["rankguide", "rank", "entropy", "specreason", "keyword", "random", "srm", "lrm"]
        | None
    ) = None
    threshold: float | None = Field(default=None, allow_inf_nan=False)
    seed: int | None = None
    steering: bool | None = None
    steering_scale: float | None = Field(default=None, allow_inf_nan=False)
    thread_id: str | None = Field(
        default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"
    )
    """Make the run durable under this id (a server with a checkpoint store): sending the
    request again resumes the run where it was cut off, or returns its result if it ended."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)
    seed: int | None = None
    rankguide: RankGuideExtras | None = None
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
    response_format: dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stops

    @field_validator("chat_template_kwargs")
    @classmethod
    def _template_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        reserved = sorted(set(value) & RESERVED_TEMPLATE_KWARGS)
        if reserved:
            raise ValueError(f"may not set {', '.join(reserved)} (the server sets these)")
        return value

    def stop_list(self) -> list[str]:
        """The stop strings as a list."""
        return list(self.stop or [])

    def answer_format(self) -> AnswerFormat | None:
        """The reply's tools, ``tool_choice`` and ``response_format``; ``None``: free text.

        Raises:
            FieldError: one cannot be honoured (a forced choice without tools, an unknown
                tool, a ``response_format`` that is not ``json_object`` or ``json_schema``).
        """
        tools, choice = self.tool_specs(), getattr(self, "tool_choice", None)
        if not tools and choice is None and self.response_format is None:
            return None
        try:
            output = AnswerFormat.of(tools, choice, self.response_format)
        except ValueError as exc:
            raise FieldError("tool_choice", str(exc)) from None
        try:
            output.check()
        except ValueError as exc:
            param = "response_format" if "response_format" in str(exc) else "tool_choice"
            raise FieldError(param, str(exc)) from None
        return output

    def tool_specs(self) -> list[dict[str, Any]] | None:
        """The request's tools as OpenAI dicts (``None``: no tools)."""
        return None

    def logprob_alternatives(self) -> int | None:
        """How many alternatives each token's log-prob entry lists; ``None``: no log-probs."""
        raise NotImplementedError


class CompletionRequest(_Request):
    """``POST /v1/completions``."""

    prompt: str = Field(min_length=1)
    echo: Literal[False] = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: Any = None
    tool_choice: Any = None

    @field_validator("tools", "tool_choice")
    @classmethod
    def _no_tools(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError("the completions API takes no tools; use /v1/chat/completions")
        return value

    def logprob_alternatives(self) -> int | None:
        """``logprobs``: the alternatives per token (``0``: the chosen token's only)."""
        return self.logprobs


class ChatMessage(BaseModel):
    """One chat message; content may be a string or OpenAI text parts."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def to_template(self) -> dict[str, Any]:
        """The message as chat templates expect it (text parts joined)."""
        content = self.content
        if isinstance(content, list):
            content = "".join(
                str(part.get("text", "")) for part in content if part.get("type") == "text"
            )
        message: dict[str, Any] = {
            "role": "system" if self.role == "developer" else self.role,
            "content": content or "",
        }
        if self.tool_calls:
            message["tool_calls"] = [_template_call(call) for call in self.tool_calls]
        if self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        return message


def _template_call(call: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI tool call as chat templates read it: arguments as an object, not JSON text."""
    function = call.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    try:
        arguments = json.loads(function["arguments"])
    except ValueError:
        return call
    return {**call, "function": {**function, "arguments": arguments}}


class FunctionSpec(BaseModel):
    """The function of an OpenAI tool."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolSpec(BaseModel):
    """An OpenAI tool (``{"type": "function", "function": {...}}``)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionSpec


class ChatCompletionRequest(_Request):
    """``POST /v1/chat/completions`` (vLLM's vendor extras accepted)."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    def token_limit(self) -> int | None:
        """``max_completion_tokens`` (newer clients) or ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens

    def tool_specs(self) -> list[dict[str, Any]] | None:
        """The tools as OpenAI dicts."""
        if self.tools is None:
            return None
        return [t.model_dump(exclude_none=True) for t in self.tools]

    def logprob_alternatives(self) -> int | None:
        """Alternatives per token entry; ``None`` without ``logprobs: true``.

        Raises:
            FieldError: ``top_logprobs`` without ``logprobs: true`` (as OpenAI refuses it).
        """
        if not self.logprobs:
            if self.top_logprobs is not None:
                raise FieldError("top_logprobs", "needs logprobs: true")
            return None
        return self.top_logprobs or 0


def error_body(
    message: str, kind: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """An OpenAI-style error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def new_id(prefix: str) -> str:
    """A response id such as ``chatcmpl-<hex>``."""
    return f"{prefix}-{uuid.uuid4().hex}"


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI usage object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _choice(finish_reason: str | None, stop_reason: str | None, **fields: Any) -> dict[str, Any]:
    """One choice.

    A finished one carries vLLM's ``stop_reason`` (the matched stop string, or ``null`` for
    end-of-sequence and length) so clients can tell a stop string from EOS.
    """
    choice: dict[str, Any] = {"index": 0, **fields, "finish_reason": finish_reason}
    if finish_reason is not None:
        choice["stop_reason"] = stop_reason
    return choice


def completion_body(
    response_id: str,
    model: str,
    text: str,
    finish_reason: str | None,
    usage: dict[str, int] | None,
    *,
    stop_reason: str | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``text_completion`` object (or stream chunk when ``usage`` is ``None``)."""
    body: dict[str, Any] = {
        "id": response_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [_choice(finish_reason, stop_reason, text=text, logprobs=logprobs)],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def chat_body(
    response_id: str,
    model: str,
    content: str,
    finish_reason: str,
    usage: dict[str, int],
    *,
    reasoning: str | None = None,
    vendor: dict[str, Any] | None = None,
    stop_reason: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    logprobs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A ``chat.completion`` object (``logprobs``: the chat entries, when asked for)."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    if tool_calls:
        message["tool_calls"] = tool_calls
        message["content"] = content or None
    choice = _choice(
        finish_reason,
        stop_reason,
        message=message,
        logprobs=None if logprobs is None else {"content": logprobs},
    )
    body: dict[str, Any] = {
        "id": response_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage,
    }
    if vendor is not None:
        body["rankguide"] = vendor
    return body


def chat_chunk(
    response_id: str,
    model: str,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    *,
    usage: dict[str, int] | None = None,
    vendor: dict[str, Any] | None = None,
    stop_reason: str | None = None,
    logprobs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A ``chat.completion.chunk`` object."""
    fields: dict[str, Any] = {"delta": delta}
    if logprobs is not None:
        fields["logprobs"] = {"content": logprobs}
    body: dict[str, Any] = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [_choice(finish_reason, stop_reason, **fields)],
    }
    if usage is not None:
        body["usage"] = usage
    if vendor is not None:
        body["rankguide"] = vendor
    return body
