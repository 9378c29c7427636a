"""``rankguide calibrate``: fit the router on the SRM's own steps and write a calibration file."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from langchain_rankguide.errors import RankGuideError


def register(subparsers: Any) -> None:
    """Add the ``calibrate`` sub-command."""
    parser = subparsers.add_parser(
        "calibrate",
        help="measure signal AUROCs on a calibration split and fit the rankguide router",
        description=(
            "Run the SRM alone on demo calibration problems with every signal computed, label "
            "steps with the verifier, report each signal's AUROC (overall and within equal step "
            "lengths), fit the rankguide combination and thresholds, and write the file."
        ),
    )
    parser.add_argument("--config", help="YAML configuration (default: the embedded demo)")
    parser.add_argument("--task", default="demo", help="calibration task (only 'demo' for now)")
    parser.add_argument("--n", type=int, default=200, help="number of calibration problems")
    parser.add_argument("--seed", type=int, default=0, help="problem seed")
    parser.add_argument(
        "--target-rate", type=float, default=0.25, help="target escalation rate per step"
    )
    parser.add_argument(
        "--rank-signal", help="rank signal to combine (default: best within-length AUROC)"
    )
    parser.add_argument("--out", required=True, help="calibration JSON to write")
    parser.add_argument("--report", help="also write the full report as JSON here")
    parser.set_defaults(handler=calibrate_command)


def calibrate_command(args: argparse.Namespace) -> int:
    """Collect labelled steps, fit, write the file and print the AUROC table."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from langchain_rankguide.calibration import collect_demo_steps, fit_calibration
    from langchain_rankguide.config import load_config
    from langchain_rankguide.pipeline import RankGuidePipeline

    if args.task != "demo":
        raise RankGuideError(f"--task {args.task!r} is not supported yet; use 'demo'")
    if args.n < 1 or not 0 < args.target_rate < 1:
        raise RankGuideError("--n must be >= 1 and --target-rate in (0, 1)")
    config = load_config(
        args.config,
        overrides={"signals.diagnostics": True, "routing.calibration": None},
    )
    pipeline = RankGuidePipeline(config)
    console = Console(stderr=True)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("SRM on calibration problems", total=args.n)
        steps = collect_demo_steps(
            pipeline,
            args.n,
            seed=args.seed,
            progress=lambda done, _n: progress.update(task, completed=done),
        )
    report = fit_calibration(
        steps,
        models={"srm": pipeline.srm_identity, "lrm": pipeline.lrm_identity},
        target_rate=args.target_rate,
        rank_signal=args.rank_signal,
        reflection_streak=config.routing.revalidation_streak,
    )
    report.calibration.save(args.out)
    table = Table(
        title=f"AUROC for a failing step ({report.n_steps} steps, "
        f"{report.failing_rate:.1%} failing)"
    )
    for column in ("signal", "n", "AUROC", "AUROC within equal length", "direction"):
        table.add_column(column, justify="right" if column != "signal" else "left")
    for row in sorted(report.signals, key=lambda r: -(r.auroc or 0)):
        table.add_row(
            row.name,
            str(row.n),
            "-" if row.auroc is None else f"{row.auroc:.3f}",
            "-" if row.auroc_within_length is None else f"{row.auroc_within_length:.3f}",
            "+" if row.direction > 0 else "-",
        )
    out = Console()
    out.print(table)
    cal = report.calibration
    out.print(
        f"rankguide: weights {cal.weights}, bias {cal.bias:.3f}, threshold {cal.threshold:.3f} "
        f"(escalates {report.fitted_escalation_rate:.1%} of calibration steps); "
        f"rank signal {report.chosen_rank_signal}; written to {args.out}"
    )
    if args.report:
        Path(args.report).write_text(json.dumps(asdict(report), indent=2, default=str) + "\n")
    return 0
