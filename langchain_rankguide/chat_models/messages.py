"""LangChain messages to chat-template input, and model output back to content and tool calls.

Every message type goes through the tokenizer's chat template (``apply_chat_template``): system,
human, AI (with its tool calls and reasoning), tool results and generic chat messages, in the
dict shape Hugging Face templates read::

    {"role": "assistant", "content": "...", "reasoning_content": "...",
     "tool_calls": [{"id": ..., "type": "function", "function": {"name": ..., "arguments": {...}}}]}
    {"role": "tool", "content": "...", "tool_call_id": ..., "name": ...}

Templates differ in what they accept, so rendering degrades in steps rather than failing:

1. the messages as they are, tools through ``tools=`` when the template reads ``tools`` (else
   described in the system message, in the common ``<tool_call>`` convention), tool calls through
   ``tool_calls`` when the template reads them (else written into the content as ``<tool_call>``
   text);
2. if the template raises (strict role alternation, no ``tool`` role, ...): consecutive messages of
   one role merged, system messages folded into one leading system message, tool results sent as
   user messages wrapped in ``<tool_response>``;
3. if it still raises (no system role): the system text folded into the first user message.

Output is parsed with transformers' response parsing (:class:`ResponseParser`): the tokenizer's
own ``response_template`` where it defines one, otherwise :data:`FALLBACK_RESPONSE_TEMPLATE`
(``<think>...</think>`` reasoning and ``<tool_call>{json}</tool_call>`` calls). The parser is
incremental, so content streams live while tool-call markup is held back and parsed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from langchain_rankguide.engine.templates import TemplateInfo, describe_tools
from langchain_rankguide.errors import RankGuideError

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

FALLBACK_RESPONSE_TEMPLATE: dict[str, Any] = {
    "defaults": {"role": "assistant"},
    # The fallback parses the generated text only (the prompt is not scanned), so the anchor is
    # the start of the text.
    "start_anchor_pattern": r"\A",
    "fields": {
        "reasoning_content": {"open": THINK_OPEN, "close": THINK_CLOSE, "content": "text"},
        "tool_calls": {
            # Leading whitespace belongs to the call, so it never ends up as trailing content.
            "open_pattern": r"\s*<tool_call>",
            "close": TOOL_CALL_CLOSE,
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": "{content}"},
        },
        "content": {"content": "text"},
    },
}
"""Response template used when the tokenizer defines none (Hermes / Qwen conventions)."""

_REASONING_FIELDS = ("reasoning_content", "reasoning", "thinking")
_MEDIA_BLOCKS = ("image", "image_url", "audio", "input_audio", "video", "file")


class MessageFormatError(RankGuideError, ValueError):
    """A message cannot be given to a text-only chat template (e.g. an image block)."""


# --------------------------------------------------------------------------- messages -> dicts


def content_text(content: str | list[Any], *, what: str = "message") -> str:
    """Return the text of a message's content (a string or a list of content blocks).

    Text blocks are joined; reasoning and tool-call blocks are skipped (they travel in their own
    fields); media blocks raise, since a text-only template cannot show them.

    Raises:
        MessageFormatError: for an image, audio, video or file block, or text that is not
            valid Unicode (a lone surrogate, which no tokenizer encodes).
    """
    if isinstance(content, str):
        return _valid_text(content, what)
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
            continue
        if not isinstance(block, Mapping):
            continue
        kind = block.get("type")
        if kind == "text" or (kind is None and "text" in block):
            parts.append(str(block.get("text", "")))
        elif kind in _MEDIA_BLOCKS:
            raise MessageFormatError(
                f"a {what} holds a {kind!r} block, but this model reads text only; "
                "send text content"
            )
    return _valid_text("".join(parts), what)


def _valid_text(text: str, what: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = text[error.start]
        raise MessageFormatError(
            f"a {what} holds U+{ord(bad):04X} at position {error.start}, which is not valid "
            "Unicode text (a lone surrogate); send well-formed text"
        ) from None
    return text


def _reasoning_of(message: BaseMessage) -> str | None:
    reasoning = message.additional_kwargs.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        return reasoning
    if isinstance(message.content, list):
        texts = [
            str(block.get("reasoning") or block.get("thinking") or "")
            for block in message.content
            if isinstance(block, Mapping) and block.get("type") in ("reasoning", "thinking")
        ]
        joined = "".join(texts)
        return joined or None
    return None


def _tool_calls_of(message: AIMessage) -> list[dict[str, Any]]:
    return [
        {
            "id": call.get("id"),
            "type": "function",
            "function": {"name": call["name"], "arguments": dict(call.get("args") or {})},
        }
        for call in message.tool_calls
    ]


def to_chat_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """Convert LangChain messages to the role/content dicts chat templates read.

    Raises:
        MessageFormatError: for content a text-only template cannot show, or an unknown message
            type.
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        item: dict[str, Any]
        if isinstance(message, SystemMessage):
            item = {"role": "system", "content": content_text(message.content, what="system")}
        elif isinstance(message, HumanMessage):
            item = {"role": "user", "content": content_text(message.content, what="user message")}
        elif isinstance(message, AIMessage):
            item = {"role": "assistant", "content": content_text(message.content, what="reply")}
            reasoning = _reasoning_of(message)
            if reasoning:
                item["reasoning_content"] = reasoning
            if message.tool_calls:
                item["tool_calls"] = _tool_calls_of(message)
        elif isinstance(message, ToolMessage):
            item = {
                "role": "tool",
                "content": content_text(message.content, what="tool result"),
                "tool_call_id": message.tool_call_id,
            }
        elif isinstance(message, FunctionMessage):
            item = {"role": "tool", "content": content_text(message.content, what="tool result")}
        elif isinstance(message, ChatMessage):
            role = {"human": "user", "ai": "assistant"}.get(message.role, message.role)
            item = {"role": role, "content": content_text(message.content)}
        else:
            raise MessageFormatError(f"unsupported message type {type(message).__name__}")
        if message.name:
            item["name"] = message.name
        out.append(item)
    return out


