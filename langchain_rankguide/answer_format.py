"""What a reply must be: free text, a tool call or a JSON value, in OpenAI's terms.

Both chat models, the server and the RankGuide graph describe a reply's shape the same way, as
an :class:`AnswerFormat`: the tools offered, ``tool_choice`` and ``response_format``. From it
come the tools the chat template shows (:attr:`AnswerFormat.offered_tools`) and the grammar the
reply is decoded under (:meth:`AnswerFormat.constraint`, see
:mod:`langchain_rankguide.engine.grammar`):

=============================  =====================  ======================================
tools and ``tool_choice``      ``response_format``    the reply
=============================  =====================  ======================================
none, or ``"none"``            none                   free text
offered, ``"auto"``            none                   free text; a call the model opens
                                                      (``<tool_call>``) is decoded under
                                                      the tools' grammar, then parsed
offered, ``"any"``/a name      any                    one call (to that tool), by grammar
none, or ``"none"``            ``json_*``             one JSON value of the schema
offered, ``"auto"``            ``json_*``             a call to one of the tools, or the
                                                      JSON value (OpenAI's semantics)
=============================  =====================  ======================================

Example:
    >>> fmt = AnswerFormat.of(response_format={"type": "json_object"})
    >>> fmt.constrained, fmt.offered_tools
    (True, None)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langchain_rankguide.engine.grammar import Constraint


def normalise_tool_choice(choice: Any) -> str | None:
    """Map the accepted ``tool_choice`` spellings to ``None``/``"none"``/``"any"``/a tool name."""
    if choice in (None, "auto", False):
        return None
    if choice is True or choice in ("any", "required"):
        return "any"
    if choice == "none":
        return "none"
    if isinstance(choice, Mapping):
        if choice.get("type") in ("any", "required"):
            return "any"
        if choice.get("type") in ("auto", "none"):
            return normalise_tool_choice(choice["type"])
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        if isinstance(name, str):
            return name
    if isinstance(choice, str):
        return choice
    raise ValueError(
        f"unsupported tool_choice {choice!r}: use 'auto', 'none', 'any' (or 'required'), a tool "
        "name, or {'type': 'function', 'function': {'name': ...}}"
    )


def response_schema(response_format: Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON schema of an OpenAI-style ``response_format`` (``None``: any JSON object)."""
    kind = response_format.get("type")
    if kind == "json_object":
        schema = response_format.get("schema")
        return dict(schema) if isinstance(schema, Mapping) else None
    if kind == "json_schema":
        inner = response_format.get("json_schema", response_format)
        schema = inner.get("schema") if isinstance(inner, Mapping) else None
        if isinstance(schema, Mapping):
            return dict(schema)
    raise ValueError(
        f"unsupported response_format {dict(response_format)!r}: use "
        '{"type": "json_object"} or {"type": "json_schema", "json_schema": {"schema": {...}}}'
    )


def tool_name(tool: Mapping[str, Any]) -> str:
    """The function name of an OpenAI-format tool."""
    return str(tool.get("function", tool).get("name"))


@dataclass(frozen=True)
class AnswerFormat:
    """The shape a reply must take.

    Attributes:
        tools: OpenAI-format tools (``{"type": "function", "function": {...}}``).
        tool_choice: ``None`` (auto: the model decides), ``"none"``, ``"any"`` (one call to
            some tool) or a tool name (see :func:`normalise_tool_choice` for the spellings).
        response_format: OpenAI's ``response_format`` (``json_object`` or ``json_schema``);
            ``None`` or ``{"type": "text"}`` for none.
    """

    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: str | None = None
    response_format: dict[str, Any] | None = None

    @classmethod
    def of(
        cls,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Any = None,
        response_format: Mapping[str, Any] | None = None,
    ) -> AnswerFormat:
        """Build a format from request-style values (any accepted ``tool_choice`` spelling)."""
        if response_format is not None and response_format.get("type") == "text":
            response_format = None
        return cls(
            tools=tuple(dict(t) for t in tools or ()),
            tool_choice=normalise_tool_choice(tool_choice),
            response_format=dict(response_format) if response_format else None,
        )

    @classmethod
    def from_mapping(cls, data: AnswerFormat | Mapping[str, Any] | None) -> AnswerFormat | None:
        """A format from its :meth:`to_dict` form (or the format itself; ``None`` stays)."""
        if data is None or isinstance(data, AnswerFormat):
            return data
        return cls.of(data.get("tools"), data.get("tool_choice"), data.get("response_format"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-native form."""
        return {
            "tools": [dict(t) for t in self.tools],
            "tool_choice": self.tool_choice,
            "response_format": self.response_format,
        }

    @property
    def offered_tools(self) -> list[dict[str, Any]] | None:
        """The tools a chat template shows (none when ``tool_choice="none"``)."""
        if not self.tools or self.tool_choice == "none":
            return None
        return [dict(t) for t in self.tools]

    @property
    def forced_call(self) -> bool:
        """A tool call is required (``"any"`` or a tool name)."""
        return self.tool_choice not in (None, "none")

    @property
    def constrained(self) -> bool:
        """The reply is decoded under a grammar."""
        return self.response_format is not None or self.forced_call

    def check(self) -> None:
        """Raise ``ValueError`` naming the field when the format cannot be honoured.

        A forced ``tool_choice`` needs tools, and a named one must be among them; a
        ``response_format`` must be ``json_object`` or ``json_schema``.
        """
        if self.response_format is not None:
            response_schema(self.response_format)
        if self.forced_call and not self.tools:
            raise ValueError(f"tool_choice={self.tool_choice!r} needs tools, and none are given")
        names = [tool_name(t) for t in self.tools]
        if self.forced_call and self.tool_choice != "any" and self.tool_choice not in names:
            raise ValueError(
                f"tool_choice names {self.tool_choice!r}, which is not among the tools "
                f"({', '.join(names)})"
            )

    def constraint(self) -> Constraint | None:
        """The grammar the reply follows (``None``: free text).

        Raises:
            ImportError: llguidance is not installed (the ``[structured]`` extra).
            ValueError: see :meth:`check`.
        """
        if not self.constrained:
            return None
        self.check()
        from langchain_rankguide.engine.grammar import (
            json_constraint,
            require_llguidance,
            tool_call_constraint,
        )

        if self.forced_call:
            require_llguidance(f"tool_choice={self.tool_choice!r}")
            name = None if self.tool_choice == "any" else self.tool_choice
            return tool_call_constraint(self.tools, name)
        assert self.response_format is not None
        require_llguidance("structured output (response_format)")
        schema = response_schema(self.response_format)
        if self.offered_tools:
            return tool_call_constraint(self.tools, or_json=schema or {})
        return json_constraint(schema)

    def call_grammar(self) -> Constraint | None:
        """The grammar of a call the model opens itself (``auto`` with tools, no other format).

        ``None`` when the reply has a grammar of its own (:meth:`constraint`), no tools are
        offered, or llguidance is not installed (calls are then parsed unconstrained).
        """
        if self.constrained or not self.offered_tools:
            return None
        from langchain_rankguide.engine.grammar import llguidance_available, tool_call_constraint

        if not llguidance_available():
            return None
        return tool_call_constraint(self.tools, opened=True)
