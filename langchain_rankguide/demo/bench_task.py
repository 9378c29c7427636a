"""The demo arithmetic task behind the :class:`~langchain_rankguide.tasks.Task` interface.

The core grades runs and labels calibration steps through this object only (named in the
configuration as ``task: langchain_rankguide.demo:DemoTask``); the parser and verifier it wraps
stay in :mod:`langchain_rankguide.demo.task`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from langchain_rankguide.demo.task import (
    make_problems,
    parse_problem,
    verify_steps,
)
from langchain_rankguide.demo.task import revalidation_flags as heavy_revalidation
from langchain_rankguide.tasks import BenchProblem, Task


class DemoTask(Task):
    """The demo arithmetic task: held-out problems, exact answer and step verifiers."""

    name = "demo"
    has_step_verifier = True

    def _wrap(self, problems: Sequence[Any]) -> list[BenchProblem]:
        return [BenchProblem(p.id, p.question, str(p.answer), p) for p in problems]

    def problems(self, n: int, seed: int) -> list[BenchProblem]:
        """``n`` held-out problems (never seen in training or calibration)."""
        return self._wrap(make_problems(n, seed=seed, split="heldout"))

    def calibration_problems(self, n: int, seed: int) -> list[BenchProblem]:
        """``n`` problems of the calibration split."""
        return self._wrap(make_problems(n, seed=seed, split="calibration"))

    def check(self, problem: BenchProblem, answer: str | None, step_texts: Sequence[str]) -> bool:
        """The first integer of the answer equals the problem's result."""
        number = re.search(r"-?\d+", answer or "")
        return number is not None and number.group() == problem.reference

    def judge_answer(self, question: str, answer: str | None) -> bool | None:
        """Judge the answer to a demo question (parsed from its text); ``None`` for any other."""
        problem = parse_problem(question)
        if problem is None:
            return None
        number = re.search(r"-?\d+", answer or "")
        return number is not None and int(number.group()) == problem.answer

    def step_labels(self, problem: BenchProblem, step_texts: Sequence[str]) -> list[bool | None]:
        """The demo verifier's local judgement of each step."""
        verdict = verify_steps(problem.payload, list(step_texts))
        return [label.correct for label in verdict.labels]

    def revalidation_flags(self, problem: BenchProblem, step_texts: Sequence[str]) -> list[bool]:
        """Steps in a streak of 3+ reflections, or repeating an earlier step verbatim."""
        verdict = verify_steps(problem.payload, list(step_texts))
        return heavy_revalidation(verdict.labels)
