"""Run every policy on the same problems, in one process, through the one run stream.

Each problem is run under every policy (and every sweep point) before the next problem starts,
so slow drift in machine load hits all policies alike and a partial run still compares them on
the same problems. Records are appended to ``results.jsonl`` as they finish; ``resume`` skips
those already there, so a long benchmark can be stopped and continued.

Two policies exist only here: ``oracle`` escalates exactly the steps the task's step verifier
finds wrong (the upper bound of any router; tasks with a step verifier only), and
``rankguide+steer`` is ``rankguide`` with the SRM steered (skipped without a vector). Both are
built by :class:`BenchPipeline`, a :class:`~langchain_rankguide.pipeline.RankGuidePipeline`
whose :meth:`~BenchPipeline.router` knows them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_rankguide.bench.tasks import BenchProblem, Task
from langchain_rankguide.errors import CalibrationError, RankGuideError
from langchain_rankguide.pipeline import RankGuidePipeline, RunOptions, RunSession
from langchain_rankguide.routing import (
    RandomRouter,
    RankRouter,
    RouteDecision,
    Router,
    SpecReasonRouter,
    StepContext,
    failure_rules_from,
)
from langchain_rankguide.schemas import Calibration

if TYPE_CHECKING:
    from langchain_rankguide.app import RunResult

ALL_POLICIES = (
    "srm",
    "lrm",
    "random",
    "entropy",
    "specreason",
    "keyword",
    "rank",
    "rankguide-paper",
    "rankguide",
    "rankguide+steer",
    "oracle",
)
"""Every policy the benchmark knows, in report order."""

ABLATION_VARIANTS = ("benefit", "context", "risk", "takeover")
"""Router-v2 variants ``--ablation`` adds as ``rankguide[NAME]`` (with ``rank``, ``entropy``,
``rankguide-paper`` and ``rankguide`` itself -- the chain's ``rollback`` stage -- they make the
ablation of docs/benchmarks.md)."""

SWEEP_RATES = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7)
"""Target escalation rates of a ``--sweep`` (thresholds from the calibration file)."""

SPECREASON_SWEEP = (4, 6, 8, 9)
"""Acceptance scores swept for ``specreason`` (besides the configured one)."""

ENTROPY = "entropy.first_token"


def sweep_key(policy: str, rate: float) -> str:
    """Key of a policy's threshold at a target rate in ``Calibration.policy_thresholds``."""
    return f"{policy}@{rate:g}"


def rank_signal_of(calibration: Calibration | None, default: str) -> str:
    """The rank signal the ``rankguide`` combination uses (so ``rank`` is its ablation)."""
    if calibration is not None:
        for name in calibration.weights:
            if name.startswith("rank."):
                return name
    return default


class OracleRouter(Router):
    """``oracle``: draft every step, escalate exactly those the task's step verifier rejects.

    It reads the problem bound by :meth:`bind`, so it is an upper bound no deployable router
    reaches; the gap between it and ``srm`` is what routing can win at best.
    """

    name = "oracle"

    def __init__(self, task: Task, failure_rules: Any = None) -> None:
        super().__init__(failure_rules)
        self.task = task
        self.problem: BenchProblem | None = None

    @property
    def signals(self) -> tuple[str, ...]:
        """None: the verifier needs only the text."""
        return ()

    def bind(self, problem: BenchProblem | None) -> None:
        """Set the problem whose steps are judged."""
        self.problem = problem

    def decide(self, ctx: StepContext) -> RouteDecision:
        """Escalate a draft the verifier judges wrong in the context of the committed steps."""
        if self.problem is None:
            raise RankGuideError("the oracle router has no problem bound")
        labels = self.task.step_labels(self.problem, [*ctx.previous_texts, ctx.text])
        wrong = bool(labels) and labels[-1] is False
        return RouteDecision(
            wrong, 1.0 if wrong else 0.0, None, "verifier: wrong" if wrong else "verifier: right"
        )


