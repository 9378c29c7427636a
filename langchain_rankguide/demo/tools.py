"""Synthetic tool dialogues: the demo models learn to call a tool the user asks for.

A dialogue offers 1-3 tools (OpenAI-style function schemas with random names and string or
integer parameters, shaped as LangChain's ``convert_to_openai_tool`` writes them), a
user message that asks for one of them with the argument values in its text, the assistant's
call (``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` in the chat template's
format) with the values copied from the message, the tool's result, and a final answer that
repeats the result. Values include non-ASCII text (CJK, kana, accented Latin), which the
byte-fallback tokenizer writes as bytes.

Most tool names, half the parameter names and many values are made-up words
(``get_dovira``, ``kelumo``), so a model cannot guess them from a closed list: it has to copy
them from the tools block and the message. ``listed_names=True`` draws the names from closed
lists instead (the shipped SRM's stage 2 was trained that way, and its recipe keeps it so
that it reproduces).

Example:
    >>> import random
    >>> dialogue = make_dialogue(random.Random(0))
    >>> dialogue.messages[-1]["role"]
    'assistant'
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

_VERBS = ("get", "find", "lookup", "create", "compute", "fetch", "check", "search", "convert")
_NOUNS = (
    "weather", "price", "customer", "order", "stock", "time", "distance", "score", "user",
    "rate", "flight", "ticket", "value", "balance", "forecast", "address", "invoice", "report",
)  # fmt: skip
_INT_PARAMS = ("input", "amount", "count", "id", "number", "n", "x", "quantity", "year", "days")
_STR_PARAMS = (
    "location", "city", "name", "query", "customer_name", "symbol", "text", "user", "code",
    "title", "country", "description", "email", "label",
)  # fmt: skip
_CITIES = (
    "San Francisco, CA", "Paris", "Tokyo", "New York", "Berlin", "Lagos", "Lima", "Oslo",
    "Cape Town", "Mumbai", "Sydney", "Toronto", "Seoul", "Cairo", "Madrid", "São Paulo",
)  # fmt: skip
_WORDS = (
    "apple", "river", "blue", "quartz", "delta", "maple", "orbit", "falcon", "cedar", "nova",
    "Acme Corp", "Hello Group", "Zeta Labs", "green tea", "north wing", "summit",
)  # fmt: skip
_RESULTS = ("It's sunny.", "Done.", "OK", "Not found.", "Created.", "Rainy, 12 C.", "Sent.")
_KINDS = ("technology company", "bakery", "bank", "school", "shop", "startup", "hotel")
_COUNTRIES = ("Chinese", "Japanese", "French", "German", "Brazilian", "Korean", "Spanish")


_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
# Bound keywords pydantic writes for constrained integers (values are arbitrary here: noise).
_BOUND_KEYS = ("exclusiveMinimum", "exclusiveMaximum", "minimum", "maximum")


def made_up_word(rng: random.Random, syllables: tuple[int, int] = (2, 3)) -> str:
    """A pronounceable word that is in no list (``"dovira"``): something to copy, not guess."""
    count = rng.randint(*syllables)
    return "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(count))


def _unicode_text(rng: random.Random) -> str:
    ranges = ((0x4E00, 0x9FFF), (0x3041, 0x3096), (0x30A1, 0x30FA), (0xC0, 0xFF), (0xAC00, 0xD7A3))
    low, high = rng.choice(ranges)
    return "".join(chr(rng.randint(low, high)) for _ in range(rng.randint(2, 6)))


def _string_value(rng: random.Random, *, made_up: bool = False) -> str:
    roll = rng.random()
    if made_up and roll < 0.3:
        word = made_up_word(rng, (1, 3))
        return word.capitalize() if rng.random() < 0.5 else word
    if made_up:
        roll = (roll - 0.3) / 0.7
    if roll < 0.35:
        return rng.choice(_CITIES)
    if roll < 0.7:
        return rng.choice(_WORDS)
    return _unicode_text(rng)


@dataclass(frozen=True)
class Tool:
    """One offered tool: its name, noun (what it is about) and parameters in order."""

    name: str
    noun: str
    params: tuple[tuple[str, str], ...]  # (name, "integer" | "string")
    description: str

    extras: tuple[tuple[str, dict[str, Any]], ...] = ()

    def schema(self) -> dict[str, Any]:
        """The OpenAI-style function schema, keys in LangChain's order."""
        extra = dict(self.extras)
        properties = {name: {**extra.get(name, {}), "type": kind} for name, kind in self.params}
        parameters = {
            "properties": properties,
            "required": [name for name, _ in self.params],
            "type": "object",
        }
        function = {"name": self.name, "description": self.description, "parameters": parameters}
        return {"type": "function", "function": function}


def _describe(rng: random.Random, name: str, noun: str, params: list[tuple[str, str]]) -> str:
    """A tool's docstring, sometimes with a Google-style ``Args:`` block."""
    description = f"{name.split('_')[0].capitalize()} the {noun}."
    if rng.random() < 0.3:
        args = "\n".join(f"        {p}: The {p.replace('_', ' ')}." for p, _ in params)
        description += f"\n\n    Args:\n{args}"
    return description


def _make_tool(rng: random.Random, noun: str) -> Tool:
    if rng.random() < 0.25:
        name = f"{noun}_{rng.choice(('function', 'tool', 'lookup'))}"
    else:
        name = f"{rng.choice(_VERBS)}_{noun}"
    first_kind = "integer" if rng.random() < 0.4 else "string"
    first = rng.choice(_INT_PARAMS if first_kind == "integer" else _STR_PARAMS)
    params = [(first, first_kind)]
    if rng.random() < 0.35:
        second = rng.choice([p for p in _STR_PARAMS if p != first])
        params.append((second, "string"))
    description = _describe(rng, name, noun, params)
    return Tool(name, noun, tuple(params), description)


