"""``rankguide calibrate --reselect FILE``: re-choose a calibration's threshold by running it."""

from __future__ import annotations

import argparse
from typing import Any

from langchain_rankguide.commands.numbers import number_list
from langchain_rankguide.commands.outputs import check_output_file
from langchain_rankguide.errors import RankGuideError


def reselect_command(args: argparse.Namespace) -> int:
    """Run the file's router at each threshold, choose one, write the file and print the runs."""
    from langchain_rankguide.bench.tasks import load_task
    from langchain_rankguide.calibration.reselect import (
        apply_reselection,
        default_thresholds,
        reselect_threshold,
    )
    from langchain_rankguide.commands.calibrate import _pipeline, _progress

    _refuse_fit_flags(args)
    calibration = _load(args.reselect)
    thresholds = _thresholds(args.thresholds) or default_thresholds(calibration)
    n_fit, n_select = _counts(args, calibration)
    check_output_file(args.out, "--out")  # before any model runs
    task = load_task(args.task)
    problems = task.calibration_problems(n_fit + n_select, args.seed)[n_fit:]
    pipeline = _pipeline(args, diagnostics=False)
    with _progress() as tick:
        reselection = reselect_threshold(
            pipeline,
            task,
            problems,
            calibration,
            thresholds,
            target_speedup=args.target_speedup,
            progress=lambda done, total: tick("router at each threshold", done, total),
        )
    _print_runs(reselection, n_fit, n_select)
    apply_reselection(calibration, reselection).save(args.out)
    print(f"written to {args.out}")
    return 0


FIT_FLAGS = {
    "replay_data": "--replay-data",
    "report": "--report",
    "plot": "--plot",
    "no_replay": "--no-replay",
    "combine": "--combine",
    "rank_signal": "--rank-signal",
}
"""Flags of a fit, which ``--reselect`` does not do: refused with it, not ignored."""


def _refuse_fit_flags(args: argparse.Namespace) -> None:
    given = [flag for name, flag in FIT_FLAGS.items() if getattr(args, name, None)]
    if given:
        raise RankGuideError(f"--reselect fits nothing; it takes no {', '.join(given)}")


def _load(name: str) -> Any:
    from langchain_rankguide.pipeline import demo_calibration_path
    from langchain_rankguide.schemas import Calibration

    return Calibration.load(demo_calibration_path() if name == "demo" else name)


def _thresholds(text: str | None) -> list[float]:
    return number_list(text, "--thresholds") if text else []


def _counts(args: argparse.Namespace, calibration: Any) -> tuple[int, int]:
    """Fit and selection problem counts: the flags, else the file's record, else the defaults."""
    record = calibration.replay or {}
    n_fit = args.n if args.n is not None else int(record.get("fit_problems", 200))
    n_select = (
        args.select_n if args.select_n is not None else int(record.get("selection_problems", 150))
    )
    if n_fit < 0 or n_select < 1 or not args.target_speedup > 0:
        raise RankGuideError("--n must be >= 0, --select-n >= 1 and --target-speedup > 0")
    return n_fit, n_select


def _print_runs(reselection: Any, n_fit: int, n_select: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"router at each threshold on calibration problems {n_fit}-{n_fit + n_select - 1} "
        f"(chosen: the most accurate at >= {reselection.target_speedup:g}x)"
    )
    for column in ("rule", "accuracy", "speed-up", "escalated steps", ""):
        table.add_column(column, justify="left" if column == "rule" else "right")
    for point in reselection.points:
        mark = "chosen" if point is reselection.chosen else ""
        if point.threshold == reselection.previous:
            mark = f"{mark} (was)".strip()
        table.add_row(
            point.label,
            f"{point.accuracy:.1%}",
            f"{point.speedup:.2f}x",
            f"{point.escalation_rate:.1%}",
            mark,
        )
    Console().print(table)
