"""Replay data: what escalating each SRM step would have bought, measured by running it.

For every calibration problem the SRM runs alone (every signal computed), then, for every step
boundary ``k`` of its trace, the same graph runs again with the LRM taking over from step ``k``
(the SRM writes steps ``< k`` -- greedy, so exactly its own trace -- and the LRM every step from
``k`` on). Each step therefore carries:

* ``failing``: the task's step verifier (or LRM agreement) rejects the SRM's step;
* ``lrm_step_passes``: the LRM's version of the step, from the same prefix, passes the verifier
  (``None`` without a verifier) -- with ``failing`` this is the *benefit label*: escalating the
  step helps when the SRM's step fails and the LRM's passes;
* ``takeover_correct`` and ``takeover_latency_s``: whether the run the LRM finishes from this
  step reaches the right answer, and what the LRM's steps cost.

A *takeover* policy (the SRM writes until a step is flagged; the flagged draft is discarded and
the LRM writes that step and every later one) is then replayed exactly for any score and
threshold (:func:`replay_takeover`): its accuracy and latency on these problems follow from the
first flagged step alone. Cost: one SRM run plus one partial LRM run per step, about (steps / 2)
LRM runs per problem.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from langchain_rankguide.pipeline import RankGuidePipeline, RunOptions
from langchain_rankguide.routing import RouteDecision, Router, StepContext
from langchain_rankguide.schemas import Calibration

if TYPE_CHECKING:
    from langchain_rankguide.app import RunResult
    from langchain_rankguide.tasks import BenchProblem, Task


class TakeoverFromRouter(Router):
    """Escalates, before drafting, every step from ``start`` on (a replay schedule)."""

    name = "takeover"

    def __init__(self, start: int) -> None:
        super().__init__()
        self.start = start

    @property
    def signals(self) -> tuple[str, ...]:
        """None: the schedule reads no signal."""
        return ()

    def decide_before(self, ctx: StepContext) -> RouteDecision | None:
        """Escalate from ``start`` on; let the SRM draft before it."""
        if ctx.step_index >= self.start:
            return RouteDecision(True, None, None, f"takeover from step {self.start}")
        return None

    def decide(self, ctx: StepContext) -> RouteDecision:
        """Keep a drafted step (only steps before ``start`` are drafted)."""
        return RouteDecision(False, None, None, "before the takeover")


class ReplayPipeline(RankGuidePipeline):
    """A pipeline for calibration runs.

    Its router is a takeover schedule while :attr:`takeover_from` is set, and its calibration
    is :attr:`calibration_override` while that is set (a candidate not yet written to a file).
    """

    takeover_from: int | None = None
    calibration_override: Calibration | None = None

    @property
    def calibration(self) -> Calibration | None:
        """The candidate calibration, else the configured one."""
        if self.calibration_override is not None:
            return self.calibration_override
        return RankGuidePipeline.calibration.func(self)  # type: ignore[attr-defined]

    def router(self, options: RunOptions) -> Router:
        """The takeover schedule, or the configured router."""
        if self.takeover_from is not None:
            return TakeoverFromRouter(self.takeover_from)
        return super().router(options)


@dataclass
class ReplayStep:
    """One step of the SRM's trace and what escalating it would have bought."""

    index: int
    signals: dict[str, float | None]
    tokens: int
    is_answer: bool
    text: str
    failing: bool
    srm_latency_s: float
    lrm_step_passes: bool | None = None
    takeover_correct: bool = False
    takeover_latency_s: float = 0.0
    lrm_text: str = ""
    benefit: bool = False
    """Escalating the step helps (see :func:`benefit_label`)."""


def benefit_label(step: ReplayStep, srm_correct: bool) -> bool:
    """Whether escalating ``step`` helps.

    With a step verifier: the SRM's step fails and the LRM's step from the same prefix passes.
    Without one (``failing`` then means the LRM would write the step differently): the steps
    disagree and handing the run to the LRM from this step turns a wrong final answer right.
    """
    if step.lrm_step_passes is not None:
        return step.failing and step.lrm_step_passes
    return step.failing and step.takeover_correct and not srm_correct


