"""The ways a user may word a demo question, and a parser that reads every one of them.

The canonical form numbers the operations (``Start at 72, then: (1) subtract 39, (2) add 14.
What is the result?``); users type prose (``Start at 72. Subtract 39, then add 14.``,
``Begin with 9. Add 4. What do you get?``). The demo models are trained on all of these forms
and read the question as typed: nothing rewrites a question into the canonical form.

Example:
    >>> form = QuestionForm(opener="Begin with", joiner="then_last", closer="What do you get?")
    >>> render_question(72, [("subtract", 39), ("add", 14)], form)
    'Begin with 72. Subtract 39, then add 14. What do you get?'
    >>> parse_operations("Start at 9. Add 4.")
    (9, [('add', 4)])
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

OPENERS: tuple[str, ...] = ("Start at", "Begin with", "Start with")
CLOSERS: tuple[str, ...] = ("What is the result?", "What do you get?", "")
Joiner = Literal["numbered", "then_last", "then_each", "plain", "sentences"]
JOINERS: tuple[Joiner, ...] = ("numbered", "then_last", "then_each", "plain", "sentences")


@dataclass(frozen=True)
class QuestionForm:
    """One wording of a question.

    Attributes:
        opener: How the start value is introduced (one of :data:`OPENERS`).
        joiner: How operations are joined: ``numbered`` (the canonical ``, then: (1) ...``),
            ``then_last`` (``A, B, then C``), ``then_each`` (``A, then B, then C``), ``plain``
            (``A, B, C``) or ``sentences`` (``A. Then B. Then C.``).
        closer: The closing question (one of :data:`CLOSERS`; empty for none).
    """

    opener: str = "Start at"
    joiner: Joiner = "numbered"
    closer: str = "What is the result?"


CANONICAL = QuestionForm()


def phrase(name: str, operand: int) -> str:
    """The phrase of one operation (``add 5``, ``multiply by 3``)."""
    return f"{name} by {operand}" if name in ("multiply", "divide") else f"{name} {operand}"


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _body(phrases: list[str], joiner: Joiner) -> str:
    if joiner == "numbered":
        return ", ".join(f"({i}) {p}" for i, p in enumerate(phrases, start=1))
    if joiner == "sentences":
        return ". ".join(_capital(p if i == 0 else f"then {p}") for i, p in enumerate(phrases))
    parts = list(phrases)
    for i in range(1, len(parts)):
        if joiner == "then_each" or (joiner == "then_last" and i == len(parts) - 1):
            parts[i] = f"then {parts[i]}"
    return _capital(", ".join(parts))


def render_question(start: int, ops: Sequence[tuple[str, int]], form: QuestionForm) -> str:
    """Word a question (start value and operations) in one form."""
    body = _body([phrase(name, operand) for name, operand in ops], form.joiner)
    if form.joiner == "numbered":
        text = f"{form.opener} {start}, then: {body}."
    else:
        text = f"{form.opener} {start}. {body}."
    return f"{text} {form.closer}" if form.closer else text


def random_form(rng: random.Random, canonical_rate: float = 0.5) -> QuestionForm:
    """Draw a wording: the canonical one with ``canonical_rate``, else any form at random."""
    if rng.random() < canonical_rate:
        return CANONICAL
    return QuestionForm(rng.choice(OPENERS), rng.choice(JOINERS), rng.choice(CLOSERS))


def all_forms() -> list[QuestionForm]:
    """Every wording (openers x joiners x closers)."""
    return [QuestionForm(o, j, c) for o in OPENERS for j in JOINERS for c in CLOSERS]


_OPENER_RE = re.compile(r"\b(?:Start at|Begin with|Start with)\s+(\d+)", re.IGNORECASE)
_CLOSER_RE = re.compile(r"What (?:is the result|do you get)\?", re.IGNORECASE)
_OP_RE = re.compile(r"\b(add|subtract|multiply by|divide by)\s+(\d+)", re.IGNORECASE)
# What may stand between operations: numbers in brackets, "then"/"and", punctuation, space.
_FILLER_RE = re.compile(r"\(\d+\)|\bthen\b|\band\b|[.,:;]|\s", re.IGNORECASE)


def parse_operations(text: str) -> tuple[int, list[tuple[str, int]]] | None:
    """Read the start value and operations of a demo question in any form of this module.

    The question may stand inside other text: it runs from the opener (``Start at 72``) to the
    closing question, or to the end of its line when there is none. Anything between the
    operations other than numbering, "then", "and" and punctuation makes it unreadable.

    Returns:
        ``(start, [(operation, operand), ...])``, or ``None`` when no question is found.
    """
    opener = _OPENER_RE.search(text)
    if opener is None:
        return None
    rest = text[opener.end() :]
    closer = _CLOSER_RE.search(rest)
    body = rest[: closer.start()] if closer else rest.split("\n", 1)[0]
    ops = [(m.group(1).split()[0].lower(), int(m.group(2))) for m in _OP_RE.finditer(body)]
    if not ops or _FILLER_RE.sub("", _OP_RE.sub("", body)):
        return None
    return int(opener.group(1)), ops