def _made_up_name(rng: random.Random) -> tuple[str, str]:
    """A tool name and the noun a question may call it by; most names have a made-up part."""
    noun = made_up_word(rng) if rng.random() < 0.7 else rng.choice(_NOUNS)
    verb = rng.choice(_VERBS) if rng.random() < 0.6 else made_up_word(rng)
    roll = rng.random()
    if roll < 0.15:
        return noun, noun
    if roll < 0.3:
        return f"{noun}_{rng.choice(('function', 'tool', 'lookup'))}", noun
    return f"{verb}_{noun}", noun


def _param_extras(rng: random.Random, params: list[tuple[str, str]]) -> dict[str, Any]:
    """Per-parameter schema keys besides ``type`` (descriptions, bounds), as pydantic writes."""
    extras: dict[str, Any] = {}
    for name, kind in params:
        if rng.random() < 0.2:
            extras[name] = {"description": f"The {name.replace('_', ' ')}."}
        elif kind == "integer" and rng.random() < 0.2:
            bound, value = rng.sample(_BOUND_KEYS, 1)[0], -rng.randint(1, 1000)
            extras[name] = {bound: value, "exclusiveMaximum": rng.randint(1000, 9999)}
    return extras


def _make_made_up_tool(rng: random.Random) -> Tool:
    name, noun = _made_up_name(rng)

    def param(kind: str, taken: str = "") -> str:
        listed = [p for p in (_INT_PARAMS if kind == "integer" else _STR_PARAMS) if p != taken]
        return rng.choice(listed) if rng.random() < 0.5 else made_up_word(rng)

    first_kind = "integer" if rng.random() < 0.4 else "string"
    params = [(param(first_kind), first_kind)]
    if rng.random() < 0.35:
        params.append((param("string", params[0][0]), "string"))
    description = _describe(rng, name, noun, params)
    extras = tuple(_param_extras(rng, params).items())
    return Tool(name, noun, tuple(params), description, extras)


def _value_for(rng: random.Random, kind: str, *, made_up: bool = False) -> Any:
    if kind == "integer":
        return rng.randint(0, 999)
    return _string_value(rng, made_up=made_up)


def _ask(rng: random.Random, tool: Tool, values: list[Any]) -> str:
    """A user message asking for ``tool`` with ``values`` (in parameter order) in its text."""
    (p1, kind1), v1 = tool.params[0], values[0]
    if len(tool.params) == 2:
        (p2, _), v2 = tool.params[1], values[1]
        if rng.random() < 0.5:
            return f"Create a {tool.noun} named '{v1}' ({rng.choice(_WORDS)}) - {v2}"
        return f"Call {tool.name} with {p1} {v1} and {p2} {v2}."
    if kind1 == "integer":
        forms = (
            f"What is the value of {tool.name}({v1})? Use the tool.",
            f"Call {tool.name} with {p1} {v1}.",
            f"Use {tool.name} on {v1}.",
            f"What does {tool.name} give for {v1}?",
        )
    else:
        forms = (
            f"What is the {tool.noun} in {v1}?",
            f"Find the {tool.noun} for {v1}.",
            f"Look up {v1} with {tool.name}.",
            f"Call {tool.name} with {p1} '{v1}'.",
        )
    return rng.choice(forms)


@dataclass(frozen=True)
class Dialogue:
    """A tool dialogue: messages (the assistant's turns are taught), tools and expected call.

    The call is ``{"name": ..., "arguments": {...}}``.
    """

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    call: dict[str, Any]


def _draw_tools(rng: random.Random, listed_names: bool) -> list[Tool]:
    if listed_names:
        return [_make_tool(rng, noun) for noun in rng.sample(_NOUNS, rng.randint(1, 3))]
    tools: list[Tool] = []
    count = rng.randint(1, 3)
    while len(tools) < count:
        tool = _make_made_up_tool(rng)
        # Each tool's noun must name it alone, or "the <noun> in X" would be ambiguous.
        if all(tool.noun not in other.name and other.noun not in tool.name for other in tools):
            tools.append(tool)
    return tools


def make_dialogue(
    rng: random.Random, *, with_result: bool | None = None, listed_names: bool = False
) -> Dialogue:
    """Draw one dialogue: tools, the user's request, the call, and (usually) result and answer.

    Args:
        rng: The random source (a seeded one reproduces the dialogue).
        with_result: Add the tool result and the final answer; ``None`` draws it (70%).
        listed_names: Draw tool and parameter names from closed lists (the first
            generator) instead of making them up.
    """
    tools = _draw_tools(rng, listed_names)
    target = rng.choice(tools)
    values = [_value_for(rng, kind, made_up=not listed_names) for _, kind in target.params]
    if len(target.params) == 2:
        values[1] = f"a {rng.choice(_COUNTRIES)} {rng.choice(_KINDS)}"
    arguments = {name: value for (name, _), value in zip(target.params, values, strict=True)}
    call = {"type": "function", "function": {"name": target.name, "arguments": arguments}}
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": _ask(rng, target, values)},
        {"role": "assistant", "content": "", "tool_calls": [call]},
    ]
    if with_result if with_result is not None else rng.random() < 0.7:
        result = str(rng.randint(0, 999)) if rng.random() < 0.4 else rng.choice(_RESULTS)
        messages.append({"role": "tool", "content": result})
        messages.append({"role": "assistant", "content": result})
    return Dialogue(
        messages, [t.schema() for t in tools], {"name": target.name, "arguments": arguments}
    )