@dataclass
class ReplayProblem:
    """One calibration problem: the SRM's run and the takeover from each of its steps."""

    problem_id: str
    srm_correct: bool
    steps: list[ReplayStep] = field(default_factory=list)

    @property
    def srm_latency_s(self) -> float:
        """The SRM alone, without routing signals."""
        return sum(s.srm_latency_s for s in self.steps)

    @property
    def lrm_latency_s(self) -> float:
        """The LRM alone (the takeover from step 0)."""
        return self.steps[0].takeover_latency_s if self.steps else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-native dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplayProblem:
        """Rebuild from :meth:`to_dict`."""
        srm_correct = bool(data["srm_correct"])
        steps = [ReplayStep(**s) for s in data.get("steps", [])]
        for step in steps:
            step.benefit = benefit_label(step, srm_correct)
        return cls(data["problem_id"], srm_correct, steps)


def collect_replay(
    pipeline: ReplayPipeline,
    task: Task,
    problems: Sequence[BenchProblem],
    labels: Callable[[Any, list[dict[str, Any]]], list[bool]] | None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> list[ReplayProblem]:
    """Run the SRM alone and every takeover on ``problems``; see the module docstring.

    Args:
        pipeline: a replay pipeline whose configuration computes every signal.
        task: judges answers and (where it can) steps.
        problems: the calibration problems.
        labels: the step labeller (:func:`~langchain_rankguide.calibration.verifier_labels`);
            ``None`` labels a step failing when the LRM's step from the same prefix (the first
            step of the takeover run, so at no extra cost) says something else
            (:func:`~langchain_rankguide.calibration.steps_agree`).
        progress: called with (problems done, problems in total).
    """
    from langchain_rankguide.app import RankGuideApp

    app = RankGuideApp(pipeline)
    replays = []
    for done, problem in enumerate(problems, 1):
        replays.append(_replay_problem(app, pipeline, task, problem, labels))
        if progress is not None:
            progress(done, len(problems))
    return replays


def _replay_problem(
    app: Any,
    pipeline: ReplayPipeline,
    task: Task,
    problem: BenchProblem,
    labels: Callable[[Any, list[dict[str, Any]]], list[bool]] | None,
) -> ReplayProblem:
    pipeline.takeover_from = None
    srm = app.invoke(problem.question, RunOptions(policy="srm"))
    records = srm.steps
    failing = labels(problem, records) if labels is not None else None
    replay = ReplayProblem(problem.id, _correct(task, problem, srm))
    texts = [r["text"] for r in records]
    for k, record in enumerate(records):
        pipeline.takeover_from = k
        try:
            run = app.invoke(problem.question, RunOptions(policy="srm"))
        finally:
            pipeline.takeover_from = None
        step = _replay_step(task, problem, texts, k, record, run, failing)
        step.benefit = benefit_label(step, replay.srm_correct)
        replay.steps.append(step)
    return replay


def _replay_step(
    task: Task,
    problem: BenchProblem,
    texts: list[str],
    k: int,
    record: dict[str, Any],
    run: RunResult,
    failing: list[bool] | None,
) -> ReplayStep:
    """Step ``k`` of the SRM's trace, with what the takeover from it (``run``) bought."""
    from langchain_rankguide.calibration.collect import steps_agree

    lrm_steps = run.steps[k:]
    lrm_text = lrm_steps[0]["text"] if lrm_steps else ""
    verdicts = task.step_labels(problem, [*texts[:k], lrm_text]) if lrm_steps else []
    if failing is None:
        wrong = bool(lrm_steps) and not steps_agree(record["text"], lrm_text)
    else:
        wrong = bool(failing[k]) if k < len(failing) else False
    return ReplayStep(
        index=k,
        signals=dict(record.get("signals") or {}),
        tokens=int(record["tokens"]),
        is_answer=bool(record.get("is_answer")),
        text=record["text"],
        failing=wrong,
        srm_latency_s=_plain_srm_latency(run.steps[:k], record),
        lrm_step_passes=None if not verdicts or verdicts[-1] is None else bool(verdicts[-1]),
        takeover_correct=_correct(task, problem, run),
        takeover_latency_s=sum(float(s["latency_s"]) for s in lrm_steps),
        lrm_text=lrm_text,
    )


def _plain_srm_latency(earlier: list[dict[str, Any]], record: dict[str, Any]) -> float:
    """The step's latency without the diagnostic signals: from a run that computed none.

    The SRM-alone pass computes every signal (slow SVDs); the takeover runs compute none, so
    the SRM's cost per token is read from their SRM steps when there are any.
    """
    tokens = sum(int(s["tokens"]) for s in earlier)
    if tokens:
        per_token = sum(float(s["latency_s"]) for s in earlier) / tokens
        return per_token * int(record["tokens"])
    return float(record["latency_s"])


def _correct(task: Task, problem: BenchProblem, run: RunResult) -> bool:
    return bool(task.check(problem, run.answer, [s["text"] for s in run.steps]))
