"""What a chat template can render, and tools described to one that cannot read them.

Hugging Face chat templates differ: some read ``tools`` (and render them their own way), some
do not. :class:`TemplateInfo` reads what a template uses from its source; a template without
``tools`` gets the tools described in the system message instead (:func:`describe_tools`, in
the common ``<tool_call>`` convention). Used by the chat models and by the collaboration's own
prompt rendering (:func:`langchain_rankguide.lrm.render_prompt`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TOOL_SYSTEM_PROMPT = (
    "Tools (JSON schemas):\n<tools>\n{tools}\n</tools>\n"
    "To call one, reply with <tool_call>"
    '{{"name": <function-name>, "arguments": <args-json-object>}}</tool_call>'
)
"""System-prompt section describing tools to a template that has no ``tools`` support."""


@dataclass(frozen=True)
class TemplateInfo:
    """What a chat template can render, read from its source.

    Attributes:
        source: the Jinja source (empty when the tokenizer has none).
        tools: the template reads ``tools``.
        tool_calls: the template reads ``tool_calls`` of assistant messages.
    """

    source: str
    tools: bool
    tool_calls: bool

    @classmethod
    def of(
        cls, tokenizer: Any, chat_template: str | None = None, *, with_tools: bool
    ) -> TemplateInfo:
        """Inspect the template ``apply_chat_template`` will use."""
        template: Any = chat_template or getattr(tokenizer, "chat_template", None) or ""
        if isinstance(template, Mapping):
            named = template.get("tool_use") if with_tools else None
            template = named or template.get("default") or next(iter(template.values()), "")
        source = str(template)
        return cls(source=source, tools="tools" in source, tool_calls="tool_calls" in source)


def describe_tools(messages: list[dict[str, Any]], tools: Sequence[Any]) -> list[dict[str, Any]]:
    """``messages`` with the tools described in the (first, or a new) system message."""
    section = TOOL_SYSTEM_PROMPT.format(
        tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    )
    if messages and messages[0]["role"] == "system":
        first = dict(messages[0])
        first["content"] = f"{first['content']}\n\n{section}" if first["content"] else section
        return [first, *messages[1:]]
    return [{"role": "system", "content": section}, *messages]
