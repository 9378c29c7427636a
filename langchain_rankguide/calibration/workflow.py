"""The whole calibration of router v2, as ``rankguide calibrate`` runs it.

1. Replay data on the fit problems (:func:`~langchain_rankguide.calibration.replay.collect_replay`),
   kept in a JSONL file so a stopped calibration resumes and a refit reruns no model;
2. the signal report and the paper's combination (:func:`fit_calibration`) from the SRM's steps;
3. the ablation chain, each variant's rule chosen on the selection problems
   (:func:`~langchain_rankguide.calibration.select.select_router`);
4. the calibration file: the chain's ``rollback`` stage as the main ``rankguide`` router, every
   variant by name, and the record of what was chosen from.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_rankguide.calibration.fit import (
    SWEEP_RATES,
    CalibrationReport,
    fit_calibration,
    quantile_threshold,
)
from langchain_rankguide.calibration.measure import LabelledStep
from langchain_rankguide.calibration.replay import ReplayPipeline, ReplayProblem, collect_replay
from langchain_rankguide.calibration.router_fit import feature_row
from langchain_rankguide.calibration.select import MAIN_VARIANT, Selection, select_router

if TYPE_CHECKING:
    from langchain_rankguide.tasks import BenchProblem, Task

Progress = Callable[[str, int, int], None]


def load_replays(path: str | Path | None) -> dict[str, ReplayProblem]:
    """Replay records kept by an earlier calibration, by problem id (none without a file)."""
    if path is None or not Path(path).exists():
        return {}
    replays = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            problem = ReplayProblem.from_dict(json.loads(line))
            replays[problem.problem_id] = problem
    return replays


def replay_problems(
    pipeline: ReplayPipeline,
    task: Task,
    problems: Sequence[BenchProblem],
    labels: Any,
    *,
    keep: str | Path | None = None,
    progress: Progress | None = None,
) -> list[ReplayProblem]:
    """Replay data for ``problems``: records in ``keep`` are reused, new ones appended to it."""
    known = load_replays(keep)
    out = []
    for done, problem in enumerate(problems, 1):
        replay = known.get(problem.id)
        if replay is None:
            replay = collect_replay(pipeline, task, [problem], labels)[0]
            if keep is not None:
                with Path(keep).open("a") as file:
                    file.write(json.dumps(replay.to_dict()) + "\n")
        out.append(replay)
        if progress is not None:
            progress("replay", done, len(problems))
    return out


def labelled_steps(replays: Sequence[ReplayProblem]) -> list[LabelledStep]:
    """The SRM's steps of the replay data, labelled failing or not."""
    return [
        LabelledStep(step.signals, step.failing, step.tokens, step.index)
        for problem in replays
        for step in problem.steps
    ]


def calibrate_router(
    replays: Sequence[ReplayProblem],
    run_pipeline: ReplayPipeline,
    task: Task,
    selection: Sequence[BenchProblem],
    *,
    models: dict[str, str],
    target_speedup: float,
    target_rate: float,
    rank_signal: str | None,
    reflection_streak: int,
    progress: Progress | None = None,
) -> tuple[CalibrationReport, Selection]:
    """Fit the paper's combination and choose the v2 chain; return the report and the choice.

    ``run_pipeline`` runs the candidates: its configuration should compute only what routing
    needs (no diagnostics), so the measured latencies are those of real runs.
    """
    report = fit_calibration(
        labelled_steps(replays),
        models=models,
        target_rate=target_rate,
        rank_signal=rank_signal,
        reflection_streak=reflection_streak,
    )
    base = report.calibration
    chosen = select_router(
        run_pipeline,
        task,
        replays,
        selection,
        base,
        report.chosen_rank_signal,
        target_speedup=target_speedup,
        target_rate=target_rate,
        progress=progress,
    )
    _install(base, chosen, replays)
    return report, chosen


def _install(base: Any, chosen: Selection, replays: Sequence[ReplayProblem]) -> None:
    """Make the chain's main stage the file's router; keep every variant and the record."""
    variants = chosen.variants()
    main = variants[MAIN_VARIANT]
    base.variants = variants
    base.weights, base.bias, base.threshold, base.rule = (
        main.weights,
        main.bias,
        main.threshold,
        main.rule,
    )
    base.replay = chosen.record()
    names = list(main.weights)
    scores = [
        main.bias
        + sum(
            w * z
            for w, z in zip(main.weights.values(), feature_row(s, names, base.signals), strict=True)
        )
        for problem in replays
        for s in problem.steps
    ]
    for rate in SWEEP_RATES:
        base.policy_thresholds[f"rankguide@{rate:g}"] = quantile_threshold(scores, rate)
    base.notes += f"; router v2: variant {MAIN_VARIANT}, target speed-up {chosen.target_speedup}x"