class BenchPipeline(RankGuidePipeline):
    """The pipeline with the benchmark-only routers (``oracle``, swept ``random``/``specreason``).

    ``threshold`` means the escalation rate for ``random`` and the acceptance score for
    ``specreason`` here, so one sweep mechanism covers every policy. A missing calibration
    file is not an error: policies that need it are skipped with a note.

    Args:
        config: the configuration.
        task: the benchmark task (the oracle's verifier).
        **kwargs: passed to :class:`RankGuidePipeline`.
    """

    def __init__(self, config: Any, task: Task, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.task = task
        self.current_problem: BenchProblem | None = None
        self.calibration_error: str | None = None

    @cached_property
    def calibration(self) -> Calibration | None:
        """The configured calibration, or ``None`` (with :attr:`calibration_error` set)."""
        try:
            return RankGuidePipeline.calibration.func(self)  # type: ignore[attr-defined]
        except CalibrationError as exc:
            self.calibration_error = str(exc)
            return None

    def router(self, options: RunOptions) -> Router:
        """Build the run's router, benchmark-only policies included."""
        routing = self.config.routing
        policy = options.policy or routing.policy
        calibration = self.calibration
        rules = failure_rules_from(calibration, routing.revalidation_streak)
        if policy == "oracle":
            return OracleRouter(self.task, rules)
        if policy == "random" and options.threshold is not None:
            seed = routing.seed if options.seed is None else options.seed
            return RandomRouter(options.threshold, seed, rules)
        if policy == "specreason" and options.threshold is not None:
            return SpecReasonRouter(int(options.threshold), rules)
        if policy == "rank":
            if calibration is not None:
                calibration.check_models(self.srm_identity)
            fitted = calibration.policy_thresholds if calibration is not None else {}
            threshold = options.threshold
            if threshold is None:
                threshold = routing.threshold
            if threshold is None:
                threshold = fitted.get("rank", 1.0)
            signal = rank_signal_of(calibration, routing.rank_signal)
            return RankRouter(signal, threshold, calibration, rules)
        return super().router(options)

    def session(
        self,
        run_id: str,
        messages: list[dict[str, Any]],
        steps: Sequence[Mapping[str, Any]],
        options: RunOptions,
    ) -> RunSession:
        """The run's session; an oracle router is bound to the problem being run."""
        session = super().session(run_id, messages, steps, options)
        if isinstance(session.router, OracleRouter):
            session.router.bind(self.current_problem)
        return session


@dataclass(frozen=True)
class PolicyPoint:
    """One operating point: a policy at one threshold.

    Attributes:
        policy: the benchmark policy name (see :data:`ALL_POLICIES`).
        label: unique name of the point (``entropy``, ``entropy@0.2``).
        threshold: the threshold override (``None`` = the policy's default).
        options: the run's options.
        default: ``True`` for the policy's default operating point (the summary row).
    """

    policy: str
    label: str
    threshold: float | None
    options: RunOptions
    default: bool = True


@dataclass
class BenchSettings:
    """What to run.

    Attributes:
        n: number of problems.
        seed: problem seed.
        policies: policy names, in order.
        sweep: add each thresholded policy's sweep points.
        steering_vector: vector of ``rankguide+steer`` (default: the configuration's).
        ablation: add the calibration's router-v2 variants (:data:`ABLATION_VARIANTS`).
        warmup: untimed runs per policy before timing starts.
        shard: ``(index, count)``: run only problems ``i`` with ``i % count == index`` (to
            split a long benchmark over processes; merge their ``results.jsonl`` files).
        thresholds: extra operating points by value, per policy (``{"rankguide": [-2.2]}``):
            labelled ``rankguide@t=-2.2`` and reported with the sweeps. The value means what
            the policy's threshold means (the escalation rate for ``random``, the acceptance
            score for ``specreason``).
    """

    n: int = 100
    seed: int = 0
    policies: Sequence[str] = ALL_POLICIES
    sweep: bool = False
    steering_vector: str | None = None
    ablation: bool = False
    warmup: int = 1
    shard: tuple[int, int] | None = None
    thresholds: Mapping[str, Sequence[float]] = field(default_factory=dict)


THRESHOLD_POLICIES = ("random", "specreason", "entropy", "rank", "rankguide")
"""Policies ``BenchSettings.thresholds`` (``--thresholds``) can run at other thresholds."""


@dataclass
class Plan:
    """The operating points to run and why others were skipped."""

    points: list[PolicyPoint]
    notes: list[str] = field(default_factory=list)


def parse_policies(text: str | None) -> list[str]:
    """Parse ``a,b,...`` (``None`` or ``all`` = every policy); unknown names are an error."""
    if text is None or text.strip() in ("", "all"):
        return list(ALL_POLICIES)
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in ALL_POLICIES]
    if unknown:
        raise RankGuideError(
            f"unknown polic{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}; "
            f"use some of {', '.join(ALL_POLICIES)}"
        )
    return list(dict.fromkeys(names))


