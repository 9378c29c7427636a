"""``rankguide demo train`` and ``rankguide demo eval``: build and measure the embedded models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``demo`` sub-command with its ``train`` and ``eval`` actions."""
    parser = subparsers.add_parser(
        "demo",
        help="train or evaluate the embedded demo SRM and LRM",
        description="The embedded demo: a synthetic arithmetic task and a small/large model pair.",
    )
    actions = parser.add_subparsers(dest="demo_command", metavar="ACTION")
    parser.set_defaults(handler=lambda _args: _usage(parser))

    train = actions.add_parser(
        "train",
        help="train the demo models (seeded; about an hour on one CPU thread)",
        description=(
            "Train the demo SRM and/or LRM in two stages and write Hugging Face folders "
            "OUT/srm and OUT/lrm (default: the package's shipped models)."
        ),
    )
    train.add_argument("--out", type=Path, help="output folder (default: the package's models)")
    train.add_argument(
        "--which", choices=("srm", "lrm", "both"), default="both", help="which model to train"
    )
    train.add_argument("--seed", type=int, default=0, help="seed of weights and data")
    train.add_argument(
        "--quick", action="store_true", help="tiny models and a few steps: a smoke test"
    )
    train.add_argument(
        "--resume-from",
        type=Path,
        metavar="DIR",
        help="continue from the models in DIR/srm and DIR/lrm, skipping the stages their "
        "training.json records",
    )
    train.set_defaults(handler=train_command)

    evaluate = actions.add_parser(
        "eval",
        help="measure accuracy, speed and SRM failure modes on held-out problems",
        description=(
            "Run both models greedily through the step engine on held-out problems and print "
            "accuracy (95% Wilson interval), ms per decoded token and the SRM's failure modes."
        ),
    )
    evaluate.add_argument("--n", type=int, default=1000, help="held-out problems (default 1000)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the held-out set")
    evaluate.add_argument("--srm", default="demo:srm", help="SRM model spec or folder")
    evaluate.add_argument("--lrm", default="demo:lrm", help="LRM model spec or folder")
    evaluate.add_argument(
        "--max-trace-tokens",
        type=int,
        default=800,
        help="decoded-token budget of one trace (default 800)",
    )
    evaluate.add_argument(
        "--skills-n",
        type=int,
        default=300,
        help="problems for the takeover and wording figures, 2/3 as many tool dialogues "
        "(default 300; 0 skips them)",
    )
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON")
    evaluate.set_defaults(handler=eval_command)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def train_command(args: argparse.Namespace) -> int:
    """Handle ``rankguide demo train``."""
    from langchain_rankguide.demo.train import train_demo

    train_demo(
        args.out,
        which=args.which,
        seed=args.seed,
        quick=args.quick,
        resume_from=args.resume_from,
    )
    return 0


def eval_command(args: argparse.Namespace) -> int:
    """Handle ``rankguide demo eval``."""
    from langchain_rankguide.demo.evaluate import evaluate, format_report
    from langchain_rankguide.errors import ConfigError

    if args.n < 1:
        raise ConfigError("--n must be at least 1")
    if args.max_trace_tokens < 1:
        raise ConfigError("--max-trace-tokens must be at least 1")
    if args.skills_n < 0:
        raise ConfigError("--skills-n must be at least 0")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    report = evaluate(
        n=args.n,
        seed=args.seed,
        srm=args.srm,
        lrm=args.lrm,
        max_trace_tokens=args.max_trace_tokens,
        log=log,
        skills_n=args.skills_n,
    )
    if args.json:
        print(report.to_json())
    else:
        print(format_report(report))
    return 0
