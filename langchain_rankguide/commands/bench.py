"""``rankguide bench``: every policy on the same problems, side by side; ``--perf``: the engine."""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path
from typing import Any

from langchain_rankguide.commands.numbers import number_list
from langchain_rankguide.commands.outputs import check_output_dir
from langchain_rankguide.errors import RankGuideError


def register(subparsers: Any) -> None:
    """Add the ``bench`` sub-command."""
    parser = subparsers.add_parser(
        "bench",
        help="benchmark the routing policies (accuracy, latency, escalation) or the engine",
        description=(
            "Run every policy on the same problems, one after another in one process, and "
            "write DIR/results.jsonl, DIR/summary.json, DIR/report.md and DIR/pareto.png. "
            "With --perf, measure the framework's overhead against the raw model instead."
        ),
    )
    parser.add_argument("--config", help="YAML configuration (default: the embedded demo)")
    parser.add_argument(
        "--task", default="demo", help="'demo' (held-out problems) or 'jsonl:PATH' (your own)"
    )
    parser.add_argument("--n", type=int, help="number of problems (default 100; 5 with --perf)")
    parser.add_argument("--seed", type=int, default=0, help="problem seed")
    parser.add_argument(
        "--policies",
        help="comma-separated policies (default all): srm, lrm, random, entropy, specreason, "
        "keyword, rank, rankguide-paper, rankguide, rankguide+steer, oracle",
    )
    parser.add_argument(
        "--sweep", action="store_true", help="also run each thresholded policy over its sweep"
    )
    parser.add_argument(
        "--thresholds",
        action="append",
        metavar="POLICY=T[,T...]",
        help="also run POLICY at these thresholds (points POLICY@t=T, reported with the "
        "sweeps); repeatable, e.g. --thresholds rankguide=-2.2,-2.5",
    )
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="also run the calibration's router-v2 variants as rankguide[NAME] (the ablation)",
    )
    parser.add_argument("--out", default="bench-out", help="output directory (default bench-out)")
    parser.add_argument(
        "--steering-vector", metavar="FILE", help="steering vector for rankguide+steer"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the records already in DIR/results.jsonl and run only what is missing",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild summary.json, report.md and pareto.png from DIR/results.jsonl",
    )
    parser.add_argument(
        "--shard",
        metavar="I/N",
        help="run only every N-th problem from the I-th (0-based), to split a long benchmark "
        "over processes; concatenate their results.jsonl and use --report-only",
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed runs per policy before timing (default 1)"
    )
    parser.add_argument(
        "--perf", action="store_true", help="measure engine overhead instead (writes DIR/perf.*)"
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), help="run the models on this device (default: config)"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="--perf: timed repeats per measurement (median)"
    )
    parser.set_defaults(handler=bench_command)


def _load(args: argparse.Namespace, **extra: Any) -> Any:
    from langchain_rankguide.config import load_config

    overrides: dict[str, Any] = dict(extra)
    if args.device:
        overrides["srm.device"] = args.device
        # A remote LRM runs where its server runs; only a local one moves.
        if load_config(args.config, overrides=overrides).lrm.provider == "hf_local":
            overrides["lrm.device"] = args.device
    return load_config(args.config, overrides=overrides)


def bench_command(args: argparse.Namespace) -> int:
    """Run the benchmark (or ``--perf``) and write its outputs."""
    if args.n is None:
        args.n = 5 if args.perf else 100
    if args.n < 1:
        raise RankGuideError("--n must be >= 1")
    check_output_dir(args.out, "--out")  # before any problem runs, not when writing the results
    if args.perf:
        return _perf(args)
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from langchain_rankguide.bench.report import machine_info, summarise, write_outputs
    from langchain_rankguide.bench.runner import (
        BenchPipeline,
        BenchSettings,
        check_thresholds,
        parse_policies,
        plan_points,
        read_records,
        run_bench,
    )
    from langchain_rankguide.bench.tasks import load_task

    shard = None
    if args.shard:
        try:
            index, count = (int(x) for x in args.shard.split("/"))
        except ValueError:
            raise RankGuideError(f"--shard must look like I/N, got {args.shard!r}") from None
        if not 0 <= index < count:
            raise RankGuideError(f"--shard {args.shard}: need 0 <= I < N")
        shard = (index, count)
    policies = parse_policies(args.policies)
    thresholds = parse_thresholds(args.thresholds or [])
    check_thresholds(thresholds, policies)
    task = load_task(args.task)
    config = _load(args)
    pipeline = BenchPipeline(config, task)
    settings = BenchSettings(
        n=args.n,
        seed=args.seed,
        policies=policies,
        sweep=args.sweep,
        thresholds=thresholds,
        steering_vector=args.steering_vector,
        ablation=args.ablation,
        warmup=max(0, args.warmup),
        shard=shard,
    )
    out = Path(args.out)
    results = out / "results.jsonl"
    console = Console(stderr=True)
    plan = plan_points(pipeline, task, settings)
    for note in plan.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    machine_file = out / "machine.json"
    if args.report_only:
        records = read_records(results)
        if not records:
            raise RankGuideError(f"no records in {results}")
        # The machine that ran the records, not the one rebuilding the report.
        machine = json.loads(machine_file.read_text()) if machine_file.is_file() else None
    else:
        if not plan.points:
            raise RankGuideError("no policy can run (see the notes above)")
        started = time.perf_counter()
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task("loading models, warming up", total=None)

            def tick(point: Any, done: int, total: int) -> None:
                progress.update(bar, completed=done, total=total, description=point.label)

            records, plan, _ = run_bench(
                pipeline, task, settings, results, resume=args.resume, progress=tick, plan=plan
            )
        console.print(f"ran {len(records)} records in {time.perf_counter() - started:.0f} s")
        machine = machine_info(pipeline, args.device)
        machine_file.write_text(json.dumps(machine, indent=2) + "\n")
    meta = {
        "task": task.name,
        "n_problems": len({r["problem_id"] for r in records}),
        "seed": _seed_of(records, args.seed),
        "command": _command_line(args),
        "calibration": getattr(pipeline.calibration, "notes", None),
    }
    if machine is None:
        machine = {**machine_info(pipeline, args.device), "note": "measured when reporting"}
    summary = summarise(records, machine=machine, notes=plan.notes, meta=meta)
    paths = write_outputs(summary, out)
    _print_table(summary)
    if "pareto" not in paths:
        console.print(
            "[yellow]note:[/] pareto.png not drawn: matplotlib is missing "
            + escape("(pip install 'langchain-rankguide[bench]')")
        )
    console.print(escape("wrote " + ", ".join(str(p) for p in [results, *paths.values()])))
    return 0