def plan_points(pipeline: BenchPipeline, task: Task, settings: BenchSettings) -> Plan:
    """Turn policy names into operating points, skipping (with a note) what cannot run."""
    calibration = pipeline.calibration
    points: list[PolicyPoint] = []
    notes: list[str] = []
    steer_vector = settings.steering_vector or pipeline.config.steering.vector
    for policy in settings.policies:
        if policy == "oracle" and not task.has_step_verifier:
            notes.append(f"oracle skipped: task {task.name} has no step verifier")
            continue
        if policy in ("rankguide", "rankguide-paper", "rankguide+steer") and calibration is None:
            why = pipeline.calibration_error or "no calibration file configured"
            notes.append(f"{policy} skipped: it needs a calibration ({why})")
            continue
        if (
            policy == "rankguide-paper"
            and calibration is not None
            and ("paper" not in calibration.variants and calibration.rule is not None)
        ):
            notes.append("rankguide-paper skipped: the calibration file has no 'paper' variant")
            continue
        if policy == "rankguide+steer" and not steer_vector:
            notes.append(
                "rankguide+steer skipped: no steering vector (set steering.vector in the "
                "config or pass --steering-vector)"
            )
            continue
        if policy == "rankguide+steer":
            problem = _steering_problem(str(steer_vector))
            if problem is not None:
                notes.append(f"rankguide+steer skipped: {problem}")
                continue
            options = RunOptions(
                policy="rankguide", steering=True, steering_vector=str(steer_vector)
            )
        else:
            options = RunOptions(policy=policy)
        points.append(PolicyPoint(policy, policy, None, options))
        if settings.sweep:
            points.extend(_sweep_points(policy, options, calibration, pipeline, notes))
        points.extend(_threshold_points(policy, options, settings, points, notes))
    if settings.ablation:
        points.extend(_ablation_points(calibration, notes))
    return Plan(points, notes)


def check_thresholds(thresholds: Mapping[str, Sequence[float]], policies: Sequence[str]) -> None:
    """Refuse ``--thresholds`` for a policy that is not run or takes no threshold."""
    for policy in thresholds:
        if policy not in THRESHOLD_POLICIES:
            raise RankGuideError(
                f"--thresholds {policy}=...: {policy} takes no threshold; use one of "
                f"{', '.join(THRESHOLD_POLICIES)}"
            )
        if policy not in policies:
            raise RankGuideError(
                f"--thresholds {policy}=...: {policy} is not among the policies run "
                f"({', '.join(policies)}); add it to --policies"
            )


def _threshold_points(
    policy: str,
    options: RunOptions,
    settings: BenchSettings,
    planned: Sequence[PolicyPoint],
    notes: list[str],
) -> list[PolicyPoint]:
    """The ``--thresholds`` points of one policy, less values a sweep point already runs."""
    swept = {p.threshold for p in planned if p.policy == policy and p.threshold is not None}
    points = []
    for value in dict.fromkeys(settings.thresholds.get(policy, ())):
        if value in swept:
            notes.append(f"{policy} threshold {value!r}: already a sweep point, run once")
            continue
        label = f"{policy}@t={value!r}"
        points.append(PolicyPoint(policy, label, value, replace(options, threshold=value), False))
    return points


