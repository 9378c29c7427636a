"""Constrained decoding, as the chat models knew it: now :mod:`langchain_rankguide.engine.grammar`.

Kept so that imports of ``langchain_rankguide.chat_models.structured`` go on working.
"""

from langchain_rankguide.engine.grammar import (
    CLOSING_OVERRUN,
    INSTALL_HINT,
    Constraint,
    GrammarComplete,
    GrammarMatcher,
    GrammarProcessor,
    StructuredOutputError,
    grammar_hooks,
    json_constraint,
    llguidance_available,
    require_llguidance,
    strict_schema,
    tool_call_constraint,
)

__all__ = [
    "CLOSING_OVERRUN",
    "INSTALL_HINT",
    "Constraint",
    "GrammarComplete",
    "GrammarMatcher",
    "GrammarProcessor",
    "StructuredOutputError",
    "grammar_hooks",
    "json_constraint",
    "llguidance_available",
    "require_llguidance",
    "strict_schema",
    "tool_call_constraint",
]
