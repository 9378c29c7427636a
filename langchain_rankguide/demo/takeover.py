"""Reference continuations of a trace someone else started: what the LRM learns to take over.

In a collaboration the LRM writes a step after a prefix written partly by the SRM (in the
SRM's unkeyed check format, with the SRM's slips). :func:`continue_trace` gives the reference
continuation of such a prefix: when the prefix is right, the remaining operations (and checks)
from the running total it carries; when only its last step is a wrong operation, a check that
catches and fixes it first. A prefix that already applied every operation is answered at once.

Example:
    >>> from langchain_rankguide.demo.task import make_problems
    >>> problem = make_problems(1, seed=0)[0]
    >>> steps = continue_trace(problem, [])
    >>> steps[-1].kind
    'answer'
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from langchain_rankguide.demo.problems import HARD_OPERATIONS, Problem, apply_operation
from langchain_rankguide.demo.traces import (
    TraceStep,
    answer_text,
    catch_text,
    confirm_text,
    operation_text,
)
from langchain_rankguide.demo.verify import verify_steps

#: Operation errors a catching check can repair (the verifier accepts the fix).
REPAIRABLE = frozenset({"arithmetic", "wrong_operand", "wrong_operation"})


def _values(problem: Problem) -> list[tuple[int, str, int, int]]:
    """``(total before, operation, operand, result)`` of every operation, computed right."""
    rows, value = [], problem.start
    for name, operand in problem.ops:
        result = apply_operation(name, value, operand)
        rows.append((value, name, operand, result))
        value = result
    return rows


def _applied(problem: Problem, prefix: Sequence[str]) -> int | None:
    """How many operations a prefix applied, or ``None`` unless every step of it is right."""
    verdict = verify_steps(problem, prefix)
    if verdict.answer is not None or not verdict.all_steps_correct:
        return None
    return sum(1 for label in verdict.labels if label.kind == "operation")


def _repair(problem: Problem, prefix: Sequence[str], keyed: bool) -> tuple[int, TraceStep] | None:
    """A check fixing the prefix's last step, when that is its only (repairable) error."""
    done = _applied(problem, prefix[:-1])
    label = verify_steps(problem, prefix).labels[-1]
    if done is None or done >= len(problem.ops) or label.error_kind not in REPAIRABLE:
        return None
    a, name, operand, result = _values(problem)[done]
    assert label.value is not None
    text = catch_text(done + 1, a, name, operand, result, label.value, keyed=keyed)
    if verify_steps(problem, [*prefix, text]).labels[-1].correct is not True:
        return None
    step = TraceStep(text, "reflection")
    return done + 1, step


def checked_prefix(
    problem: Problem, done: int, rng: random.Random, *, keyed: bool = False
) -> list[str]:
    """A right prefix: ``done`` operations, then re-checks of 2-3 of them in random order.

    The SRM checks earlier results out of order (its last check is often not of its last
    operation), so a model taking over after such a block must answer from the running total,
    not from the value the last check happens to carry.
    """
    values = _values(problem)
    steps = [operation_text(i + 1, *values[i]) for i in range(done)]
    checked = rng.sample(range(done), min(done, rng.randint(2, 3)))
    steps += [confirm_text(i + 1, *values[i], keyed=keyed) for i in checked]
    return steps


def continue_trace(
    problem: Problem,
    prefix: Sequence[str],
    rng: random.Random | None = None,
    *,
    keyed_checks: bool = True,
    reflection_rate: float = 0.7,
    easy_reflection_rate: float = 0.05,
    final_check_rate: float = 0.6,
    final_check_min_ops: int = 4,
) -> list[TraceStep] | None:
    """The reference continuation of ``prefix`` (step texts), or ``None`` if it has none.

    Reflection rules are those of :func:`~langchain_rankguide.demo.task.render_trace`; no
    error is injected. ``None`` when the prefix already answered or has an error other than
    a repairable slip in its last step.
    """
    rng = rng or random.Random(f"rankguide-demo:takeover:{problem.question}:{len(prefix)}")
    steps: list[TraceStep] = []
    done = _applied(problem, prefix) if prefix else 0
    if done is None:
        repair = _repair(problem, prefix, keyed_checks)
        if repair is None:
            return None
        done, fix = repair
        steps.append(fix)
    values = _values(problem)
    if done < len(problem.ops):
        for index in range(done, len(problem.ops)):
            a, name, operand, result = values[index]
            steps.append(
                TraceStep(operation_text(index + 1, a, name, operand, result), "operation")
            )
            rate = reflection_rate if name in HARD_OPERATIONS else easy_reflection_rate
            if rng.random() < rate:
                text = confirm_text(index + 1, *values[index], keyed=keyed_checks)
                steps.append(TraceStep(text, "reflection"))
        n_ops = len(problem.ops)
        if n_ops >= final_check_min_ops and rng.random() < final_check_rate:
            checked = {s.text for s in steps}
            for index in range(max(done, n_ops - min(3, n_ops - 2)), n_ops):
                text = confirm_text(index + 1, *values[index], keyed=keyed_checks)
                if text not in checked:
                    steps.append(TraceStep(text, "reflection"))
    steps.append(TraceStep(answer_text(values[-1][3] if values else problem.start), "answer"))
    full = [*prefix, *(s.text for s in steps)]
    return steps if verify_steps(problem, full).correct else None