# --------------------------------------------------------------------------- rendering


def tool_call_text(name: str, arguments: Any) -> str:
    """Write one call in the ``<tool_call>{json}</tool_call>`` convention."""
    payload = {"name": name, "arguments": arguments}
    return f"{TOOL_CALL_OPEN}{json.dumps(payload, ensure_ascii=False)}{TOOL_CALL_CLOSE}"


def _inline_tool_calls(message: dict[str, Any]) -> dict[str, Any]:
    calls = message.get("tool_calls")
    if not calls:
        return message
    text = "".join(tool_call_text(c["function"]["name"], c["function"]["arguments"]) for c in calls)
    content = message.get("content") or ""
    out = {k: v for k, v in message.items() if k != "tool_calls"}
    out["content"] = f"{content}\n{text}" if content else text
    return out


def _normalised(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fold systems into one leading system, tool results into user turns, merge runs of a role."""
    systems = [m["content"] for m in messages if m["role"] == "system" and m["content"]]
    rest: list[dict[str, Any]] = []
    for message in messages:
        if message["role"] == "system":
            continue
        if message["role"] == "tool":
            message = {
                "role": "user",
                "content": f"<tool_response>\n{message['content']}\n</tool_response>",
            }
        else:
            message = {"role": message["role"], "content": _inline_tool_calls(message)["content"]}
        if rest and rest[-1]["role"] == message["role"]:
            rest[-1] = {**rest[-1], "content": f"{rest[-1]['content']}\n\n{message['content']}"}
        else:
            rest.append(message)
    head = [{"role": "system", "content": "\n\n".join(systems)}] if systems else []
    return head + rest


def _system_into_user(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not messages or messages[0]["role"] != "system":
        return messages
    system, rest = messages[0]["content"], list(messages[1:])
    for i, message in enumerate(rest):
        if message["role"] == "user":
            rest[i] = {**message, "content": f"{system}\n\n{message['content']}"}
            return rest
    return [{"role": "user", "content": system}, *rest]


def render_chat(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    template_kwargs: Mapping[str, Any] | None = None,
    chat_template: str | None = None,
) -> str:
    """Render chat dicts with the tokenizer's chat template, ready for the assistant's turn.

    A trailing assistant message without tool calls is continued (``continue_final_message``),
    so a partial reply can be resumed; anything else gets the generation prompt. See the module
    docstring for how templates that reject a message shape are handled.

    Args:
        tokenizer: a transformers tokenizer.
        messages: output of :func:`to_chat_dicts`.
        tools: OpenAI-format tool schemas (``{"type": "function", "function": {...}}``).
        template_kwargs: extra template variables (e.g. ``enable_thinking``).
        chat_template: a Jinja template overriding the tokenizer's own.

    Raises:
        MessageFormatError: the tokenizer has no chat template and none was given.
        Exception: the template's own error when every fallback shape fails too.
    """
    return _shape_and_render(tokenizer, messages, tools, template_kwargs, chat_template)[1]


def chat_shape(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    template_kwargs: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Return ``messages`` in the first shape the tokenizer's template renders (see the module).

    For code that renders the messages itself later (the RankGuide graph).
    """
    return _shape_and_render(tokenizer, messages, None, template_kwargs, None)[0]


def _shape_and_render(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None,
    template_kwargs: Mapping[str, Any] | None,
    chat_template: str | None,
) -> tuple[list[dict[str, Any]], str]:
    from jinja2 import TemplateError

    info = TemplateInfo.of(tokenizer, chat_template, with_tools=bool(tools))
    if not info.source:
        raise MessageFormatError(
            "the tokenizer has no chat template; pass chat_template= (a Jinja template) to the "
            "chat model"
        )
    kwargs = dict(template_kwargs or {})
    shaped = list(messages)
    if tools and not info.tools:
        shaped = describe_tools(shaped, tools)
    if not info.tool_calls:
        shaped = [_inline_tool_calls(m) for m in shaped]
    attempts = [shaped, _normalised(shaped)]
    attempts.append(_system_into_user(attempts[1]))
    error: Exception | None = None
    for attempt in attempts:
        last = attempt[-1] if attempt else {}
        continuing = last.get("role") == "assistant" and not last.get("tool_calls")
        try:
            rendered = tokenizer.apply_chat_template(
                attempt,
                tools=list(tools) if tools and info.tools else None,
                tokenize=False,
                add_generation_prompt=not continuing,
                continue_final_message=continuing,
                chat_template=chat_template,
                **kwargs,
            )
        except (TemplateError, ValueError, KeyError, TypeError) as exc:
            error = exc
            continue
        return attempt, str(rendered)
    assert error is not None
    raise error


# --------------------------------------------------------------------------- output parsing


def new_tool_call_id() -> str:
    """A fresh tool-call id in the OpenAI style."""
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class OutputDelta:
    """One piece of parsed output.

    Attributes:
        kind: ``content`` / ``reasoning`` text, a parsed ``tool_call`` or an
            ``invalid_tool_call`` (markup that did not parse).
        text: the text of a ``content`` or ``reasoning`` delta; the raw markup of an invalid call.
        name: the called tool's name.
        arguments: the call's arguments.
        error: why a call is invalid.
    """

    kind: Literal["content", "reasoning", "tool_call", "invalid_tool_call"]
    text: str = ""
    name: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def _prompt_opens_thinking(prompt: str) -> bool:
    return prompt.rfind(THINK_OPEN) > prompt.rfind(THINK_CLOSE)


class OutputStream:
    """Split generated text into content, reasoning and tool calls as it arrives.

    Args:
        tokenizer: the model's tokenizer (its ``response_template`` is used when it has one).
        prompt: the rendered prompt (the parser needs it to know what the template prefilled).
        tools: the tools offered (tool-call arguments are cast to their schema types); ``None``
            leaves ``<tool_call>`` markup in the content.
        own_format: parse with :data:`FALLBACK_RESPONSE_TEMPLATE` even if the tokenizer has a
            template (the output was constrained to that format).
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        prompt: str,
        tools: Sequence[Mapping[str, Any]] | None = None,
        own_format: bool = False,
    ) -> None:
        native = getattr(tokenizer, "response_template", None)
        if native is not None and not own_format:
            self._template: dict[str, Any] = native
            self._prefix = prompt
        else:
            template = dict(FALLBACK_RESPONSE_TEMPLATE)
            fields = dict(template["fields"])
            if tools is None:
                del fields["tool_calls"]
            template["fields"] = fields
            self._template = template
            # Only an open <think> of the prompt matters to the fallback's state.
            self._prefix = THINK_OPEN if _prompt_opens_thinking(prompt) else ""
        self._tools: list[dict[Any, Any] | Any] | None = [dict(t) for t in tools] if tools else None
        self._region_raw = ""
        self._region: str | None = None
        self.text = ""
        """All text fed so far."""
        self._pending: list[OutputDelta] = []
        self._parser = self._new_parser(self._prefix)

    def _new_parser(self, prefix: str) -> Any:
        from transformers.utils.chat_parsing import ResponseParser

        parser = ResponseParser(self._template, prefix, tools=self._tools)
        self._pending.extend(self._convert(parser.initial_events))
        return parser

    def _convert(self, events: list[dict[str, Any]]) -> list[OutputDelta]:
        out: list[OutputDelta] = []
        for event in events:
            kind, name = event.get("type"), event.get("field")
            if kind == "region_open":
                self._region, self._region_raw = name, ""
            elif kind == "region_chunk":
                text = str(event.get("text", ""))
                if name == "content":
                    out.append(OutputDelta("content", text))
                elif name in _REASONING_FIELDS:
                    out.append(OutputDelta("reasoning", text))
                else:
                    self._region_raw += text
            elif kind == "region_close":
                if name == "tool_calls":
                    out.extend(self._tool_calls(event.get("value")))
                self._region, self._region_raw = None, ""
        return out

    def _tool_calls(self, value: Any) -> list[OutputDelta]:
        calls = value if isinstance(value, list) else [value]
        out = []
        for call in calls:
            fn = call.get("function", call) if isinstance(call, Mapping) else None
            name = fn.get("name") if isinstance(fn, Mapping) else None
            arguments = fn.get("arguments", {}) if isinstance(fn, Mapping) else None
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except ValueError:
                    arguments = None
            if arguments is None and isinstance(fn, Mapping) and "parameters" in fn:
                arguments = fn["parameters"]
            if isinstance(name, str) and isinstance(arguments, Mapping):
                out.append(OutputDelta("tool_call", name=name, arguments=dict(arguments)))
            else:
                out.append(
                    OutputDelta(
                        "invalid_tool_call",
                        text=self._region_raw,
                        name=name if isinstance(name, str) else None,
                        error="tool call is not a JSON object with a name and object arguments",
                    )
                )
        return out

    def _invalid(self, exc: Exception) -> OutputDelta:
        delta = OutputDelta(
            "invalid_tool_call", text=self._region_raw, error=str(exc).splitlines()[0]
        )
        self._region, self._region_raw = None, ""
        return delta

    def feed(self, text: str) -> list[OutputDelta]:
        """Parse more generated text; return what it completed."""
        self.text += text
        out, self._pending = self._pending, []
        try:
            out.extend(self._convert(self._parser.feed(text)))
        except ValueError as exc:
            # Malformed call markup: report it and parse what follows afresh.
            out.append(self._invalid(exc))
            self._parser = self._new_parser("")
        return out

    def finish(self) -> list[OutputDelta]:
        """Flush the parser at the end of generation (an unclosed call becomes invalid)."""
        out, self._pending = self._pending, []
        try:
            _, events = self._parser.finalize()
            out.extend(self._convert(events))
        except ValueError as exc:
            out.append(self._invalid(exc))
        return out
