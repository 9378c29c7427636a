"""``rankguide calibrate``: fit the router on the SRM's own steps and write a calibration file."""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--n", type=int, default=200, help="number of calibration problems")
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
    parser.add_argument("--out", required=True, help="calibration JSON to write")
    parser.add_argument("--report", help="also write the full report as JSON here")
    parser.add_argument(
        "--plot", help="draw the signals' distributions on good and failing steps (PNG) here"
    )
    parser.set_defaults(handler=calibrate_command)


def calibrate_command(args: argparse.Namespace) -> int:
    """Collect labelled steps, fit, write the file and print the AUROC table."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from langchain_rankguide.bench.tasks import load_task
    from langchain_rankguide.calibration import (
        collect_steps,
        fit_calibration,
        lrm_agreement_labels,
        plot_distributions,
        verifier_labels,
    )
    from langchain_rankguide.config import load_config
    from langchain_rankguide.pipeline import RankGuidePipeline

    if args.n < 1 or not 0 < args.target_rate < 1:
        raise RankGuideError("--n must be >= 1 and --target-rate in (0, 1)")
    # Before any model runs: a path found unwritable afterwards loses the whole calibration.
    check_output_file(args.out, "--out")
    for flag, path in (("--report", args.report), ("--plot", args.plot)):
        if path:
            check_output_file(path, flag)
    from langchain_rankguide.schemas import SIGNALS

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
    config = load_config(
        args.config,
        overrides={"signals.diagnostics": True, "routing.calibration": None},
    )
    pipeline = RankGuidePipeline(config)
    problems = task.calibration_problems(args.n, args.seed)
    labeller = verifier_labels(task) if labels == "verifier" else lrm_agreement_labels(pipeline)
    console = Console(stderr=True)
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task(
            f"SRM on calibration problems ({labels} labels)", total=len(problems)
        )
        steps = collect_steps(
            pipeline,
            problems,
            labeller,
            progress=lambda done, _n: progress.update(bar, completed=done),
        )
    report = fit_calibration(
        steps,
        models={"srm": pipeline.srm_identity, "lrm": pipeline.lrm_identity},
        target_rate=args.target_rate,
        rank_signal=args.rank_signal,
        reflection_streak=config.routing.revalidation_streak,
        extra_signals=extra,
    )
    report.labels = labels
    report.calibration.notes += f"; labels: {labels}; task: {task.name}"
    report.calibration.save(args.out)
    table = Table(
        title=f"AUROC for a failing step ({report.n_steps} steps, "
        f"{report.failing_rate:.1%} failing, {labels} labels)"
    )
    columns = ("signal", "n", "AUROC", "within equal length", "within equal position", "dir")
    for column in columns:
        table.add_column(column, justify="right" if column != "signal" else "left")

    def show(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    for row in sorted(report.signals, key=lambda r: -(r.auroc or 0)):
        table.add_row(
            row.name,
            str(row.n),
            show(row.auroc),
            show(row.auroc_within_length),
            show(row.auroc_within_position),
            "+" if row.direction > 0 else "-",
        )
    out = Console()
    out.print(table)
    cal = report.calibration
    aurocs = ", ".join(
        f"{name} {'-' if value is None else f'{value:.3f}'}"
        for name, value in report.policy_aurocs.items()
    )
    out.print(
        f"rankguide: weights {cal.weights}, bias {cal.bias:.3f}, threshold {cal.threshold:.3f} "
        f"(escalates {report.fitted_escalation_rate:.1%} of calibration steps); "
        f"rank signal {report.chosen_rank_signal}; written to {args.out}",
        markup=False,
    )
    out.print(f"policy score AUROCs on the calibration steps (in-sample): {aurocs}", markup=False)
    if args.plot:
        if plot_distributions(steps, report.signals, args.plot):
            out.print(f"signal distributions drawn to {args.plot}", markup=False)
        else:
            console.print("[yellow]note:[/] no plot: matplotlib is missing")
    if args.report:
        Path(args.report).write_text(json.dumps(asdict(report), indent=2, default=str) + "\n")
    return 0
