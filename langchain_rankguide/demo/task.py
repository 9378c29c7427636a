"""The demo task: multi-step arithmetic with a worded chain of thought and an exact verifier.

A problem starts from a number and applies a few operations left to right::

    Start at 72, then: (1) subtract 39, (2) subtract 23, (3) multiply by 5. What is the result?

Its reference trace has one operation per step, steps separated by a blank line, optional
reflection steps that re-check an earlier result (and, in training data, catch a deliberately
injected mistake), and a final answer step::

    (1) subtract 39: 72 - 39 = 33, total 33.

    (2) subtract 23: 33 - 23 = 10, total 10.

    (3) multiply by 5: 10 * 5 = 50, total 50.

    Wait, check (3) multiply by 5: 10 * 5 = 50, correct.

    Answer: 50

:func:`verify_steps` labels every step of any trace (a model's output included) as correct or
not with an error kind, judged *locally*: an operation step is correct when it applies the
next operation of the question to the running total the trace itself carries, with the right
arithmetic. A slip is therefore charged to the step that makes it, not to every later step.

This module imports nothing heavy (no torch): the CLI and graph use it at any time.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

DELIMITER = "\n\n"

#: Operation name -> symbol used in the chain of thought.
SYMBOLS: dict[str, str] = {"add": "+", "subtract": "-", "multiply": "*", "divide": "/"}
_OPS_BY_SYMBOL = {sym: name for name, sym in SYMBOLS.items()}
#: Operations a model finds hard; reflections follow them more often.
HARD_OPERATIONS = frozenset({"multiply", "divide"})

SPLITS = ("train", "calibration", "heldout")
# Problems are assigned to splits by a hash of their question text, so the evaluation
# splits are disjoint from training by construction, whatever the seeds.
_SPLIT_BUCKETS: dict[str, range] = {
    "train": range(0, 80),
    "calibration": range(80, 90),
    "heldout": range(90, 100),
}

StepKind = Literal["operation", "reflection", "answer"]
LabelKind = Literal["operation", "reflection", "answer", "unparsed"]


@dataclass(frozen=True)
class Problem:
    """One arithmetic problem.

    Attributes:
        id: Stable identifier (split, seed and index for generated problems).
        question: The user-message text.
        start: The starting value.
        ops: Operations applied left to right, as ``(name, operand)`` pairs; names are keys
            of :data:`SYMBOLS`.
        answer: The exact result.
    """

    id: str
    question: str
    start: int
    ops: tuple[tuple[str, int], ...]
    answer: int


@dataclass(frozen=True)
class TraceStep:
    """One step of a rendered reference trace.

    Attributes:
        text: The step text; every step but the answer ends with the delimiter.
        kind: ``"operation"``, ``"reflection"`` or ``"answer"``.
        injected_error: True for a deliberately wrong step (training masks its loss).
        error_kind: For an injected error, the kind :func:`verify_steps` assigns to it.
    """

    text: str
    kind: StepKind
    injected_error: bool = False
    error_kind: str | None = None


@dataclass(frozen=True)
class StepLabel:
    """The verifier's judgement of one step.

    Attributes:
        kind: What the step is; ``"unparsed"`` when it matches no step form.
        correct: Whether the step is right (locally, see the module docstring); ``None`` for
            steps after the answer, which are not judged.
        error_kind: Why it is wrong (``None`` when correct), one of :data:`ERROR_KINDS`.
        value: The running total the trace carries after this step (``None`` if unknown).
    """

    kind: LabelKind
    correct: bool | None
    error_kind: str | None = None
    value: int | None = None


#: Every error kind :func:`verify_steps` can assign, with its meaning.
ERROR_KINDS: dict[str, str] = {
    "arithmetic": "the stated result of the expression is wrong",
    "wrong_operand": "the next operation is applied with a different operand",
    "wrong_operation": "a different operation than the next one is applied",
    "wrong_total": "the expression does not start from the running total",
    "skipped": "an operation later in the question is applied, skipping the next one",
    "extra": "an operation step after every operation was already applied",
    "inconsistent": "the step contradicts itself (its total differs from its result)",
    "repeated": "the step repeats an earlier step verbatim",
    "false_confirm": "a check confirms a result that was wrong",
    "false_alarm": "a check corrects a result that was not stated",
    "wrong_reference": "a check refers to an expression the trace never computed",
    "premature": "the answer is given before every operation was applied",
    "wrong_answer": "the answer differs from the trace's own running total",
    "propagated": "the answer repeats a running total that an earlier slip made wrong",
    "unparsed": "the step matches no known step form",
}


@dataclass(frozen=True)
class TraceVerdict:
    """The verifier's judgement of a whole trace.

    Attributes:
        labels: One label per step, in order.
        answer: The final answer the trace gives (``None`` when it gives none).
        correct: Whether that answer equals the problem's answer.
    """

    labels: tuple[StepLabel, ...]
    answer: int | None
    correct: bool
    expected: int = field(default=0)

    @property
    def all_steps_correct(self) -> bool:
        """True when every judged step is correct."""
        return all(label.correct is not False for label in self.labels)

    @property
    def wrong_steps(self) -> list[int]:
        """Indices of the steps judged wrong."""
        return [i for i, label in enumerate(self.labels) if label.correct is False]


# ----------------------------------------------------------------------------- generation


def _apply(name: str, value: int, operand: int) -> int:
    if name == "add":
        return value + operand
    if name == "subtract":
        return value - operand
    if name == "multiply":
        return value * operand
    if name == "divide":
        if operand == 0 or value % operand:
            raise ValueError(f"{value} / {operand} is not an exact division")
        return value // operand
    raise ValueError(f"unknown operation {name!r}")


def _feasible_operands(
    name: str, value: int, *, max_value: int, max_operand: int, max_factor: int
) -> list[int]:
    if name == "add":
        return list(range(1, min(max_operand, max_value - value) + 1))
    if name == "subtract":
        return list(range(1, min(max_operand, value) + 1))
    if name == "multiply":
        return [k for k in range(2, max_factor + 1) if value * k <= max_value]
    if name == "divide":
        return [k for k in range(2, max_factor + 1) if value % k == 0 and value > 0]
    raise ValueError(f"unknown operation {name!r}")


def _phrase(name: str, operand: int) -> str:
    if name in ("multiply", "divide"):
        return f"{name} by {operand}"
    return f"{name} {operand}"


def format_question(
    start: int, ops: Sequence[tuple[str, int]], *, numbered: bool = True, then_each: bool = False
) -> str:
    """Render the question text for a start value and operations.

    The canonical (numbered) wording is what the demo models are trained on::

        Start at 72, then: (1) subtract 39, (2) subtract 23, (3) multiply by 5. What is the result?

    Numbering gives every operation a unique key: a step opens with the number and the
    phrase (``(2) subtract 23: ...``), so a tiny model finds the next operation by copying
    what follows ``(2)`` in the question -- without the numbers it must pick the k-th of
    several "subtract" by position, which 2-layer models learn very slowly.

    Args:
        start: The start value.
        ops: The operations.
        numbered: The canonical numbered wording; ``False`` gives the plain prose form
            ``Start at 72. Subtract 39, subtract 23, then multiply by 5. What is the result?``
            (which :func:`parse_problem` also reads).
        then_each: In the prose form, put "then" before every operation after the first.
    """
    phrases = [_phrase(name, operand) for name, operand in ops]
    if numbered:
        listed = ", ".join(f"({i}) {phrase}" for i, phrase in enumerate(phrases, start=1))
        return f"Start at {start}, then: {listed}. What is the result?"
    for i in range(1, len(phrases)):
        if then_each or i == len(phrases) - 1:
            phrases[i] = "then " + phrases[i]
    body = ", ".join(phrases)
    body = body[:1].upper() + body[1:]
    return f"Start at {start}. {body}. What is the result?"


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def split_of(question: str) -> str:
    """Return the split (``train`` / ``calibration`` / ``heldout``) a question belongs to."""
    bucket = _stable_hash(question) % 100
    for name, buckets in _SPLIT_BUCKETS.items():
        if bucket in buckets:
            return name
    raise AssertionError("bucket ranges cover 0..99")  # pragma: no cover


def generate_problem(
    rng: random.Random,
    *,
    min_ops: int = 2,
    max_ops: int = 5,
    digits: int = 2,
    operators: Sequence[str] = ("add", "subtract", "multiply"),
    max_operand: int | None = None,
    max_factor: int = 9,
    problem_id: str | None = None,
) -> Problem:
    """Draw one problem; every intermediate value stays within ``digits`` digits (and >= 0).

    Args:
        rng: The random source (the only one used, so a seeded rng reproduces the problem).
        min_ops: Fewest operations.
        max_ops: Most operations.
        digits: Digits of the start value and bound of every intermediate value.
        operators: Operation names to draw from (keys of :data:`SYMBOLS`).
        max_operand: Largest operand of add/subtract (default: the value bound).
        max_factor: Largest factor of multiply/divide.
        problem_id: Identifier to give; default a hash of the question.

    Returns:
        The problem.
    """
    if not 1 <= min_ops <= max_ops:
        raise ValueError("need 1 <= min_ops <= max_ops")
    unknown = set(operators) - set(SYMBOLS)
    if unknown or not operators:
        raise ValueError(f"unknown or no operators: {sorted(unknown)}")
    max_value = 10**digits - 1
    low = 10 ** (digits - 1) if digits > 1 else 1
    bound = max_operand if max_operand is not None else max_value
    n_ops = rng.randint(min_ops, max_ops)
    start = rng.randint(low, max_value)
    value = start
    ops: list[tuple[str, int]] = []
    # A step that recurs verbatim reads as a loop to the verifier ("repeated"), so a problem
    # never applies the same operation to the same value twice.
    used: set[tuple[int, str, int]] = set()
    for _ in range(n_ops):
        choices = {
            name: [
                operand
                for operand in _feasible_operands(
                    name, value, max_value=max_value, max_operand=bound, max_factor=max_factor
                )
                if (value, name, operand) not in used
            ]
            for name in operators
        }
        names = [name for name in operators if choices[name]]
        if not names:
            break
        name = rng.choice(names)
        operand = rng.choice(choices[name])
        used.add((value, name, operand))
        value = _apply(name, value, operand)
        ops.append((name, operand))
    question = format_question(start, ops)
    pid = problem_id if problem_id is not None else f"p{_stable_hash(question) % 10**10:010d}"
    return Problem(id=pid, question=question, start=start, ops=tuple(ops), answer=value)


def make_problems(n: int, *, seed: int, split: str = "heldout", **knobs: object) -> list[Problem]:
    """Make ``n`` distinct problems of one split, reproducibly from ``seed``.

    Splits are disjoint by question text by construction (a hash of the question decides its
    split), so held-out and calibration problems never occur in training.

    Args:
        n: How many problems.
        seed: The seed; the same ``(seed, split)`` always gives the same list.
        split: ``"train"``, ``"calibration"`` or ``"heldout"``.
        **knobs: Difficulty knobs passed to :func:`generate_problem`.

    Returns:
        The problems, ids ``"{split}-{seed}-{index}"``.
    """
    if split not in _SPLIT_BUCKETS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    rng = random.Random(f"rankguide-demo:{split}:{seed}")
    problems: list[Problem] = []
    seen: set[str] = set()
    attempts = 0
    while len(problems) < n:
        attempts += 1
        if attempts > 1000 * (n + 10):
            raise ValueError(f"could not draw {n} distinct {split} problems with these knobs")
        problem = generate_problem(rng, **knobs)  # type: ignore[arg-type]
        if problem.question in seen or split_of(problem.question) != split:
            continue
        seen.add(problem.question)
        problems.append(
            Problem(
                id=f"{split}-{seed}-{len(problems)}",
                question=problem.question,
                start=problem.start,
                ops=problem.ops,
                answer=problem.answer,
            )
        )
    return problems


# ----------------------------------------------------------------------------- traces


def operation_text(index: int, a: int, name: str, b: int, result: int) -> str:
    """The text of an operation step (delimiter included).

    The step opens with the operation's number and phrase exactly as the question words
    them (``(1) subtract 39: 72 - 39 = 33, total 33.``), see :func:`format_question`.

    Args:
        index: The operation's number in the question (from 1).
        a: The running total it starts from.
        name: The operation.
        b: The operand.
        result: The stated result.
    """
    expr = f"{a} {SYMBOLS[name]} {b} = {result}, total {result}."
    return f"({index}) {_phrase(name, b)}: {expr}{DELIMITER}"


def _check_head(index: int, a: int, name: str, b: int, keyed: bool) -> str:
    expr = f"{a} {SYMBOLS[name]} {b}"
    key = f"({index}) {_phrase(name, b)}" if keyed else expr
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


def _inject_error(
    rng: random.Random,
    problem: Problem,
    index: int,
    value: int,
    max_value: int,
    avoid: set[str],
) -> tuple[str, str, int] | None:
    """Return ``(text, error_kind, wrong_result)`` of a wrong version of operation ``index``."""
    name, operand = problem.ops[index]
    right = _apply(name, value, operand)
    later = set(problem.ops[index + 1 :])
    candidates: list[tuple[str, str, int]] = []
    for delta in (-10, -3, -2, -1, 1, 2, 3, 10):
        wrong = right + delta
        if 0 <= wrong <= max_value:
            text = operation_text(index + 1, value, name, operand, wrong)
            candidates.append((text, "arithmetic", wrong))
    for delta in (-2, -1, 1, 2):
        other = operand + delta
        if other < 1 or (name, other) in later:
            continue
        if name in HARD_OPERATIONS and not 2 <= other <= 9:
            continue
        try:
            wrong = _apply(name, value, other)
        except ValueError:
            continue
        if 0 <= wrong <= max_value and wrong != right:
            text = operation_text(index + 1, value, name, other, wrong)
            candidates.append((text, "wrong_operand", wrong))
    swaps = {"add": "subtract", "subtract": "add", "multiply": "add", "divide": "subtract"}
    other_name = swaps[name]
    if (other_name, operand) not in later:
        wrong = _apply(other_name, value, operand)
        if 0 <= wrong <= max_value and wrong != right:
            candidates.append(
                (
                    operation_text(index + 1, value, other_name, operand, wrong),
                    "wrong_operation",
                    wrong,
                )
            )
    # A wrong step that equals an earlier one would read as "repeated", not as its kind.
    candidates = [c for c in candidates if c[0] not in avoid]
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
        result = _apply(name, value, operand)
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


def chat_messages(problem: Problem, system: str | None = None) -> list[dict[str, str]]:
    """The chat messages that pose a problem (an optional system message, then the user)."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": problem.question})
    return messages


