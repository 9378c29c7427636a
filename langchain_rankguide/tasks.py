r"""Tasks: where problems come from and how a finished run (and each step) is judged.

The core (graph, pipeline, calibration) knows tasks only through :class:`Task`; the task that
grades runs is named in the configuration (``task: "module:attribute"``, resolved by
:func:`resolve_task`), and the calibration and benchmarks are handed one. The demo's arithmetic
task lives with the demo (:class:`langchain_rankguide.demo.DemoTask`); this module holds the
interface, the JSONL task for users' problems and MATH-style answer normalisation.

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

import importlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from langchain_rankguide.errors import ConfigError, RankGuideError


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

    def judge_answer(self, question: str, answer: str | None) -> bool | None:
        """Judge an answer to a free question: ``None`` when the task does not know the question.

        This is what grades every run (``correct`` in results); the default knows no question.
        """
        return None

    def step_labels(self, problem: BenchProblem, step_texts: Sequence[str]) -> list[bool | None]:
        """Per step: ``True`` right, ``False`` wrong, ``None`` not judged (no step verifier)."""
        return [None] * len(step_texts)

    def revalidation_flags(self, problem: BenchProblem, step_texts: Sequence[str]) -> list[bool]:
        """Per step: ``True`` for heavy revalidation (calibration counts it as failing).

        The default flags nothing; a task whose verifier knows reflection steps says which
        steps re-check the trace more than they advance it.
        """
        return [False] * len(step_texts)

    def calibration_problems(self, n: int, seed: int) -> list[BenchProblem]:
        """Problems to calibrate on (disjoint from :meth:`problems` where the task can say)."""
        return self.problems(n, seed)


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
        self._by_question: dict[str, BenchProblem] = {}
        for item in self._items:
            self._by_question.setdefault(item.question, item)

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

    def judge_answer(self, question: str, answer: str | None) -> bool | None:
        """Judge an answer to one of the file's questions; ``None`` for any other question."""
        problem = self._by_question.get(question)
        return None if problem is None else self.check(problem, answer, ())


TASK_SPEC_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
"""Shape of a task reference: ``package.module:attribute`` (the attribute may be dotted)."""


def resolve_task(spec: str | None, *, field: str = "task") -> Task | None:
    """Resolve a task reference (``"module:attribute"``) to a task; ``None`` stays ``None``.

    The attribute may be a :class:`Task` instance, a :class:`Task` subclass or a factory, both
    called without arguments.

    Args:
        spec: e.g. ``"langchain_rankguide.demo:DemoTask"``, or ``None`` for no task.
        field: the configuration field named in error messages.

    Returns:
        The task, or ``None``.

    Raises:
        ConfigError: the reference is malformed, cannot be imported, or names no task.
    """
    if spec is None:
        return None
    if not TASK_SPEC_RE.match(spec):
        raise ConfigError(
            f"{field}: must be 'module:attribute' (e.g. 'langchain_rankguide.demo:DemoTask'), "
            f"got {spec!r}"
        )
    module_name, attribute = spec.split(":", 1)
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{field}: cannot import module {module_name!r}: {exc}") from None
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ConfigError(f"{field}: {module_name!r} has no attribute {attribute!r}")
        found = getattr(found, part)
    if isinstance(found, Task):
        return found
    if not callable(found):
        raise ConfigError(f"{field}: {spec!r} is not a Task, a Task class or a factory")
    try:
        task = found()
    except TypeError as exc:
        raise ConfigError(f"{field}: {spec!r} cannot be built without arguments: {exc}") from None
    if not isinstance(task, Task):
        raise ConfigError(f"{field}: {spec!r} gave a {type(task).__name__}, not a Task")
    return task
