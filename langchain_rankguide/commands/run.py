"""``rankguide run``: solve one question with the SRM and LRM, showing each step as it lands."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from langchain_rankguide.errors import RankGuideError

if TYPE_CHECKING:
    from langchain_rankguide.app import RunResult
    from langchain_rankguide.pipeline import RunOptions

DEMO_QUESTION = (
    "Start at 72, then: (1) subtract 39, (2) add 14, (3) multiply by 2, (4) subtract 25. "
    "What is the result?"
)


def register(subparsers: Any) -> None:
    """Add the ``run`` sub-command."""
    parser = subparsers.add_parser(
        "run",
        help="solve a question with the SRM and LRM collaborating step by step",
        description="Solve QUESTION; with no --config the embedded demo models are used.",
    )
    parser.add_argument(
        "question", nargs="?", default=None, help="the question (default: a demo problem)"
    )
    parser.add_argument("--config", help="YAML configuration (default: the embedded demo)")
    parser.add_argument(
        "--policy",
        help="routing policy (rankguide, rank, entropy, specreason, keyword, random, srm, lrm)",
    )
    parser.add_argument("--threshold", type=float, help="router threshold override")
    parser.add_argument("--seed", type=int, help="run seed (sampling and the random policy)")
    steer = parser.add_mutually_exclusive_group()
    steer.add_argument("--steer", metavar="FILE", help="apply this steering vector to the SRM")
    steer.add_argument("--no-steer", action="store_true", help="switch steering off")
    parser.add_argument(
        "--checkpoint",
        metavar="STORE",
        help=(
            "make the run durable in this SQLite file or PostgreSQL URL (postgresql://...; "
            "better: checkpoint.backend postgres and $RANKGUIDE_POSTGRES_URL, out of ps)"
        ),
    )
    parser.add_argument("--thread-id", help="run id in the checkpoint (resume an interrupted run)")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a live trace"
    )
    parser.set_defaults(handler=run_command)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Configuration overrides: checked like the file's own keys (errors name the key)."""
    overrides: dict[str, Any] = {}
    if args.policy is not None:
        # An empty --policy is checked (and refused) like any other value, never ignored.
        overrides["routing.policy"] = args.policy
    if args.steer:
        overrides["steering.enabled"] = True
        overrides["steering.vector"] = args.steer
    if args.no_steer:
        overrides["steering.enabled"] = False
    return overrides


def _options(args: argparse.Namespace) -> RunOptions:
    """Run options: the flags that change one run, not the configuration."""
    from langchain_rankguide.pipeline import RunOptions

    return RunOptions(threshold=args.threshold, seed=args.seed)


def result_json(result: RunResult | Mapping[str, Any], wall_s: float) -> dict[str, Any]:
    """The documented ``--json`` object from a run's result (or a finished graph state)."""
    from langchain_rankguide.app import RunResult

    if not isinstance(result, RunResult):
        result = RunResult.from_state(result)
    steps = [
        {
            "author": s["author"],
            "text": s["text"],
            "tokens": s["tokens"],
            "signals": s["signals"],
            "escalated": s["escalated"],
            "failure_mode": s["failure_mode"],
            "latency_s": s["latency_s"],
            "decision": s["decision"],
            "reason": s["reason"],
            "fallback": s.get("fallback"),
        }
        for s in result.steps
    ]
    return {
        "answer": result.answer,
        "answer_author": result.answer_author,
        "correct": result.correct,
        "stop_reason": result.stop_reason,
        "steps": steps,
        "usage": result.usage,
        "latency_s": wall_s,
    }


def run_command(args: argparse.Namespace) -> int:
    """Run the collaboration on one question and print the trace or a JSON object."""
    from langchain_rankguide.app import RankGuideApp
    from langchain_rankguide.config import check_environment, load_config

    question = args.question if args.question is not None else DEMO_QUESTION
    if not question.strip():
        raise RankGuideError("the question is empty")
    config = load_config(args.config, overrides=_overrides(args))
    check_environment(config, source=args.config or "<defaults>")
    if args.thread_id is not None and not (args.checkpoint or config.checkpoint.store):
        raise RankGuideError(
            "--thread-id needs a checkpoint to resume from: add --checkpoint FILE "
            "(or set checkpoint.sqlite_path or checkpoint.backend)"
        )
    app = RankGuideApp.from_config(config, checkpoint=args.checkpoint)
    options = _options(args)
    # With --thread-id, an unfinished checkpoint of that run resumes (the question is not
    # asked again); the run stream loads the models before its clock starts.
    if args.json:
        result = app.invoke(question, options, run_id=args.thread_id)
        print(json.dumps(result_json(result, result.wall_s), allow_nan=False))
        return 0
    from langchain_rankguide.commands.render import TraceRenderer

    renderer = TraceRenderer()
    renderer.header(question, config, app.pipeline, options)
    with app.stream(question, options, run_id=args.thread_id) as run:
        if run.prior_steps:
            renderer.resumed(run.run_id, len(run.prior_steps), finished=run.finished_before)
        for event in run:
            if event.withdrawn:
                renderer.withdrawn(event.step)
            else:
                renderer.step(event.step)
    renderer.summary(run.result)
    return 0