# ----------------------------------------------------------------------------- parsing

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


@dataclass(frozen=True)
class _Check:
    """A parsed reflection step, whichever form it was written in."""

    caught: bool  # "not W. Total U." rather than "correct."
    number: int | None  # the operation number it names, if any
    agrees: bool  # its parts name one and the same expression
    a: int
    sym: str
    b: int
    value: int
    wrong: int = 0
    total: int = 0


def _parse_check(text: str) -> _Check | None:
    if m := _CONFIRM_RE.fullmatch(text):
        n, name, operand, a, sym, b, v = m.groups()
        agrees = SYMBOLS[name.split()[0].lower()] == sym and int(operand) == int(b)
        return _Check(False, int(n), agrees, int(a), sym, int(b), int(v))
    if m := _CATCH_RE.fullmatch(text):
        n, name, operand, a, sym, b, v, w, u = m.groups()
        agrees = SYMBOLS[name.split()[0].lower()] == sym and int(operand) == int(b)
        return _Check(True, int(n), agrees, int(a), sym, int(b), int(v), int(w), int(u))
    if m := _BARE_CONFIRM_RE.fullmatch(text):
        a, sym, b, a2, sym2, b2, v = m.groups()
        agrees = (a, sym, b) == (a2, sym2, b2)
        return _Check(False, None, agrees, int(a), sym, int(b), int(v))
    if m := _BARE_CATCH_RE.fullmatch(text):
        a, sym, b, v, w, u = m.groups()
        return _Check(True, None, True, int(a), sym, int(b), int(v), int(w), int(u))
    return None