def parse_thresholds(specs: list[str]) -> dict[str, list[float]]:
    """``["rankguide=-2.2,-2.5", ...]`` as ``{"rankguide": [-2.2, -2.5]}`` (clear errors)."""
    parsed: dict[str, list[float]] = {}
    for spec in specs:
        policy, sep, values = spec.partition("=")
        if not sep or not policy.strip() or not values.strip():
            raise RankGuideError(f"--thresholds must look like POLICY=T[,T...], got {spec!r}")
        numbers = number_list(values, f"--thresholds {policy.strip()}=")
        parsed.setdefault(policy.strip(), []).extend(numbers)
    return parsed


def _seed_of(records: list[dict[str, Any]], default: int) -> int | str:
    """The problems' seed as the records give it (a merged report's may differ from --seed)."""
    seeds = sorted({r["seed"] for r in records if r.get("seed") is not None})
    if not seeds:
        return default  # records written before the seed was recorded
    return seeds[0] if len(seeds) == 1 else ", ".join(map(str, seeds))


def _command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this benchmark (options as given, defaults spelt out)."""
    parts = ["rankguide", "bench"]
    if args.config:
        parts += ["--config", args.config]
    parts += ["--task", args.task, "--n", str(args.n), "--seed", str(args.seed)]
    if args.policies:
        parts += ["--policies", args.policies]
    if args.sweep:
        parts.append("--sweep")
    for spec in getattr(args, "thresholds", None) or []:
        parts += ["--thresholds", spec]
    if getattr(args, "ablation", False):
        parts.append("--ablation")
    if args.steering_vector:
        parts += ["--steering-vector", args.steering_vector]
    if args.device:
        parts += ["--device", args.device]
    if args.shard:
        parts += ["--shard", args.shard]
    parts += ["--out", args.out]
    return shlex.join(parts)


def _print_table(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary.get('task')}: {summary.get('n_problems')} problems")
    for column in ("policy", "accuracy", "95% CI", "mean s", "median s", "vs lrm", "escalated"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    speed = summary.get("speedup_vs_lrm", {})
    for policy, s in summary["policies"].items():
        lo, hi = s["accuracy_ci95"]
        table.add_row(
            policy,
            f"{100 * s['accuracy']:.1f}%",
            f"[{100 * lo:.1f}, {100 * hi:.1f}]",
            f"{s['latency_s_mean']:.3f}",
            f"{s['latency_s_median']:.3f}",
            f"{speed[policy]:.2f}x" if policy in speed else "-",
            f"{100 * s['escalation_rate']:.1f}%",
        )
    Console().print(table)


def _perf(args: argparse.Namespace) -> int:
    from rich.console import Console

    from langchain_rankguide.bench.perf import PerfSettings, perf_markdown, run_perf, write_perf

    config = _load(args)
    console = Console(stderr=True)
    settings = PerfSettings(repeats=max(1, args.repeats), seed=args.seed, n_problems=args.n)
    with console.status("measuring the engine against the raw model") as status:
        result = run_perf(config, settings, log=lambda msg: status.update(msg))
    paths = write_perf(result, Path(args.out))
    Console().print(perf_markdown(result), markup=False)
    console.print("wrote " + ", ".join(str(p) for p in paths), markup=False)
    return 0
