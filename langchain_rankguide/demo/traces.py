"""Reference chains of thought of demo problems: step texts, injected errors and rendering.

A reference trace has one operation per step, steps separated by :data:`DELIMITER`, optional
reflection steps that re-check an earlier result (and, in training data, catch a deliberately
injected mistake), and a final answer step::

    (1) subtract 39: 72 - 39 = 33, total 33.

    (2) subtract 23: 33 - 23 = 10, total 10.

    (3) multiply by 5: 10 * 5 = 50, total 50.

    Wait, check (3) multiply by 5: 10 * 5 = 50, correct.

    Answer: 50
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from langchain_rankguide.demo.forms import phrase
from langchain_rankguide.demo.problems import (
    HARD_OPERATIONS,
    SYMBOLS,
    Problem,
    apply_operation,
)

#: The step delimiter: every step but the answer ends with it.
DELIMITER = "\n\n"

StepKind = Literal["operation", "reflection", "answer"]


@dataclass(frozen=True)
class TraceStep:
    """One step of a rendered reference trace.

    Attributes:
        text: The step text; every step but the answer ends with the delimiter.
        kind: ``"operation"``, ``"reflection"`` or ``"answer"``.
        injected_error: True for a deliberately wrong step (training masks its loss).
        error_kind: For an injected error, the kind
            :func:`~langchain_rankguide.demo.verify.verify_steps` assigns to it.
    """

    text: str
    kind: StepKind
    injected_error: bool = False
    error_kind: str | None = None


def operation_text(index: int, a: int, name: str, b: int, result: int) -> str:
    """The text of an operation step (delimiter included).

    The step opens with the operation's number and phrase exactly as the question words
    them (``(1) subtract 39: 72 - 39 = 33, total 33.``), see
    :func:`~langchain_rankguide.demo.problems.format_question`.

    Args:
        index: The operation's number in the question (from 1).
        a: The running total it starts from.
        name: The operation.
        b: The operand.
        result: The stated result.
    """
    expr = f"{a} {SYMBOLS[name]} {b} = {result}, total {result}."
    return f"({index}) {phrase(name, b)}: {expr}{DELIMITER}"


def _check_head(index: int, a: int, name: str, b: int, keyed: bool) -> str:
    expr = f"{a} {SYMBOLS[name]} {b}"
    key = f"({index}) {phrase(name, b)}" if keyed else expr
    return f"Wait, check {key}: {expr}"


def confirm_text(index: int, a: int, name: str, b: int, result: int, *, keyed: bool = True) -> str:
    """The text of a reflection step that confirms an earlier result.

    Keyed (the default): ``Wait, check (1) subtract 39: 72 - 39 = 33, correct.`` -- named by
    the operation's number and phrase like the operation step it re-checks, so a model finds
    what to copy by the key instead of counting back through the trace. Unkeyed:
    ``Wait, check 72 - 39: 72 - 39 = 33, correct.`` (the shipped SRM's form, see
    ``docs/demo.md``). The verifier reads both.

    Args:
        index: The re-checked operation's number in the question (from 1).
        a: The running total it starts from.
        name: The operation.
        b: The operand.
        result: The right result.
        keyed: Name the operation by its number and phrase.
    """
    return f"{_check_head(index, a, name, b, keyed)} = {result}, correct.{DELIMITER}"


def catch_text(
    index: int, a: int, name: str, b: int, result: int, wrong: int, *, keyed: bool = True
) -> str:
    """The text of a reflection step that catches and fixes a wrong result.

    Keyed: ``Wait, check (1) subtract 39: 72 - 39 = 33, not 34. Total 33.``; unkeyed:
    ``Wait, check 72 - 39: it is 33, not 34. Total 33.`` (as in :func:`confirm_text`).
    """
    if not keyed:
        expr = f"{a} {SYMBOLS[name]} {b}"
        return f"Wait, check {expr}: it is {result}, not {wrong}. Total {result}.{DELIMITER}"
    head = _check_head(index, a, name, b, keyed)
    return f"{head} = {result}, not {wrong}. Total {result}.{DELIMITER}"


def answer_text(value: int) -> str:
    """The text of the answer step (no delimiter: the end-of-sequence token follows it)."""
    return f"Answer: {value}"


# The operation a slip writes instead of the right one ("wrong_operation" errors).
_SWAPS = {"add": "subtract", "subtract": "add", "multiply": "add", "divide": "subtract"}


def _exact(name: str, value: int, operand: int) -> int | None:
    try:
        return apply_operation(name, value, operand)
    except ValueError:
        return None


def _wrong_versions(
    problem: Problem, index: int, value: int, max_value: int
) -> list[tuple[str, str, int]]:
    """Every ``(text, error_kind, wrong_result)`` of a slip on operation ``index``."""
    name, operand = problem.ops[index]
    right = apply_operation(name, value, operand)
    later = set(problem.ops[index + 1 :])
    # (operation written, operand written, result written, error kind)
    slips: list[tuple[str, int, int | None, str]] = [
        (name, operand, right + delta, "arithmetic") for delta in (-10, -3, -2, -1, 1, 2, 3, 10)
    ]
    for delta in (-2, -1, 1, 2):
        other = operand + delta
        if other < 1 or (name, other) in later:
            continue
        if name not in HARD_OPERATIONS or 2 <= other <= 9:
            slips.append((name, other, _exact(name, value, other), "wrong_operand"))
    other_name = _SWAPS[name]
    if (other_name, operand) not in later:
        wrong = apply_operation(other_name, value, operand)
        slips.append((other_name, operand, wrong, "wrong_operation"))
    return [
        (operation_text(index + 1, value, written, b, wrong), kind, wrong)
        for written, b, wrong, kind in slips
        if wrong is not None and 0 <= wrong <= max_value and wrong != right
    ]


def _inject_error(
    rng: random.Random,
    problem: Problem,
    index: int,
    value: int,
    max_value: int,
    avoid: set[str],
) -> tuple[str, str, int] | None:
    """Return ``(text, error_kind, wrong_result)`` of a wrong version of operation ``index``."""
    # A wrong step that equals an earlier one would read as "repeated", not as its kind.
    candidates = [c for c in _wrong_versions(problem, index, value, max_value) if c[0] not in avoid]
    if not candidates:
        return None
    # Pick the error kind first so the rarer kinds are not drowned by arithmetic slips.
    kinds = sorted({kind for _, kind, _ in candidates})
    kind = rng.choice(kinds)
    return rng.choice([c for c in candidates if c[1] == kind])


def render_trace(
    problem: Problem,
    rng: random.Random | None = None,
    *,
    reflection_rate: float = 0.7,
    easy_reflection_rate: float = 0.05,
    final_check_rate: float = 0.6,
    final_check_min_ops: int = 4,
    error_rate: float = 0.08,
    digits: int = 2,
    keyed_checks: bool = True,
) -> list[TraceStep]:
    """Render the reference chain of thought of a problem, with reflections and injected errors.

    The defaults are the training distribution. Reflections follow rules a model can learn
    (so greedy decoding reproduces them): a hard step (multiply/divide) is re-checked with
    probability ``reflection_rate``, an easy one with ``easy_reflection_rate``; a problem of
    at least ``final_check_min_ops`` operations ends, with probability ``final_check_rate``,
    with a block of checks of its last ``n_ops - 2`` (at most 3) unchecked steps -- two or
    three consecutive reflections, on top of any check just before them. With probability
    ``error_rate`` an operation is first written wrong (``injected_error=True``) and then
    caught by a reflection that states the right total.

    Args:
        problem: The problem.
        rng: Random source; ``None`` uses one seeded from the problem's question.
        reflection_rate: Check probability after a multiply/divide step.
        easy_reflection_rate: Check probability after an add/subtract step.
        final_check_rate: Probability of the final block of checks.
        final_check_min_ops: Fewest operations for a final block of checks.
        error_rate: Probability that an operation step is first written wrong.
        digits: The value bound used when drawing wrong results.
        keyed_checks: Write reflection steps in the keyed form (see :func:`confirm_text`).

    Returns:
        The steps; joined by :func:`trace_text` they form the assistant message.
    """
    if rng is None:
        rng = random.Random(f"rankguide-demo:trace:{problem.question}")
    max_value = 10**digits - 1
    steps: list[TraceStep] = []
    done: list[tuple[int, str, int, int]] = []  # (a, name, b, result) per operation
    checked: set[int] = set()
    value = problem.start
    for index, (name, operand) in enumerate(problem.ops):
        result = apply_operation(name, value, operand)
        error = None
        if rng.random() < error_rate:
            error = _inject_error(rng, problem, index, value, max_value, {s.text for s in steps})
        if error is not None:
            text, kind, wrong = error
            steps.append(TraceStep(text, "operation", injected_error=True, error_kind=kind))
            text = catch_text(index + 1, value, name, operand, result, wrong, keyed=keyed_checks)
            steps.append(TraceStep(text, "reflection"))
            checked.add(index)
        else:
            text = operation_text(index + 1, value, name, operand, result)
            steps.append(TraceStep(text, "operation"))
            rate = reflection_rate if name in HARD_OPERATIONS else easy_reflection_rate
            if rng.random() < rate:
                text = confirm_text(index + 1, value, name, operand, result, keyed=keyed_checks)
                steps.append(TraceStep(text, "reflection"))
                checked.add(index)
        done.append((value, name, operand, result))
        value = result
    n_ops = len(problem.ops)
    if n_ops >= final_check_min_ops and rng.random() < final_check_rate:
        span = min(3, n_ops - 2)
        for index in range(n_ops - span, n_ops):
            if index not in checked:
                text = confirm_text(index + 1, *done[index], keyed=keyed_checks)
                steps.append(TraceStep(text, "reflection"))
    steps.append(TraceStep(answer_text(value), "answer"))
    return steps


def trace_text(steps: Sequence[TraceStep]) -> str:
    """Join steps into the assistant message text."""
    return "".join(step.text for step in steps)


def split_steps(text: str) -> list[str]:
    """Cut assistant text into steps at the delimiter (each keeps its delimiter)."""
    parts = text.split(DELIMITER)
    steps = [part + DELIMITER for part in parts[:-1]]
    if parts[-1]:
        steps.append(parts[-1])
    return [step for step in steps if step.strip()]
