"""Demo problems: the operations, the problem record, the question wording and the splits.

A problem starts from a number and applies a few operations left to right::

    Start at 72, then: (1) subtract 39, (2) subtract 23, (3) multiply by 5. What is the result?

Problems are drawn reproducibly from a seed and assigned to the train, calibration and
held-out splits by a hash of their question text. This module imports nothing heavy.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from langchain_rankguide.demo.forms import QuestionForm, render_question

#: Operation name -> symbol used in the chain of thought.
SYMBOLS: dict[str, str] = {"add": "+", "subtract": "-", "multiply": "*", "divide": "/"}
#: Symbol -> operation name (the inverse of :data:`SYMBOLS`).
OPERATIONS_BY_SYMBOL: dict[str, str] = {sym: name for name, sym in SYMBOLS.items()}
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


def apply_operation(name: str, value: int, operand: int) -> int:
    """Apply one operation exactly.

    Raises:
        ValueError: For an unknown operation or a division that leaves a remainder.
    """
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
            (which :func:`~langchain_rankguide.demo.parsing.parse_problem` also reads).
        then_each: In the prose form, put "then" before every operation after the first.
    """
    if numbered:
        form = QuestionForm(joiner="numbered")
    else:
        form = QuestionForm(joiner="then_each" if then_each else "then_last")
    return render_question(start, ops, form)


def stable_hash(text: str) -> int:
    """A hash of a text that is the same in every process (unlike :func:`hash`)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def split_of(question: str) -> str:
    """Return the split (``train`` / ``calibration`` / ``heldout``) a question belongs to."""
    bucket = stable_hash(question) % 100
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
        value = apply_operation(name, value, operand)
        ops.append((name, operand))
    question = format_question(start, ops)
    pid = problem_id if problem_id is not None else f"p{stable_hash(question) % 10**10:010d}"
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


def chat_messages(problem: Problem, system: str | None = None) -> list[dict[str, str]]:
    """The chat messages that pose a problem (an optional system message, then the user)."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": problem.question})
    return messages
