"""How often a committed SRM step is wrong, by what came just before it, in a benchmark run.

Reads ``results.jsonl`` of ``rankguide bench`` on the demo task, re-labels every trace with the
demo verifier and, over the routed policies' committed SRM steps, prints the wrong-step rate
after a keyed reflection check, after an unkeyed one, and after any other step. The command
behind the "Where the SRM keeps failing" paragraph of docs/benchmarks.md:

    python scripts/steps_after_checks.py merged/results.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict

from langchain_rankguide.demo.task import parse_problem, verify_steps

ROUTED = ("rankguide", "rank", "entropy", "random", "oracle")


def context_of(previous: dict) -> str:
    text = previous["text"]
    if text.startswith("Wait, check ("):
        return f"after a keyed check (by {previous['author']})"
    if text.startswith("Wait, check"):
        return f"after an unkeyed check (by {previous['author']})"
    return "after any other step"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="results.jsonl of a demo benchmark")
    args = parser.parse_args()
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    kinds: dict[str, Counter[str]] = defaultdict(Counter)
    with open(args.results, encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if record["point"] not in ROUTED:
                continue
            problem = parse_problem(record["question"])
            steps = record["steps"]
            labels = verify_steps(problem, [s["text"] for s in steps]).labels
            for index in range(1, len(steps)):
                if steps[index]["author"] != "srm":
                    continue
                context = context_of(steps[index - 1])
                wrong = labels[index].correct is False
                counts[context][0] += wrong
                counts[context][1] += 1
                if wrong:
                    kinds[context][labels[index].error_kind or "?"] += 1
    for context, (wrong, total) in sorted(counts.items()):
        common = ", ".join(f"{k} {n}" for k, n in kinds[context].most_common(3))
        print(f"{context:40s} {total:6d} SRM steps, {wrong / total:6.1%} wrong ({common})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
