"""The exact step verifier of the demo task: a label for every step of any trace.

:func:`verify_steps` labels every step of a trace (a model's output included) as correct or
not with an error kind, judged *locally*: an operation step is correct when it applies the
next operation of the question to the running total the trace itself carries, with the right
arithmetic. A slip is therefore charged to the step that makes it, not to every later step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from langchain_rankguide.demo.parsing import (
    CheckStep,
    OperationStep,
    parse_answer_step,
    parse_check_step,
    parse_operation_step,
)
from langchain_rankguide.demo.problems import (
    OPERATIONS_BY_SYMBOL,
    SYMBOLS,
    Problem,
    apply_operation,
)

LabelKind = Literal["operation", "reflection", "answer", "unparsed"]


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
        expected: The problem's answer.
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


@dataclass(frozen=True)
class _Computed:
    """An operation step as the trace wrote it, for later checks to refer to."""

    a: int
    sym: str
    b: int
    stated: int  # the running total the step stated
    before: int  # the running total it started from
    index: int  # the question's operation it stood for


@dataclass
class _Run:
    """What the verifier knows partway through a trace."""

    problem: Problem
    total: int  # the running total the trace carries
    next_op: int = 0  # the question's next operation to apply
    history: list[_Computed] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    answer: int | None = None

    @property
    def n_ops(self) -> int:
        return len(self.problem.ops)

    def op_key(self, index: int) -> tuple[str, int]:
        """``(symbol, operand)`` of the question's operation ``index``."""
        name, operand = self.problem.ops[index]
        return SYMBOLS[name], operand

    def label(self, kind: LabelKind, error: str | None) -> StepLabel:
        return StepLabel(kind=kind, correct=error is None, error_kind=error, value=self.total)


def _true(a: int, sym: str, b: int) -> int | None:
    try:
        return apply_operation(OPERATIONS_BY_SYMBOL[sym], a, b)
    except ValueError:
        return None


def _operation_error(run: _Run, step: OperationStep) -> tuple[str | None, int]:
    """The error of an operation step (``None`` if right) and the operation it stood for."""
    error: str | None = None
    index = run.next_op
    if run.next_op >= run.n_ops:
        error = "extra"
    else:
        key = (step.sym, step.b)
        later = [j for j in range(run.next_op + 1, run.n_ops) if run.op_key(j) == key]
        expected_sym, expected_operand = run.op_key(run.next_op)
        if key != (expected_sym, expected_operand) and later:
            error, index = "skipped", later[0]
        elif step.a != run.total:
            error = "wrong_total"
        elif step.sym != expected_sym:
            error = "wrong_operation"
        elif step.b != expected_operand:
            error = "wrong_operand"
    if error is None and _true(step.a, step.sym, step.b) != step.result:
        error = "arithmetic"
    if error is None and (
        step.total != step.result or not step.phrase_agrees or step.number not in (None, index + 1)
    ):
        error = "inconsistent"
    return error, index


def _judge_operation(run: _Run, step: OperationStep, repeated: bool) -> StepLabel:
    if repeated:
        return run.label("operation", "repeated")
    error, index = _operation_error(run, step)
    run.history.append(_Computed(step.a, step.sym, step.b, step.total, run.total, index))
    run.total = step.total
    if index < run.n_ops:
        run.next_op = index + 1
    return run.label("operation", error)


def _judge_confirm(run: _Run, check: CheckStep, repeated: bool) -> StepLabel:
    matches = [
        h
        for h in run.history
        if (h.a, h.sym, h.b) == (check.a, check.sym, check.b)
        and (check.number is None or h.index + 1 == check.number)
    ]
    error: str | None = None
    if repeated:
        error = "repeated"
    elif not check.agrees:
        error = "inconsistent"
    elif _true(check.a, check.sym, check.b) != check.value:
        error = "arithmetic"
    elif not matches:
        error = "wrong_reference"
    elif matches[-1].stated != check.value:
        error = "false_confirm"
    return run.label("reflection", error)


def _catch_error(run: _Run, check: CheckStep, last: _Computed | None) -> str | None:
    """The error of a (not repeated) catching check of the last operation step."""
    if not check.agrees or check.total != check.value:
        return "inconsistent"
    if _true(check.a, check.sym, check.b) != check.value:
        return "arithmetic"
    if last is None or last.stated != check.wrong:
        return "false_alarm"
    if (
        last.before != check.a
        or last.index >= run.n_ops
        or run.op_key(last.index) != (check.sym, check.b)
        or check.number not in (None, last.index + 1)
    ):
        return "wrong_reference"
    return None


def _judge_catch(run: _Run, check: CheckStep, repeated: bool) -> StepLabel:
    if repeated:
        return run.label("reflection", "repeated")
    last = run.history[-1] if run.history else None
    error = _catch_error(run, check, last)
    if error is None and last is not None:
        # The fix replaces the last operation: resume right after the operation it should
        # have applied.
        run.next_op = min(last.index + 1, run.n_ops)
    run.total = check.total
    return run.label("reflection", error)


def _judge_answer(run: _Run, answer: int) -> StepLabel:
    error: str | None
    if answer == run.problem.answer:
        error = None
    elif run.next_op < run.n_ops:
        error = "premature"
    elif answer != run.total:
        error = "wrong_answer"
    else:
        error = "propagated"
    return StepLabel("answer", error is None, error, answer)


def _judge_step(run: _Run, text: str) -> StepLabel:
    repeated = text in run.seen
    run.seen.add(text)
    if (operation := parse_operation_step(text)) is not None:
        return _judge_operation(run, operation, repeated)
    if (check := parse_check_step(text)) is not None:
        judge = _judge_catch if check.caught else _judge_confirm
        return judge(run, check, repeated)
    if (answer := parse_answer_step(text)) is not None:
        run.answer = answer
        return _judge_answer(run, answer)
    return StepLabel("unparsed", False, "unparsed", run.total)


def verify_steps(problem: Problem, step_texts: Sequence[str]) -> TraceVerdict:
    """Label each step of a trace and judge its final answer.

    Steps may carry their trailing delimiter or not (surrounding whitespace is ignored).
    Judgement is local: an operation step is right when it applies the question's next
    operation to the running total the trace carries, with correct arithmetic; a check is
    right when its arithmetic is true and it refers to what the trace computed. Steps after
    the answer are not judged.

    Args:
        problem: The problem the trace answers.
        step_texts: The step texts, in order.

    Returns:
        The verdict: one label per step, the answer given and whether it is right.
    """
    run = _Run(problem=problem, total=problem.start)
    labels: list[StepLabel] = []
    for raw in step_texts:
        if run.answer is not None:
            labels.append(StepLabel(kind="unparsed", correct=None, value=run.total))
        else:
            labels.append(_judge_step(run, raw.strip()))
    return TraceVerdict(
        labels=tuple(labels),
        answer=run.answer,
        correct=run.answer is not None and run.answer == problem.answer,
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
