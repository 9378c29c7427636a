"""``rankguide calibrate``: fit the router on the SRM's own steps and write a calibration file."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from langchain_rankguide.commands.outputs import check_output_file
from langchain_rankguide.errors import RankGuideError


def register(subparsers: Any) -> None:
    """Add the ``calibrate`` sub-command."""
    parser = subparsers.add_parser(
        "calibrate",
        help="measure signal AUROCs on a calibration split and fit the rankguide router",
        description=(
            "Run the SRM alone on calibration problems with every signal computed, label steps "
            "with the task's verifier (or by agreement with the LRM where there is none), "
            "report each signal's AUROC (overall and within equal step lengths), fit the "
            "rankguide combination and thresholds, write the file and plot the signals."
        ),
    )
    parser.add_argument("--config", help="YAML configuration (default: the embedded demo)")
    parser.add_argument(
        "--task",
        default="demo",
        help="'demo' (its calibration split) or 'jsonl:PATH' (your problems; LRM-agreement labels)",
    )
    parser.add_argument(
        "--labels",
        choices=("auto", "verifier", "lrm"),
        default="auto",
        help="step labels: the task's step verifier, agreement with the LRM, or auto "
        "(the verifier where the task has one)",
    )
    parser.add_argument(
        "--n",
        type=int,
        help="number of calibration problems to fit on (default 200; with --reselect, the "
        "file's own count, so the same selection problems follow them)",
    )
    parser.add_argument("--seed", type=int, default=0, help="problem seed")
    parser.add_argument(
        "--target-rate", type=float, default=0.25, help="target escalation rate per step"
    )
    parser.add_argument(
        "--rank-signal", help="rank signal to combine (default: best within-length AUROC)"
    )
    parser.add_argument(
        "--combine",
        default="",
        metavar="NAME[,NAME]",
        help="more signals for the rankguide combination, e.g. entropy.mean "
        "(default: the rank signal and first-token entropy only)",
    )
    parser.add_argument(
        "--no-replay",
        action="store_true",
        help="fit only the paper's combination (rank + first-token entropy) from the SRM's own "
        "steps: fast, no LRM runs; the file's rankguide router is then that combination",
    )
    parser.add_argument(
        "--select-n",
        type=int,
        help="calibration problems (after the --n fit problems) the candidate routers run on "
        "(default 150; with --reselect, the file's own count)",
    )
    parser.add_argument(
        "--target-speedup",
        type=float,
        default=2.0,
        help="speed-up over the LRM alone the chosen router must reach (default 2.0)",
    )
    parser.add_argument(
        "--replay-data",
        metavar="FILE.jsonl",
        help="keep the replay data here; records already in it are reused (resume, refit)",
    )
    parser.add_argument(
        "--reselect",
        metavar="FILE",
        help="fit nothing: run FILE's router ('demo' for the shipped one) at --thresholds on the "
        "selection problems beside the LRM and write FILE, with the most accurate threshold that "
        "reaches --target-speedup, to --out (after a model of the pair changed; "
        "docs/benchmarks.md)",
    )
    parser.add_argument(
        "--thresholds",
        metavar="T[,T...]",
        help="--reselect: step thresholds to run, written --thresholds=-2.3,-2.6 (default: FILE's "
        "threshold and its sweep's)",
    )
    parser.add_argument("--out", required=True, help="calibration JSON to write")
    parser.add_argument("--report", help="also write the full report as JSON here")
    parser.add_argument(
        "--plot", help="draw the signals' distributions on good and failing steps (PNG) here"
    )
    parser.set_defaults(handler=calibrate_command)


def calibrate_command(args: argparse.Namespace) -> int:
    """Collect labelled steps, fit, write the file and print what was measured."""
    from langchain_rankguide.bench.tasks import load_task
    from langchain_rankguide.schemas import SIGNALS

    if args.reselect:
        from langchain_rankguide.commands.reselect import reselect_command

        return reselect_command(args)
    if args.thresholds:
        raise RankGuideError("--thresholds goes with --reselect FILE")
    args.n = 200 if args.n is None else args.n
    args.select_n = 150 if args.select_n is None else args.select_n
    _check_args(args)
    extra = [n.strip() for n in args.combine.split(",") if n.strip()]
    unknown = [n for n in extra if n not in SIGNALS]
    if unknown:  # before any model runs
        raise RankGuideError(f"--combine: unknown signals {unknown} (see docs/signals.md)")
    task = load_task(args.task)
    labels = args.labels
    if labels == "auto":
        labels = "verifier" if task.has_step_verifier else "lrm"
    if labels == "verifier" and not task.has_step_verifier:
        raise RankGuideError(f"task {task.name} has no step verifier; use --labels lrm")
    if args.no_replay:
        report, steps = _fit_paper(args, task, labels, extra)
        selection = None
    else:
        report, steps, selection = _fit_v2(args, task, labels)
    report.labels = labels
    report.calibration.notes += f"; labels: {labels}; task: {task.name}"
    report.calibration.save(args.out)
    _print_report(args, report, labels, selection)
    if args.plot:
        _plot(args.plot, steps, report)
    if args.report:
        data = asdict(report)
        if selection is not None:
            data["router_v2"] = selection.record()
        Path(args.report).write_text(json.dumps(data, indent=2, default=str) + "\n")
    return 0


def _check_args(args: argparse.Namespace) -> None:
    """Refuse bad numbers and unwritable outputs before any model runs."""
    if args.n < 1 or not 0 < args.target_rate < 1:
        raise RankGuideError("--n must be >= 1 and --target-rate in (0, 1)")
    if args.select_n < 1 or not args.target_speedup > 0:
        raise RankGuideError("--select-n must be >= 1 and --target-speedup > 0")
    # Before any model runs: a path found unwritable afterwards loses the whole calibration.
    check_output_file(args.out, "--out")
    for flag, path in (
        ("--report", args.report),
        ("--plot", args.plot),
        ("--replay-data", args.replay_data),
    ):
        if path:
            check_output_file(path, flag)


def _pipeline(args: argparse.Namespace, *, diagnostics: bool) -> Any:
    from langchain_rankguide.calibration.replay import ReplayPipeline
    from langchain_rankguide.config import load_config

    overrides = {"signals.diagnostics": diagnostics, "routing.calibration": None}
    return ReplayPipeline(load_config(args.config, overrides=overrides))


def _fit_paper(args: argparse.Namespace, task: Any, labels: str, extra: list[str]) -> Any:
    """The SRM alone on the fit problems; the paper's combination (``--no-replay``)."""
    from langchain_rankguide.calibration import (
        collect_steps,
        fit_calibration,
        lrm_agreement_labels,
        verifier_labels,
    )

    pipeline = _pipeline(args, diagnostics=True)
    problems = task.calibration_problems(args.n, args.seed)
    labeller = verifier_labels(task) if labels == "verifier" else lrm_agreement_labels(pipeline)
    with _progress() as tick:
        steps = collect_steps(
            pipeline, problems, labeller, progress=lambda d, n: tick("SRM alone", d, n)
        )
    report = fit_calibration(
        steps,
        models={"srm": pipeline.srm_identity, "lrm": pipeline.lrm_identity},
        target_rate=args.target_rate,
        rank_signal=args.rank_signal,
        reflection_streak=pipeline.config.routing.revalidation_streak,
        extra_signals=extra,
    )
    return report, steps