def _ablation_points(calibration: Calibration | None, notes: list[str]) -> list[PolicyPoint]:
    """``rankguide[NAME]`` for each router-v2 variant the calibration file holds."""
    have = calibration.variants if calibration is not None else {}
    missing = [name for name in ABLATION_VARIANTS if name not in have]
    if missing:
        notes.append(
            f"ablation variants {missing} skipped: the calibration file has none (fit it with "
            "rankguide calibrate, without --no-replay)"
        )
    return [
        PolicyPoint(
            f"rankguide[{name}]",
            f"rankguide[{name}]",
            None,
            RunOptions(policy="rankguide", variant=name),
        )
        for name in ABLATION_VARIANTS
        if name in have
    ]


def _steering_problem(path: str) -> str | None:
    """Why a steering vector cannot be used (``None`` when it loads)."""
    try:
        from langchain_rankguide.steering import SteeringVector

        SteeringVector.load(path)
    except Exception as exc:  # any failure to load means the policy cannot run
        return f"steering vector {path} does not load: {exc}"
    return None


def _sweep_points(
    policy: str,
    options: RunOptions,
    calibration: Calibration | None,
    pipeline: BenchPipeline,
    notes: list[str],
) -> list[PolicyPoint]:
    points = []
    if policy == "random":
        for rate in SWEEP_RATES:
            if rate != pipeline.config.routing.random_rate:
                points.append(
                    PolicyPoint(
                        policy,
                        sweep_key(policy, rate),
                        rate,
                        replace(options, threshold=rate),
                        False,
                    )
                )
    elif policy == "specreason":
        for accept in SPECREASON_SWEEP:
            if accept != pipeline.config.routing.specreason_accept:
                points.append(
                    PolicyPoint(
                        policy,
                        f"{policy}@accept{accept}",
                        float(accept),
                        replace(options, threshold=float(accept)),
                        False,
                    )
                )
    elif policy in ("entropy", "rank", "rankguide"):
        fitted = calibration.policy_thresholds if calibration is not None else {}
        missing = [r for r in SWEEP_RATES if sweep_key(policy, r) not in fitted]
        if missing:
            notes.append(
                f"{policy} sweep skipped at rates {missing}: the calibration file has no "
                f"thresholds for them (rerun `rankguide calibrate`)"
            )
        # A discrete signal gives the same threshold at several rates: run each value once,
        # and not again where it is the default point's.
        default = calibration.threshold if policy == "rankguide" and calibration else None
        seen = {fitted.get(policy) if default is None else default}
        for rate in SWEEP_RATES:
            key = sweep_key(policy, rate)
            if key in fitted and fitted[key] not in seen:
                value = fitted[key]
                seen.add(value)
                points.append(
                    PolicyPoint(policy, key, value, replace(options, threshold=value), False)
                )
    return points


# --------------------------------------------------------------------------- records


def compact_step(step: dict[str, Any]) -> dict[str, Any]:
    """The part of a step record a benchmark keeps (no token ids, no signal values)."""
    keys = (
        "author",
        "text",
        "tokens",
        "decision",
        "escalated",
        "score",
        "failure_mode",
        "latency_s",
        "draft_latency_s",
        "finish_reason",
        "is_answer",
    )
    return {k: step.get(k) for k in keys}