_ANSWER_RE = re.compile(rf"Answer: {_NUM}\.?")
_ANSWER_SEARCH_RE = re.compile(r"Answer:\s*(-?\d+)")


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
    from langchain_rankguide.demo.forms import parse_operations

    parsed = parse_operations(question)
    if parsed is None:
        return None
    start, ops = parsed
    value = start
    try:
        for name, operand in ops:
            value = _apply(name, value, operand)
    except ValueError:
        return None
    text = format_question(start, ops)
    return Problem(
        id=f"parsed-{_stable_hash(text) % 10**10:010d}",
        question=text,
        start=start,
        ops=tuple(ops),
        answer=value,
    )


def extract_answer(text: str) -> int | None:
    """Return the last ``Answer: <int>`` in a text, or ``None``."""
    found = _ANSWER_SEARCH_RE.findall(text)
    return int(found[-1]) if found else None


# ----------------------------------------------------------------------------- verification


def _true(a: int, sym: str, b: int) -> int | None:
    try:
        return _apply(_OPS_BY_SYMBOL[sym], a, b)
    except ValueError:
        return None


def verify_steps(problem: Problem, step_texts: Sequence[str]) -> TraceVerdict:
    """Label each step of a trace and judge its final answer.

    Steps may carry their trailing delimiter or not (surrounding whitespace is ignored).
    Judgement is local: an operation step is right when it applies the question's next
    operation to the running total the trace carries, with correct arithmetic; a check is
    right when its arithmetic is true and it refers to what the trace computed.

    Args:
        problem: The problem the trace answers.
        step_texts: The step texts, in order.

    Returns:
        The verdict: one label per step, the answer given and whether it is right.
    """
    labels: list[StepLabel] = []
    total = problem.start
    next_op = 0
    # (a, sym, b, stated total, running total before, op index it stood for)
    history: list[tuple[int, str, int, int, int, int]] = []
    seen: set[str] = set()
    answer: int | None = None

    def label(kind: LabelKind, error: str | None) -> StepLabel:
        return StepLabel(kind=kind, correct=error is None, error_kind=error, value=total)

    for raw in step_texts:
        text = raw.strip()
        if answer is not None:
            labels.append(StepLabel(kind="unparsed", correct=None, error_kind=None, value=total))
            continue
        repeated = text in seen
        seen.add(text)
        if m := _OP_RE.fullmatch(text):
            a, sym, b, res, stated = (
                int(m.group(4)),
                m.group(5),
                int(m.group(6)),
                int(m.group(7)),
                int(m.group(8)),
            )
            number = int(m.group(1)) if m.group(1) is not None else None
            phrase_agrees = m.group(2) is None or (
                SYMBOLS[m.group(2).split()[0].lower()] == sym and int(m.group(3)) == b
            )
            if repeated:
                labels.append(label("operation", "repeated"))
                continue
            error: str | None = None
            index = next_op
            later = [
                j
                for j in range(next_op + 1, len(problem.ops))
                if (SYMBOLS[problem.ops[j][0]], problem.ops[j][1]) == (sym, b)
            ]
            if next_op >= len(problem.ops):
                error = "extra"
            else:
                exp_name, exp_operand = problem.ops[next_op]
                if (sym, b) != (SYMBOLS[exp_name], exp_operand) and later:
                    error, index = "skipped", later[0]
                elif a != total:
                    error = "wrong_total"
                elif sym != SYMBOLS[exp_name]:
                    error = "wrong_operation"
                elif b != exp_operand:
                    error = "wrong_operand"
            if error is None and _true(a, sym, b) != res:
                error = "arithmetic"
            if error is None and (
                stated != res or not phrase_agrees or number not in (None, index + 1)
            ):
                error = "inconsistent"
            history.append((a, sym, b, stated, total, index))
            total = stated
            next_op = min(index + 1, len(problem.ops)) if index < len(problem.ops) else next_op
            labels.append(label("operation", error))
        elif (check := _parse_check(text)) is not None and not check.caught:
            a, sym, b, res = check.a, check.sym, check.b, check.value
            matches = [
                h
                for h in history
                if (h[0], h[1], h[2]) == (a, sym, b)
                and (check.number is None or h[5] + 1 == check.number)
            ]
            if repeated:
                error = "repeated"
            elif not check.agrees:
                error = "inconsistent"
            elif _true(a, sym, b) != res:
                error = "arithmetic"
            elif not matches:
                error = "wrong_reference"
            elif matches[-1][3] != res:
                error = "false_confirm"
            else:
                error = None
            labels.append(label("reflection", error))
        elif check is not None:
            a, sym, b, res = check.a, check.sym, check.b, check.value
            wrong, new_total = check.wrong, check.total
            last = history[-1] if history else None
            if repeated:
                error = "repeated"
            elif not check.agrees or new_total != res:
                error = "inconsistent"
            elif _true(a, sym, b) != res:
                error = "arithmetic"
            elif last is None or last[3] != wrong:
                error = "false_alarm"
            elif (
                last[4] != a
                or last[5] >= len(problem.ops)
                or ((SYMBOLS[problem.ops[last[5]][0]], problem.ops[last[5]][1]) != (sym, b))
                or check.number not in (None, last[5] + 1)
            ):
                error = "wrong_reference"
            else:
                error = None
            if not repeated:
                if error is None and last is not None:
                    # The fix replaces the last operation: resume right after the operation
                    # it should have applied.
                    next_op = min(last[5] + 1, len(problem.ops))
                total = new_total
            labels.append(label("reflection", error))
        elif m := _ANSWER_RE.fullmatch(text):
            answer = int(m.group(1))
            if answer == problem.answer:
                error = None
            elif next_op < len(problem.ops):
                error = "premature"
            elif answer != total:
                error = "wrong_answer"
            else:
                error = "propagated"
            labels.append(StepLabel("answer", error is None, error, answer))
        else:
            labels.append(StepLabel("unparsed", False, "unparsed", total))
    return TraceVerdict(
        labels=tuple(labels),
        answer=answer,
        correct=answer is not None and answer == problem.answer,
        expected=problem.answer,
    )


def revalidation_flags(labels: Sequence[StepLabel], min_streak: int = 3) -> list[bool]:
    """Mark steps that are heavy revalidation.

    A step is marked when it belongs to a run of at least ``min_streak`` consecutive
    reflection steps, or when it repeats an earlier step verbatim.

    Args:
        labels: The step labels of one trace.
        min_streak: Shortest run of reflections that counts.

    Returns:
        One flag per step.
    """
    flags = [label.error_kind == "repeated" for label in labels]
    start = 0
    while start < len(labels):
        if labels[start].kind != "reflection":
            start += 1
            continue
        end = start
        while end < len(labels) and labels[end].kind == "reflection":
            end += 1
        if end - start >= min_streak:
            for i in range(start, end):
                flags[i] = True
        start = end
    return flags
