"""Reading demo text: step forms of a chain of thought, demo questions and final answers.

Each step parser returns ``None`` when the text is not of its form, so a caller tries them in
turn. Parsers read what a step *says*; whether it is right is
:func:`~langchain_rankguide.demo.verify.verify_steps`'s job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from langchain_rankguide.demo.forms import parse_operations
from langchain_rankguide.demo.problems import (
    SYMBOLS,
    Problem,
    apply_operation,
    format_question,
    stable_hash,
)

_NUM = r"(-?\d+)"
_SYM = r"([-+*/])"
# The leading number and phrase ("(1) subtract 39: ") are optional: the bare form verifies too.
_OP_RE = re.compile(
    r"(?:\((\d+)\) )?"
    rf"(?:(add|subtract|multiply by|divide by) {_NUM}: )?"
    rf"{_NUM} {_SYM} {_NUM} = {_NUM}, total {_NUM}\.",
    re.IGNORECASE,
)
# Checks: "Wait, check (2) subtract 23: 33 - 23 = 10, correct." (or ", not 12. Total 10."),
# and the unnumbered forms "Wait, check 33 - 23: 33 - 23 = 10, correct." /
# "Wait, check 33 - 23: it is 10, not 12. Total 10.".
_KEYED = r"Wait, check \((\d+)\) (add|subtract|multiply by|divide by) (\d+): "
_CONFIRM_RE = re.compile(rf"{_KEYED}{_NUM} {_SYM} {_NUM} = {_NUM}, correct\.", re.IGNORECASE)
_CATCH_RE = re.compile(
    rf"{_KEYED}{_NUM} {_SYM} {_NUM} = {_NUM}, not {_NUM}\. Total {_NUM}\.", re.IGNORECASE
)
_BARE_CONFIRM_RE = re.compile(
    rf"Wait, check {_NUM} {_SYM} {_NUM}: {_NUM} {_SYM} {_NUM} = {_NUM}, correct\."
)
_BARE_CATCH_RE = re.compile(
    rf"Wait, check {_NUM} {_SYM} {_NUM}: it is {_NUM}, not {_NUM}\. Total {_NUM}\."
)
_ANSWER_RE = re.compile(rf"Answer: {_NUM}\.?")
_ANSWER_SEARCH_RE = re.compile(r"Answer:\s*(-?\d+)")


@dataclass(frozen=True)
class OperationStep:
    """A parsed operation step: ``(n) phrase: a sym b = result, total total.``.

    Attributes:
        number: The operation number it names (``None`` in the bare form).
        phrase_agrees: Its phrase names the same operation and operand as its expression
            (true in the bare form, which has no phrase).
        a: The expression's left operand (the running total it starts from).
        sym: The expression's operator symbol.
        b: The expression's right operand.
        result: The result the expression states.
        total: The running total the step states.
    """

    number: int | None
    phrase_agrees: bool
    a: int
    sym: str
    b: int
    result: int
    total: int


@dataclass(frozen=True)
class CheckStep:
    """A parsed reflection step, whichever form it was written in.

    Attributes:
        caught: It corrects a result (``not W. Total U.``) rather than confirming it.
        number: The operation number it names (``None`` in the unkeyed form).
        agrees: Its parts name one and the same expression.
        a: The re-checked expression's left operand.
        sym: Its operator symbol.
        b: Its right operand.
        value: The result the check states for it.
        wrong: For a catch, the result it says was wrong.
        total: For a catch, the running total it states.
    """

    caught: bool
    number: int | None
    agrees: bool
    a: int
    sym: str
    b: int
    value: int
    wrong: int = 0
    total: int = 0


def _phrase_agrees(name: str, operand: str, sym: str, b: str | int) -> bool:
    return SYMBOLS[name.split()[0].lower()] == sym and int(operand) == int(b)


def parse_operation_step(text: str) -> OperationStep | None:
    """Read an operation step (stripped of surrounding whitespace), or ``None``."""
    m = _OP_RE.fullmatch(text)
    if m is None:
        return None
    number, name, operand, a, sym, b, result, total = m.groups()
    return OperationStep(
        number=int(number) if number is not None else None,
        phrase_agrees=name is None or _phrase_agrees(name, operand, sym, b),
        a=int(a),
        sym=sym,
        b=int(b),
        result=int(result),
        total=int(total),
    )


def parse_check_step(text: str) -> CheckStep | None:
    """Read a reflection step (confirming or catching, keyed or not), or ``None``."""
    if m := _CONFIRM_RE.fullmatch(text):
        n, name, operand, a, sym, b, v = m.groups()
        agrees = _phrase_agrees(name, operand, sym, b)
        return CheckStep(False, int(n), agrees, int(a), sym, int(b), int(v))
    if m := _CATCH_RE.fullmatch(text):
        n, name, operand, a, sym, b, v, w, u = m.groups()
        agrees = _phrase_agrees(name, operand, sym, b)
        return CheckStep(True, int(n), agrees, int(a), sym, int(b), int(v), int(w), int(u))
    if m := _BARE_CONFIRM_RE.fullmatch(text):
        a, sym, b, a2, sym2, b2, v = m.groups()
        agrees = (a, sym, b) == (a2, sym2, b2)
        return CheckStep(False, None, agrees, int(a), sym, int(b), int(v))
    if m := _BARE_CATCH_RE.fullmatch(text):
        a, sym, b, v, w, u = m.groups()
        return CheckStep(True, None, True, int(a), sym, int(b), int(v), int(w), int(u))
    return None


def parse_answer_step(text: str) -> int | None:
    """Read an answer step (``Answer: 50``), or ``None``."""
    m = _ANSWER_RE.fullmatch(text)
    return int(m.group(1)) if m else None


def parse_problem(question: str) -> Problem | None:
    """Recognise a demo problem inside free text (``None`` when there is none).

    Every wording of :mod:`langchain_rankguide.demo.forms` is read (canonical, prose, with
    or without a closing question, 1 or more operations).

    Args:
        question: Any text, e.g. a user message that contains a demo question.

    Returns:
        The problem (id ``"parsed-<hash>"``, question in the canonical wording), or ``None``
        if no demo question is found or its operations cannot be applied exactly.
    """
    parsed = parse_operations(question)
    if parsed is None:
        return None
    start, ops = parsed
    value = start
    try:
        for name, operand in ops:
            value = apply_operation(name, value, operand)
    except ValueError:
        return None
    text = format_question(start, ops)
    return Problem(
        id=f"parsed-{stable_hash(text) % 10**10:010d}",
        question=text,
        start=start,
        ops=tuple(ops),
        answer=value,
    )


def extract_answer(text: str) -> int | None:
    """Return the last ``Answer: <int>`` in a text, or ``None``."""
    found = _ANSWER_SEARCH_RE.findall(text)
    return int(found[-1]) if found else None
