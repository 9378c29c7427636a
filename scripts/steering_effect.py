"""Measure the effect of steering vectors on the SRM alone (policy "srm") on held-out problems.

Conditions are given as ``NAME:MULT`` where NAME is one of ``seal``, ``rank`` (the chosen
vector written to ``--vector``), ``length`` (length-matched control) or ``random`` (random
direction of the same norm), and MULT is the norm of the added vector as a multiple of the SEAL
vector's norm: ``steering_scale = MULT * |seal| / |vector|``. ``none`` is the unsteered run.

Problems are run one at a time, every condition on each problem before the next problem, so all
conditions always cover the same problems; ``--time-limit`` stops cleanly after the problem in
progress and the results so far are written.

Example (the command behind docs/steering.md, "Measured effect"):

    OMP_NUM_THREADS=1 python scripts/steering_effect.py --vector /tmp/steer/rank.safetensors \
        --n 1000 --out /tmp/steer/effect
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_CONDITIONS = "none,seal:0.5,seal:1,rank:0.5,rank:1,rank:-1,length:1,random:1"
FILES = {"rank": "chosen", "seal": "seal", "length": "length_matched", "random": "random"}


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (centre - half, centre + half)


def mean_ci(values: list[float], z: float = 1.96) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return (float("nan"), float("nan"))
    mean = sum(values) / n
    if n < 2:
        return (mean, float("nan"))
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return (mean, z * math.sqrt(var / n))


def parse_conditions(spec: str) -> list[tuple[str, float]]:
    out = []
    for item in spec.split(","):
        item = item.strip()
        if item == "none":
            out.append(("none", 0.0))
            continue
        name, _, mult = item.partition(":")
        if name not in FILES or not mult:
            raise SystemExit(f"bad condition {item!r}: use none or NAME:MULT ({list(FILES)})")
        out.append((name, float(mult)))
    return out


def label(name: str, mult: float) -> str:
    return "none" if name == "none" else f"{name}:{mult:g}"


def summarise(rows: dict[str, list[dict[str, Any]]], meta: dict[str, Any]) -> dict[str, Any]:
    table = {}
    for key, runs in rows.items():
        n = len(runs)
        k = sum(r["correct"] for r in runs)
        lo, hi = wilson(k, n)
        entry: dict[str, Any] = {
            "n": n,
            "accuracy": k / n if n else float("nan"),
            "accuracy_ci95": [lo, hi],
        }
        for metric in ("steps", "reflection", "tokens"):
            mean, half = mean_ci([float(r[metric]) for r in runs])
            entry[metric] = mean
            entry[f"{metric}_ci95_half"] = half
        entry.update(meta["conditions"][key])
        table[key] = entry
    return table


def markdown(table: dict[str, Any]) -> str:
    lines = [
        "| condition | added norm | scale | n | accuracy (95% Wilson) | steps | reflection steps "
        "| decoded tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, e in table.items():
        lo, hi = e["accuracy_ci95"]
        lines.append(
            f"| {key} | {e['added_norm']:.3g} | {e['scale']:.3g} | {e['n']} "
            f"| {e['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] "
            f"| {e['steps']:.2f} ± {e['steps_ci95_half']:.2f} "
            f"| {e['reflection']:.3f} ± {e['reflection_ci95_half']:.3f} "
            f"| {e['tokens']:.1f} ± {e['tokens_ci95_half']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vector", required=True, help="the chosen vector from steer extract")
    parser.add_argument("--model", default="/tmp/rg/models/srm", help="srm.model")
    parser.add_argument("--n", type=int, default=1000, help="held-out problems")
    parser.add_argument("--seed", type=int, default=1, help="held-out problem seed")
    parser.add_argument("--conditions", default=DEFAULT_CONDITIONS)
    parser.add_argument("--time-limit", type=float, default=None, help="seconds; stop early")
    parser.add_argument("--out", required=True, help="output stem: writes STEM.json, STEM.md")
    args = parser.parse_args()

    import torch

    from langchain_rankguide.commands.steer import control_paths
    from langchain_rankguide.config import load_config
    from langchain_rankguide.demo.task import make_problems, verify_steps
    from langchain_rankguide.graph import build_graph
    from langchain_rankguide.steering import SteeringVector

    torch.set_num_threads(1)
    paths = control_paths(Path(args.vector))
    vectors = {name: SteeringVector.load(paths[FILES[name]]) for name in FILES}
    seal_norm = float(vectors["seal"].norm)
    conditions = parse_conditions(args.conditions)
    meta: dict[str, Any] = {
        "model": args.model,
        "vector": args.vector,
        "n_requested": args.n,
        "seed": args.seed,
        "split": "heldout",
        "norms": {name: float(v.norm) for name, v in vectors.items()},
        "layer": vectors["seal"].layer,
        "torch_threads": torch.get_num_threads(),
        "conditions": {},
    }
    for name, mult in conditions:
        if name == "none":
            meta["conditions"]["none"] = {"scale": 0.0, "added_norm": 0.0, "file": None}
            continue
        scale = mult * seal_norm / float(vectors[name].norm)
        meta["conditions"][label(name, mult)] = {
            "scale": scale,
            "added_norm": abs(mult) * seal_norm,
            "file": str(paths[FILES[name]]),
        }

    config = load_config(
        None,
        overrides={"srm.model": args.model, "routing.calibration": None, "routing.policy": "srm"},
    )
    graph = build_graph(config)
    problems = make_problems(args.n, seed=args.seed, split="heldout")
    rows: dict[str, list[dict[str, Any]]] = {key: [] for key in meta["conditions"]}
    start = time.monotonic()
    done = 0
    for i, problem in enumerate(problems):
        for key, cond in meta["conditions"].items():
            configurable: dict[str, Any] = {"policy": "srm"}
            if cond["file"] is not None:
                configurable.update(
                    steering=True, steering_vector=cond["file"], steering_scale=cond["scale"]
                )
            state = graph.invoke({"question": problem.question}, {"configurable": configurable})
            texts = [step["text"] for step in state["steps"]]
            verdict = verify_steps(problem, texts)
            rows[key].append(
                {
                    "problem": i,
                    "correct": bool(state["correct"]),
                    "steps": len(texts),
                    "reflection": sum(lab.kind == "reflection" for lab in verdict.labels),
                    "tokens": int(state["usage"]["srm"]["decode_tokens"]),
                }
            )
        done = i + 1
        elapsed = time.monotonic() - start
        if done % 25 == 0 or done == len(problems):
            acc = " ".join(
                f"{k}={sum(r['correct'] for r in v) / done:.2f}" for k, v in rows.items()
            )
            print(f"[{elapsed:6.0f}s] {done}/{len(problems)} {acc}", file=sys.stderr, flush=True)
        if args.time_limit is not None and elapsed > args.time_limit:
            print(f"time limit reached after {done} problems", file=sys.stderr, flush=True)
            break

    meta["n_done"] = done
    meta["elapsed_s"] = time.monotonic() - start
    table = summarise(rows, meta)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "table": table, "runs": rows}, indent=1)
    )
    out.with_suffix(".md").write_text(markdown(table))
    print(markdown(table))
    print(f"{done} problems x {len(rows)} conditions in {meta['elapsed_s']:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