def _fit_v2(args: argparse.Namespace, task: Any, labels: str) -> Any:
    """Replay data, the paper's combination and the v2 chain chosen by runs."""
    from langchain_rankguide.calibration import verifier_labels
    from langchain_rankguide.calibration.workflow import (
        calibrate_router,
        labelled_steps,
        replay_problems,
    )

    collect = _pipeline(args, diagnostics=True)
    run = _pipeline(args, diagnostics=False)
    problems = task.calibration_problems(args.n + args.select_n, args.seed)
    fit, select = problems[: args.n], problems[args.n :]
    labeller = verifier_labels(task) if labels == "verifier" else None
    with _progress() as tick:
        replays = replay_problems(
            collect, task, fit, labeller, keep=args.replay_data, progress=tick
        )
        report, selection = calibrate_router(
            replays,
            run,
            task,
            select,
            models={"srm": collect.srm_identity, "lrm": collect.lrm_identity},
            target_speedup=args.target_speedup,
            target_rate=args.target_rate,
            rank_signal=args.rank_signal,
            reflection_streak=collect.config.routing.revalidation_streak,
            progress=tick,
        )
    return report, labelled_steps(replays), selection


@contextmanager
def _progress() -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar per stage on stderr: ``tick(stage, done, total)``."""
    from rich.console import Console
    from rich.progress import Progress

    bars: dict[str, Any] = {}
    with Progress(console=Console(stderr=True), transient=True) as progress:

        def tick(stage: str, done: int, total: int) -> None:
            if stage not in bars:
                bars[stage] = progress.add_task(stage, total=total)
            progress.update(bars[stage], completed=done)

        yield tick


def _print_report(
    args: argparse.Namespace, report: Any, labels: str, selection: Any | None
) -> None:
    from rich.console import Console

    out = Console()
    out.print(_signal_table(report, labels))
    cal = report.calibration
    paper = cal.variants.get("paper") if cal.variants else None
    weights = paper.weights if paper is not None else cal.weights
    aurocs = ", ".join(
        f"{name} {'-' if value is None else f'{value:.3f}'}"
        for name, value in report.policy_aurocs.items()
    )
    out.print(
        f"paper combination: weights {weights}; rank signal {report.chosen_rank_signal}",
        markup=False,
    )
    out.print(f"policy score AUROCs on the calibration steps (in-sample): {aurocs}", markup=False)
    if selection is not None:
        out.print(_chain_table(selection))
    out.print(f"written to {args.out}", markup=False)


def _signal_table(report: Any, labels: str) -> Any:
    from rich.table import Table

    table = Table(
        title=f"AUROC for a failing step ({report.n_steps} steps, "
        f"{report.failing_rate:.1%} failing, {labels} labels)"
    )
    columns = ("signal", "n", "AUROC", "within equal length", "within equal position", "dir")
    for column in columns:
        table.add_column(column, justify="right" if column != "signal" else "left")
    for row in sorted(report.signals, key=lambda r: -(r.auroc or 0)):
        table.add_row(
            row.name,
            str(row.n),
            _show(row.auroc),
            _show(row.auroc_within_length),
            _show(row.auroc_within_position),
            "+" if row.direction > 0 else "-",
        )
    return table


def _chain_table(selection: Any) -> Any:
    from rich.table import Table

    table = Table(
        title=f"router v2 chain (chosen at >= {selection.target_speedup:g}x on "
        f"{selection.n_select} selection problems; fitted on {selection.n_fit})"
    )
    for column in ("variant", "CV AUROC", "rule", "accuracy", "speed-up", "escalation", "how"):
        table.add_column(column, justify="left" if column in ("variant", "rule") else "right")
    for stage in selection.stages:
        point = stage.chosen
        rule = point.label.split(": ", 1)[-1] if point is not None else "target rate"
        how = "-" if point is None else ("run" if point.measured else "replayed")
        table.add_row(
            stage.name,
            _show(stage.cv_auroc),
            rule,
            "-" if point is None else f"{point.accuracy:.1%}",
            "-" if point is None else f"{point.speedup:.2f}x",
            "-" if point is None else f"{point.escalation_rate:.1%}",
            how,
        )
    return table


def _show(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _plot(path: str, steps: Any, report: Any) -> None:
    from rich.console import Console

    from langchain_rankguide.calibration import plot_distributions

    if plot_distributions(steps, report.signals, path):
        Console().print(f"signal distributions drawn to {path}", markup=False)
    else:
        Console(stderr=True).print("[yellow]note:[/] no plot: matplotlib is missing")
