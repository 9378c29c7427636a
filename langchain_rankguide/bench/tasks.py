r"""Benchmark tasks: the demo arithmetic task and users' problems in JSONL.

A task gives problems (an id, the question, a reference answer) and judges a finished run. A
task with a *step verifier* (the demo) can also judge every step, which the ``oracle`` policy
and verifier-labelled calibration need.

JSONL format (``--task jsonl:PATH``), one JSON object per line::

    {"id": "p1", "question": "What is 2 + 2?", "answer": "4"}
    {"problem": "Compute $\\frac{1}{2}+\\frac{1}{3}$.", "solution": "... $\\boxed{\\frac56}$."}

``question`` (or ``problem``) is required; the reference is ``answer`` (or ``reference``), else
the last ``\boxed{...}`` of ``solution``. ``id`` defaults to the line number. Answers are
compared after MATH-style normalisation (:func:`normalise_answer`): the last ``\boxed{}`` of
the model's answer (else of the whole trace, else the answer text itself), spaces, ``$``,
``\left``/``\right``, ``\dfrac`` and friends, ``\text{}`` wrappers and trailing full stops
removed, and numbers compared by value (``0.5`` = ``1/2`` = ``\frac{1}{2}``).

Example:
    >>> boxed("so the result is \\boxed{\\frac{5}{6}}.")
    '\\frac{5}{6}'
    >>> answers_match("\\dfrac56", "\\frac{5}{6}")
    True
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from langchain_rankguide.errors import RankGuideError


@dataclass(frozen=True)
class BenchProblem:
    """One benchmark problem.

    Attributes:
        id: stable identifier (the same problem has the same id under every policy).
        question: the text given to the models.
        reference: the reference answer, as text.
        payload: task-specific data (the demo's parsed problem).
    """

    id: str
    question: str
    reference: str
    payload: Any = field(default=None, compare=False, repr=False)


class Task(ABC):
    """Where problems come from and how a run is judged."""

    name: str = ""
    has_step_verifier: bool = False

    @abstractmethod
    def problems(self, n: int, seed: int) -> list[BenchProblem]:
        """Return ``n`` problems (fewer if the task has fewer), reproducibly from ``seed``."""

    @abstractmethod
    def check(self, problem: BenchProblem, answer: str | None, step_texts: Sequence[str]) -> bool:
        """Judge a finished run: ``True`` when its answer is the reference answer."""

    def step_labels(self, problem: BenchProblem, step_texts: Sequence[str]) -> list[bool | None]:
        """Per step: ``True`` right, ``False`` wrong, ``None`` not judged (no step verifier)."""
        return [None] * len(step_texts)

    def calibration_problems(self, n: int, seed: int) -> list[BenchProblem]:
        """Problems to calibrate on (disjoint from :meth:`problems` where the task can say)."""
        return self.problems(n, seed)


class DemoTask(Task):
    """The demo arithmetic task: held-out problems, exact answer and step verifiers."""

    name = "demo"
    has_step_verifier = True

    def _wrap(self, problems: Sequence[Any]) -> list[BenchProblem]:
        return [BenchProblem(p.id, p.question, str(p.answer), p) for p in problems]

    def problems(self, n: int, seed: int) -> list[BenchProblem]:
        """``n`` held-out problems (never seen in training or calibration)."""
        from langchain_rankguide.demo.task import make_problems

        return self._wrap(make_problems(n, seed=seed, split="heldout"))

    def calibration_problems(self, n: int, seed: int) -> list[BenchProblem]:
        """``n`` problems of the calibration split."""
        from langchain_rankguide.demo.task import make_problems

        return self._wrap(make_problems(n, seed=seed, split="calibration"))

    def check(self, problem: BenchProblem, answer: str | None, step_texts: Sequence[str]) -> bool:
        """The first integer of the answer equals the problem's result."""
        number = re.search(r"-?\d+", answer or "")
        return number is not None and number.group() == problem.reference

    def step_labels(self, problem: BenchProblem, step_texts: Sequence[str]) -> list[bool | None]:
        """The demo verifier's local judgement of each step."""
        from langchain_rankguide.demo.task import verify_steps

        verdict = verify_steps(problem.payload, list(step_texts))
        return [label.correct for label in verdict.labels]


# --------------------------------------------------------------------------- boxed answers

_BOX_OPENERS = ("\\boxed", "\\fbox")


def boxed(text: str) -> str | None:
    r"""Return the content of the last ``\boxed{...}`` (or ``\fbox{...}``) in ``text``.

    Braces are matched, so nested groups (``\boxed{\frac{1}{2}}``) come back whole; the
    brace-less form ``\boxed 5`` gives ``5``. ``None`` when there is no box.
    """
    start = max(text.rfind(opener) for opener in _BOX_OPENERS)
    if start < 0:
        return None
    i = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return None
    if text[i] != "{":
        match = re.match(r"[^\s$]+", text[i:])
        return match.group() if match else None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


_REMOVE = (
    "\\left",
    "\\right",
    "\\!",
    "\\,",
    "\\;",
    "\\:",
    "\\displaystyle",
    "$",
    "^\\circ",
    "^{\\circ}",
    "\\%",
    "%",
)


def _unwrap_text(s: str) -> str:
    return re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", s)


def _fix_fracs(s: str) -> str:
    # \frac12 and \frac1{2} are MATH shorthand for \frac{1}{2}.
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    return re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)


