"""``rankguide steer``: extract steering vectors for the SRM and inspect vector files.

Sub-commands:
    ``rankguide steer extract [--config PATH] [--n N] [--layer L] [--rank-signal NAME]
    [--k VALUE | --k-percentile P] --out FILE``: run the SRM on training problems, write the
    chosen vector to FILE and the controls next to it (``<stem>-seal``, ``<stem>-length``,
    ``<stem>-random``, same suffix).
    ``rankguide steer show FILE``: print a vector file's metadata as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_N = 200


def register(subparsers: Any) -> None:
    """Add the ``steer`` command and its sub-commands to the top-level CLI.

    Args:
        subparsers: the object returned by ``ArgumentParser.add_subparsers``.
    """
    parser = subparsers.add_parser(
        "steer",
        help="extract and inspect steering vectors",
        description="Extract SEAL / rank-filtered steering vectors for the SRM; inspect files.",
    )
    parser.set_defaults(handler=lambda _args: _print_help(parser))
    sub = parser.add_subparsers(dest="steer_command", metavar="ACTION")

    extract = sub.add_parser(
        "extract",
        help="extract a steering vector from SRM traces",
        description=(
            "Run the SRM greedily on training problems, label its thoughts (reflection / "
            "transition / execution), and write mean(execution) - mean(reflection + "
            "transition) at the delimiter opening each thought. With --k or --k-percentile "
            "the rank-filtered vector is the one written to --out; the SEAL vector, a "
            "length-matched control and a random control of the same norm are written next "
            "to it."
        ),
    )
    extract.add_argument("--config", metavar="PATH", help="configuration file (default: demo)")
    extract.add_argument("--model", metavar="SPEC", help="override srm.model")
    extract.add_argument(
        "--task", choices=["demo"], default="demo", help="training problems (default: demo)"
    )
    extract.add_argument(
        "--n", type=int, default=DEFAULT_N, help=f"problems to run (default: {DEFAULT_N})"
    )
    extract.add_argument(
        "--split", default="train", help="split of the demo task to draw from (default: train)"
    )
    extract.add_argument("--seed", type=int, default=0, help="problem and random-control seed")
    extract.add_argument(
        "--layer",
        type=int,
        help="steering layer (residual stream entering block L); default: the first of "
        "srm.signal_layers, else the middle block",
    )
    extract.add_argument(
        "--rank-signal",
        default=None,
        metavar="NAME",
        help="rank signal of each thought (default: rank.effective)",
    )
    extract.add_argument(
        "--rank-layer", type=int, help="layer of the rank signal (default: the steering layer)"
    )
    threshold = extract.add_mutually_exclusive_group()
    threshold.add_argument("--k", type=float, metavar="VALUE", help="absolute rank threshold")
    threshold.add_argument(
        "--k-percentile",
        type=float,
        metavar="P",
        help="threshold at the P-th percentile of all thoughts' rank values",
    )
    extract.add_argument(
        "--keep",
        choices=["above", "below"],
        default="above",
        help="keep thoughts with rank >= k (above, default) or <= k (below)",
    )
    extract.add_argument(
        "--correct-only", action="store_true", help="drop thoughts the verifier judged wrong"
    )
    extract.add_argument(
        "--include-first",
        action="store_true",
        help="also use each trace's first thought (opened by the prompt, not a delimiter)",
    )
    extract.add_argument(
        "--max-steps", type=int, default=None, help="steps per problem (default: steps.max_steps)"
    )
    extract.add_argument(
        "--out", required=True, metavar="FILE", help="vector file to write (.safetensors)"
    )
    extract.add_argument("--quiet", action="store_true", help="no progress on standard error")
    extract.set_defaults(handler=_extract)

    show = sub.add_parser(
        "show",
        help="print a vector file's metadata",
        description="Print the metadata of a steering vector file as JSON.",
    )
    show.add_argument("path", metavar="FILE", help="the .safetensors vector file")
    show.set_defaults(handler=_show)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def control_paths(out: Path) -> dict[str, Path]:
    """Return where each vector of one extraction is written, by method."""
    suffix = out.suffix or ".safetensors"
    stem = out.stem if out.suffix else out.name

    def sibling(tag: str) -> Path:
        return out.with_name(f"{stem}-{tag}{suffix}")

    return {
        "chosen": out if out.suffix else out.with_suffix(suffix),
        "seal": sibling("seal"),
        "length_matched": sibling("length"),
        "random": sibling("random"),
    }


def _extract(args: argparse.Namespace) -> int:
    from langchain_rankguide.commands.outputs import check_output_dir
    from langchain_rankguide.config import load_config
    from langchain_rankguide.demo.task import make_problems, verify_steps
    from langchain_rankguide.lrm import render_prompt
    from langchain_rankguide.pipeline import RankGuidePipeline
    from langchain_rankguide.steering import (
        DEFAULT_RANK_SIGNAL,
        RankFilter,
        SteeringError,
        build_vectors,
        collect_thoughts,
    )

    if args.n < 1:
        raise SteeringError("--n must be >= 1")
    out = Path(args.out).expanduser()
    if out.is_dir():  # checked before the SRM runs, not when the vectors are saved
        raise SteeringError(f"--out {out} is a directory; pass a file name")
    check_output_dir(out.parent, "--out")
    overrides = {"srm.model": args.model} if args.model else None
    config = load_config(args.config, overrides=overrides)
    pipeline = RankGuidePipeline(config)
    loaded = pipeline.srm
    layers = config.srm.signal_layers
    layer = args.layer if args.layer is not None else (layers[0] if layers else None)
    if layer is None:
        layer = loaded.num_layers // 2
    if not 0 <= layer <= loaded.num_layers:
        raise SteeringError(
            f"--layer {layer} is out of range: the SRM has {loaded.num_layers} decoder blocks "
            f"(layers 0..{loaded.num_layers})"
        )
    rank_signal = args.rank_signal or DEFAULT_RANK_SIGNAL
    rank_filter = None
    if args.k is not None or args.k_percentile is not None:
        rank_filter = RankFilter(
            signal=rank_signal, k=args.k, percentile=args.k_percentile, keep=args.keep
        )
    template_kwargs = dict(config.prompt.chat_template_kwargs)

    def prompt_for(problem: Any) -> str:
        # The same prompt the pipeline gives the SRM in a run.
        messages = pipeline.messages(problem.question)
        return (
            render_prompt(loaded.tokenizer, messages, **template_kwargs)
            + config.prompt.assistant_prefix
        )

    def progress(done: int, total: int) -> None:
        if not args.quiet and (done == total or done % 10 == 0):
            print(f"steer extract: {done}/{total} problems", file=sys.stderr)

    problems = make_problems(args.n, seed=args.seed, split=args.split)
    records = collect_thoughts(
        loaded,
        problems,
        layer=layer,
        prompt_for=prompt_for,
        rank_signal=rank_signal,
        rank_layer=args.rank_layer,
        settings=pipeline.step_settings,
        signal_settings=pipeline.signal_settings,
        max_steps=args.max_steps or config.steps.max_steps,
        window=config.signals.window,
        cross_step_window=config.signals.cross_step_window,
        answer_markers=tuple(config.steps.answer_markers),
        verify=verify_steps,
        include_first=args.include_first,
        progress=progress,
    )
    result = build_vectors(
        records,
        layer=layer,
        rank_filter=rank_filter,
        rules=pipeline.signal_settings.reflection,
        correct_only=args.correct_only,
        model_identity=loaded.identity,
        num_layers=loaded.num_layers,
        seed=args.seed,
        extra={
            "task": args.task,
            "split": args.split,
            "problems": args.n,
            "problem_seed": args.seed,
            "delimiter": config.steps.delimiter,
            "rank_layer": args.rank_layer if args.rank_layer is not None else layer,
            "include_first": args.include_first,
        },
    )
    paths = control_paths(Path(args.out))
    written = {"chosen": result.chosen.save(paths["chosen"])}
    if result.rank_filtered is not None:
        written["seal"] = result.seal.save(paths["seal"])
    if result.length_matched is not None:
        written["length_matched"] = result.length_matched.save(paths["length_matched"])
    written["random"] = result.random.save(paths["random"])
    summary = result.summary()
    summary["layer"] = layer
    summary["chosen"] = result.chosen.method
    summary["files"] = {name: str(path) for name, path in written.items()}
    print(json.dumps(summary, indent=2))
    return 0


def _show(args: argparse.Namespace) -> int:
    from langchain_rankguide.steering import SteeringVector

    vector = SteeringVector.load(args.path)
    print(json.dumps(vector.metadata(), indent=2))
    return 0