def make_record(
    point: PolicyPoint,
    problem: BenchProblem,
    task: Task,
    result: RunResult,
    seed: int | None = None,
) -> dict[str, Any]:
    """One ``results.jsonl`` record from a finished run (``seed``: the problems' seed)."""
    steps = result.steps
    texts = [s["text"] for s in steps]
    modes = Counter(s["failure_mode"] for s in steps if s.get("failure_mode"))
    labels = task.step_labels(problem, texts) if task.has_step_verifier else []
    return {
        "policy": point.policy,
        "point": point.label,
        "threshold": point.threshold,
        "default_point": point.default,
        "problem_id": problem.id,
        "seed": seed,
        "question": problem.question,
        "reference": problem.reference,
        "answer": result.answer,
        "answer_author": result.answer_author,
        "correct": bool(task.check(problem, result.answer, texts)),
        "latency_s": result.latency_s,
        "wall_s": result.wall_s,
        "usage": result.usage,
        "n_steps": len(steps),
        "escalations": sum(1 for s in steps if s.get("escalated")),
        "failure_modes": dict(modes),
        "wrong_steps": sum(1 for label in labels if label is False) if labels else None,
        "stop_reason": result.stop_reason,
        "steps": [compact_step(s) for s in steps],
    }


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Read ``results.jsonl`` (a torn last line, from a killed run, is ignored)."""
    file = Path(path)
    if not file.is_file():
        return []
    records = []
    for line in file.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


ProgressFn = Callable[[PolicyPoint, int, int], None]


def run_bench(
    pipeline: BenchPipeline,
    task: Task,
    settings: BenchSettings,
    results_path: str | Path,
    *,
    resume: bool = False,
    progress: ProgressFn | None = None,
    plan: Plan | None = None,
) -> tuple[list[dict[str, Any]], Plan, list[BenchProblem]]:
    """Run every operating point on every problem; append records to ``results_path``.

    Args:
        pipeline: the benchmark pipeline (models load once, shared by every policy).
        task: where problems come from and how runs are judged.
        settings: what to run.
        results_path: the ``results.jsonl`` to append to.
        resume: keep the records already in the file and skip their (point, problem) pairs
            (records of other points or problems stay in the file, outside the returned
            list); otherwise the file is started afresh.
        progress: called after each run with the point, runs done and runs in total.
        plan: the operating points (default: :func:`plan_points`).

    Returns:
        All records (kept and new), the plan and the problems.
    """
    from langchain_rankguide.app import RankGuideApp

    plan = plan or plan_points(pipeline, task, settings)
    problems = task.problems(settings.n, settings.seed)
    if settings.shard is not None:
        index, count = settings.shard
        problems = [p for i, p in enumerate(problems) if i % count == index]
    if not problems:
        raise RankGuideError("the task gave no problems")
    path = Path(results_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = read_records(path) if resume else []
    # Rewriting what was read drops only a torn last line; records of other points or
    # problems stay in the file (a later run may want them) but not in this summary.
    path.write_text("".join(json.dumps(r) + "\n" for r in existing))
    labels = {p.label for p in plan.points}
    ids = {p.id for p in problems}
    kept = [r for r in existing if r.get("point") in labels and r.get("problem_id") in ids]
    done = {(r["point"], r["problem_id"]) for r in kept}
    app = RankGuideApp(pipeline)

    def invoke(point: PolicyPoint, problem: BenchProblem) -> RunResult:
        pipeline.current_problem = problem
        return app.invoke(problem.question, point.options)

    # Load every model and run each policy untimed first, so neither loading nor first-call
    # costs (lazy imports, allocator growth) count as step latency.
    for point in plan.points:
        pipeline.warm_up(point.options)
    warmed: set[str] = set()
    for point in plan.points:
        if point.policy not in warmed:
            warmed.add(point.policy)
            for _ in range(settings.warmup):
                invoke(point, problems[0])
    total = len(problems) * len(plan.points)
    count = len(done)
    records = list(kept)
    with path.open("a") as out:
        for problem in problems:
            for point in plan.points:
                if (point.label, problem.id) in done:
                    continue
                record = make_record(point, problem, task, invoke(point, problem), settings.seed)
                records.append(record)
                out.write(json.dumps(record) + "\n")
                out.flush()
                count += 1
                if progress is not None:
                    progress(point, count, total)
    pipeline.current_problem = None
    return records, plan, problems