def normalise_answer(text: str) -> str:
    r"""MATH-style normal form of an answer (see the module docstring)."""
    s = text.strip()
    s = _unwrap_text(s)
    for token in _REMOVE:
        s = s.replace(token, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("\\{", "{").replace("\\}", "}")
    s = re.sub(r"\s+", "", s)
    s = _fix_fracs(s)
    s = s.rstrip(".")
    if re.fullmatch(r"[a-zA-Z]\s*=.*", s):
        s = s.split("=", 1)[1]  # "x=5" -> "5"
    s = re.sub(r"(\d),(\d{3})(?!\d)", r"\1\2", s)  # 1,000 -> 1000
    return s


def _as_number(s: str) -> Fraction | None:
    frac = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}", s)
    try:
        if frac:
            value = Fraction(int(frac.group(2)), int(frac.group(3)))
            return -value if frac.group(1) else value
        if re.fullmatch(r"-?\d+/\d+", s):
            return Fraction(s)
        if re.fullmatch(r"-?(\d+\.?\d*|\.\d+)", s):
            return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def answers_match(answer: str, reference: str) -> bool:
    """Compare two answers after normalisation; numbers compare by value."""
    a, b = normalise_answer(answer), normalise_answer(reference)
    if a == b:
        return bool(a)
    x, y = _as_number(a), _as_number(b)
    return x is not None and y is not None and x == y


def extract_final(answer: str | None, step_texts: Sequence[str]) -> str | None:
    r"""What to judge: the last ``\boxed{}`` of the answer, else of the trace, else the answer."""
    if answer:
        inner = boxed(answer)
        if inner is not None:
            return inner
    inner = boxed("".join(step_texts))
    if inner is not None:
        return inner
    return answer


class JsonlTask(Task):
    """Users' problems from a JSONL file, judged against reference answers (boxed-aware).

    Args:
        path: the JSONL file (format in the module docstring).
    """

    has_step_verifier = False

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = f"jsonl:{self.path}"
        self._items = self._load()

    def _load(self) -> list[BenchProblem]:
        if not self.path.is_file():
            raise RankGuideError(f"task file not found: {self.path}")
        items: list[BenchProblem] = []
        for number, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RankGuideError(f"{self.path}:{number}: not valid JSON: {exc}") from None
            if not isinstance(data, dict):
                raise RankGuideError(f"{self.path}:{number}: expected a JSON object")
            question = data.get("question", data.get("problem"))
            if not isinstance(question, str) or not question.strip():
                raise RankGuideError(f"{self.path}:{number}: needs a 'question' (or 'problem')")
            reference = data.get("answer", data.get("reference"))
            if reference is None and isinstance(data.get("solution"), str):
                reference = boxed(data["solution"])
            if reference is None:
                raise RankGuideError(
                    f"{self.path}:{number}: needs an 'answer' (or 'reference', or a 'solution' "
                    "with a \\boxed{} answer)"
                )
            items.append(BenchProblem(str(data.get("id", number)), question, str(reference)))
        if not items:
            raise RankGuideError(f"task file {self.path} holds no problems")
        return items

    def problems(self, n: int, seed: int) -> list[BenchProblem]:
        """The first ``n`` problems of the file, in file order (``seed`` is not used)."""
        return self._items[:n]

    def check(self, problem: BenchProblem, answer: str | None, step_texts: Sequence[str]) -> bool:
        """Boxed-aware, normalised comparison with the reference."""
        final = extract_final(answer, step_texts)
        return final is not None and answers_match(final, problem.reference)


def load_task(spec: str) -> Task:
    """Build a task from ``demo`` or ``jsonl:PATH``."""
    if spec == "demo":
        return DemoTask()
    if spec.startswith("jsonl:"):
        path = spec[len("jsonl:") :]
        if not path:
            raise RankGuideError("--task jsonl:PATH needs a path")
        return JsonlTask(path)
    raise RankGuideError(f"unknown task {spec!r}; use 'demo' or 'jsonl:PATH'")
