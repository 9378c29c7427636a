"""Summaries of a benchmark: ``summary.json``, ``report.md`` and ``pareto.png``.

Everything is computed from the ``results.jsonl`` records alone, so a report can be rebuilt
from a finished (or partial) run. Accuracy intervals are Wilson intervals; comparisons between
policies are paired bootstraps over the problems both ran; comparisons "at equal escalation
rate" read the other policy's sweep curve at the escalation rate the first one measured.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from langchain_rankguide.bench.stats import (
    curve_at_rate,
    paired_bootstrap,
    paired_difference,
    paired_ratio,
    pareto_front,
    wilson_interval,
)
from langchain_rankguide.schemas import merge_usage, usage_by_role

SUBJECTS = ("rankguide", "rankguide+steer", "rank")
"""Policies compared with the others at their own escalation rate."""

BASELINES = ("entropy", "random", "rank", "specreason")
"""Policies whose sweep curves are read at a subject's escalation rate."""


def _clean(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def jsonable(obj: Any) -> Any:
    """Copy ``obj`` with NaN and infinities replaced by ``None`` (strict JSON has neither)."""
    if isinstance(obj, float):
        return _clean(obj)
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def machine_info(pipeline: Any = None, device: str | None = None) -> dict[str, Any]:
    """Describe the machine and software a benchmark ran on."""
    import torch

    try:
        import transformers

        tf_version = transformers.__version__
    except ImportError:  # pragma: no cover - a dependency
        tf_version = None
    cpu = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gb": memory_gb,
        "torch": torch.__version__,
        "transformers": tf_version,
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    if pipeline is not None:
        cfg = pipeline.config
        for role in ("srm", "lrm"):
            try:
                identity = getattr(pipeline, f"{role}_identity")
            except Exception as exc:  # a model that is missing still leaves the rest worth saying
                identity = f"unavailable: {exc}"
            section = getattr(cfg, role)
            if getattr(section, "provider", "hf_local") == "hf_local":
                info[role] = {"model": identity, "dtype": section.dtype}
            else:  # a remote LRM: its dtype is the server's business
                info[role] = {"model": identity, "provider": section.provider}
        info["device"] = device or cfg.srm.device
    elif device:
        info["device"] = device
    return info


# --------------------------------------------------------------------------- per point


def point_stats(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy, latency, escalation and usage of one operating point."""
    n = len(records)
    correct = sum(1 for r in records if r["correct"])
    latencies = [float(r["latency_s"]) for r in records]
    steps = sum(int(r["n_steps"]) for r in records)
    escalations = sum(int(r["escalations"]) for r in records)
    usage = usage_by_role(None)
    for r in records:
        usage = merge_usage(usage, r["usage"])
    modes: Counter[str] = Counter()
    for r in records:
        modes.update(r.get("failure_modes") or {})
    wrong = [r["wrong_steps"] for r in records if r.get("wrong_steps") is not None]
    lo, hi = wilson_interval(correct, n)
    return {
        "n": n,
        "accuracy": correct / n if n else None,
        "accuracy_ci95": [lo, hi],
        "latency_s_mean": statistics.fmean(latencies) if latencies else None,
        "latency_s_median": statistics.median(latencies) if latencies else None,
        "wall_s_mean": statistics.fmean(float(r["wall_s"]) for r in records) if n else None,
        "escalation_rate": escalations / steps if steps else 0.0,
        "steps_mean": steps / n if n else None,
        "usage": usage,
        "failure_modes": dict(modes),
        "wrong_steps_mean": statistics.fmean(wrong) if wrong else None,
        "answer_author": dict(Counter(str(r.get("answer_author")) for r in records)),
        "stop_reasons": dict(Counter(str(r.get("stop_reason")) for r in records)),
    }


def _by_point(records: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        grouped.setdefault(str(r["point"]), []).append(r)
    return grouped


class _Aligned:
    """Per-problem arrays of some points, over the problems all of them ran (in run order).

    Each comparison aligns only the points it involves, so a long run of the default points
    can be merged with a shorter sweep: ``lrm`` against ``srm`` pairs every problem both ran,
    a sweep comparison the problems the sweep covered.
    """

    def __init__(
        self, grouped: Mapping[str, Sequence[Mapping[str, Any]]], labels: Sequence[str]
    ) -> None:
        common: set[str] | None = None
        for label in labels:
            ids = {str(r["problem_id"]) for r in grouped[label]}
            common = ids if common is None else common & ids
        first = grouped[labels[0]] if labels else []
        self.ids = [str(r["problem_id"]) for r in first if str(r["problem_id"]) in (common or ())]
        self.n = len(self.ids)
        self.arrays: dict[str, dict[str, np.ndarray]] = {}
        for label in labels:
            by_id = {str(r["problem_id"]): r for r in grouped[label]}
            rows = [by_id[i] for i in self.ids]
            self.arrays[label] = {
                "correct": np.array([float(r["correct"]) for r in rows]),
                "latency": np.array([float(r["latency_s"]) for r in rows]),
                "escalated": np.array([float(r["escalations"]) for r in rows]),
                "steps": np.array([float(r["n_steps"]) for r in rows]),
            }

    def __getitem__(self, label: str) -> dict[str, np.ndarray]:
        return self.arrays[label]


def summarise(
    records: Sequence[Mapping[str, Any]],
    *,
    machine: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
    meta: Mapping[str, Any] | None = None,
    resamples: int = 2000,
) -> dict[str, Any]:
    """Build ``summary.json`` from benchmark records.

    Args:
        records: ``results.jsonl`` records.
        machine: :func:`machine_info` output.
        notes: lines worth keeping (skipped policies, partial runs).
        meta: extra top-level fields (task, command, seed).
        resamples: bootstrap draws of the paired comparisons.

    Returns:
        The summary (JSON-native).
    """
    grouped = _by_point(records)
    policy_of = {label: str(recs[0]["policy"]) for label, recs in grouped.items()}
    defaults = {
        str(recs[0]["policy"]): label
        for label, recs in grouped.items()
        if recs[0].get("default_point", True)
    }
    policies = {policy: point_stats(grouped[label]) for policy, label in defaults.items()}
    lrm_mean = policies.get("lrm", {}).get("latency_s_mean")
    speedup = {
        policy: (lrm_mean / stats["latency_s_mean"])
        for policy, stats in policies.items()
        if lrm_mean and stats["latency_s_mean"]
    }
    sweep: dict[str, list[dict[str, Any]]] = {}
    for label, recs in grouped.items():
        entry = {"point": label, "threshold": recs[0].get("threshold"), **point_stats(recs)}
        entry.pop("failure_modes")
        entry.pop("answer_author")
        entry.pop("stop_reasons")
        sweep.setdefault(policy_of[label], []).append(entry)
    for entries in sweep.values():
        entries.sort(key=lambda e: (e["escalation_rate"], e["latency_s_mean"] or 0.0))
    comparisons = _comparisons(defaults, grouped, policy_of, resamples)
    paired = _Aligned(grouped, list(defaults.values())).n
    summary: dict[str, Any] = {
        **dict(meta or {}),
        "targets": targets(policies, speedup, comparisons),
        "policies": policies,
        "speedup_vs_lrm": speedup,
        "sweep": {p: e for p, e in sweep.items() if len(e) > 1},
        "comparisons": comparisons,
        "paired_problems": paired,
        "notes": list(notes),
        "machine": dict(machine or {}),
    }
    return summary


def targets(
    policies: Mapping[str, Any], speedup: Mapping[str, float], comparisons: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Where ``rankguide`` stands against the issue's targets (``met`` is ``None`` if unmeasured).

    * at least 2x lower mean latency than ``lrm``;
    * accuracy within 2 points of ``lrm`` (the paired 95% interval's lower end at or above -2
      points);
    * at equal escalation rate, more accurate than ``entropy`` and ``random`` (estimate > 0;
      ``significant`` when the interval excludes zero);
    * at least 90% of the oracle's accuracy gain over ``srm``.
    """
    rows: list[dict[str, Any]] = []
    subject = "rankguide"
    value = speedup.get(subject)
    paired = comparisons.get("vs_lrm", {}).get(subject, {}).get("speedup")
    rows.append(
        {
            "target": "rankguide >= 2x lower mean latency than lrm",
            "value": value,
            "ci95": paired["ci95"] if paired else None,
            "met": None if value is None else value >= 2.0,
        }
    )
    diff = comparisons.get("vs_lrm", {}).get(subject, {}).get("accuracy_diff")
    low = diff["ci95"][0] if diff else None
    rows.append(
        {
            "target": "rankguide accuracy within 2 points of lrm (paired 95% CI above -2 points)",
            "value": diff["estimate"] if diff else None,
            "ci95": diff["ci95"] if diff else None,
            "met": None if low is None else low >= -0.02,
        }
    )
    for other in ("entropy", "random"):
        c = comparisons.get("equal_escalation_rate", {}).get(f"{subject}_vs_{other}")
        d = c["accuracy_diff"] if c else None
        est = d["estimate"] if d else None
        rows.append(
            {
                "target": f"rankguide more accurate than {other} at equal escalation rate",
                "value": est,
                "ci95": d["ci95"] if d else None,
                "met": None if est is None else est > 0,
                "significant": None if not d or d["ci95"][0] is None else d["ci95"][0] > 0,
            }
        )
    gain = comparisons.get("oracle_gain_fraction", {}).get(subject)
    est = gain["estimate"] if gain else None
    rows.append(
        {
            "target": "rankguide >= 90% of the oracle's accuracy gain over srm",
            "value": est,
            "ci95": gain["ci95"] if gain else None,
            "met": None if est is None else est >= 0.9,
        }
    )
    return rows


def _comparisons(
    defaults: Mapping[str, str],
    grouped: Mapping[str, Sequence[Mapping[str, Any]]],
    policy_of: Mapping[str, str],
    resamples: int,
) -> dict[str, Any]:
    out: dict[str, Any] = {"vs_lrm": {}, "equal_escalation_rate": {}, "oracle_gain_fraction": {}}
    lrm = defaults.get("lrm")
    if lrm is not None:
        for policy, label in defaults.items():
            if policy == "lrm":
                continue
            pair = _Aligned(grouped, [label, lrm])
            if pair.n == 0:
                continue
            arr, base = pair[label], pair[lrm]
            out["vs_lrm"][policy] = {
                "accuracy_diff": paired_difference(
                    arr["correct"], base["correct"], resamples=resamples
                ).to_dict(),
                "speedup": paired_ratio(
                    base["latency"], arr["latency"], resamples=resamples
                ).to_dict(),
            }
    curves: dict[str, list[str]] = {}
    for label, policy in policy_of.items():
        curves.setdefault(policy, []).append(label)
    for subject in SUBJECTS:
        subject_label = defaults.get(subject)
        if subject_label is None:
            continue
        for other in BASELINES:
            labels = curves.get(other, [])
            if other == subject or len(labels) < 2:
                continue
            group = _Aligned(grouped, [subject_label, *labels])
            if group.n == 0:
                continue
            arr = group[subject_label]
            rate = float(arr["escalated"].sum() / max(1.0, arr["steps"].sum()))
            c = [group[x]["correct"] for x in labels]
            e = [group[x]["escalated"] for x in labels]
            s = [group[x]["steps"] for x in labels]

            def stat(idx: np.ndarray, arr: dict[str, np.ndarray] = arr, c=c, e=e, s=s) -> float:
                total = arr["steps"][idx].sum()
                at = float(arr["escalated"][idx].sum() / total) if total else 0.0
                return float(arr["correct"][idx].mean()) - curve_at_rate(c, e, s, at, idx)

            result = paired_bootstrap(stat, group.n, resamples=resamples)
            other_acc = curve_at_rate(c, e, s, rate, np.arange(group.n))
            out["equal_escalation_rate"][f"{subject}_vs_{other}"] = {
                "escalation_rate": rate,
                "subject_accuracy": float(arr["correct"].mean()),
                "other_accuracy_interpolated": _clean(other_acc),
                "n": group.n,
                "accuracy_diff": result.to_dict(),
            }
    srm, oracle = defaults.get("srm"), defaults.get("oracle")
    if srm is not None and oracle is not None:
        for policy, label in defaults.items():
            if policy in ("srm", "oracle", "lrm"):
                continue
            triple = _Aligned(grouped, [label, srm, oracle])
            if triple.n == 0:
                continue
            mine, base_c, top_c = (triple[x]["correct"] for x in (label, srm, oracle))

            def gain(idx: np.ndarray, mine: np.ndarray = mine, base_c=base_c, top_c=top_c) -> float:
                span = top_c[idx].mean() - base_c[idx].mean()
                return (
                    float((mine[idx].mean() - base_c[idx].mean()) / span) if span > 0 else math.nan
                )

            out["oracle_gain_fraction"][policy] = paired_bootstrap(
                gain, triple.n, resamples=resamples
            ).to_dict()
    return out


# --------------------------------------------------------------------------- outputs


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _ci(ci: Sequence[float | None] | None, pct: bool = True, digits: int = 2) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "-"
    if pct:
        return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def report_markdown(summary: Mapping[str, Any], *, title: str = "RankGuide benchmark") -> str:
    """Render ``report.md`` from a summary."""
    lines = [f"# {title}", ""]
    meta = [f"{k}: `{summary[k]}`" for k in ("task", "n_problems", "seed") if k in summary]
    if meta:
        lines += ["; ".join(meta), ""]
    lines += [
        "| policy | n | accuracy | 95% CI | mean latency (s) | median (s) | speed-up vs lrm "
        "| escalation rate | steps | SRM prefill / decode | LRM prefill / decode |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    speed = summary.get("speedup_vs_lrm", {})
    for policy, s in summary["policies"].items():
        u = s["usage"]
        lines.append(
            f"| {policy} | {s['n']} | {_pct(s['accuracy'])} | {_ci(s['accuracy_ci95'])} "
            f"| {s['latency_s_mean']:.3f} | {s['latency_s_median']:.3f} "
            f"| {speed.get(policy, float('nan')):.2f}x | {_pct(s['escalation_rate'])} "
            f"| {s['steps_mean']:.1f} "
            f"| {u['srm']['prefill_tokens']} / {u['srm']['decode_tokens']} "
            f"| {u['lrm']['prefill_tokens']} / {u['lrm']['decode_tokens']} |"
        )
    comps = summary.get("comparisons", {})
    if comps.get("vs_lrm"):
        lines += [
            "",
            f"## Against `lrm` (paired bootstrap over {summary.get('paired_problems')} problems)",
            "",
            "| policy | accuracy - lrm (pts) | 95% CI | speed-up | 95% CI |",
            "|---|---:|---|---:|---|",
        ]
        for policy, c in comps["vs_lrm"].items():
            d, sp = c["accuracy_diff"], c["speedup"]
            lines.append(
                f"| {policy} | {_signed_pts(d['estimate'])} | {_ci(d['ci95'])} "
                f"| {_num(sp['estimate'])}x | {_ci(sp['ci95'], pct=False)} |"
            )
    if comps.get("equal_escalation_rate"):
        lines += [
            "",
            "## At equal escalation rate (the other policy's sweep curve, interpolated)",
            "",
            "| comparison | escalation rate | accuracy | other (interp.) | difference (pts) "
            "| 95% CI |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for name, c in comps["equal_escalation_rate"].items():
            d = c["accuracy_diff"]
            lines.append(
                f"| {name} | {_pct(c['escalation_rate'])} | {_pct(c['subject_accuracy'])} "
                f"| {_pct(c['other_accuracy_interpolated'])} | {_signed_pts(d['estimate'])} "
                f"| {_ci(d['ci95'])} |"
            )
    if comps.get("oracle_gain_fraction"):
        lines += [
            "",
            "## Share of the oracle's accuracy gain over `srm`",
            "",
            "| policy | (acc - srm) / (oracle - srm) | 95% CI |",
            "|---|---:|---|",
        ]
        for policy, c in comps["oracle_gain_fraction"].items():
            lines.append(f"| {policy} | {_pct(c['estimate'])} | {_ci(c['ci95'])} |")
    if summary.get("sweep"):
        lines += [
            "",
            "## Sweeps",
            "",
            "| point | threshold | escalation rate | accuracy | 95% CI | mean latency (s) |",
            "|---|---:|---:|---:|---|---:|",
        ]
        for entries in summary["sweep"].values():
            for e in entries:
                t = e.get("threshold")
                lines.append(
                    f"| {e['point']} | {'-' if t is None else f'{t:.3g}'} "
                    f"| {_pct(e['escalation_rate'])} | {_pct(e['accuracy'])} "
                    f"| {_ci(e['accuracy_ci95'])} | {e['latency_s_mean']:.3f} |"
                )
    if summary.get("targets"):
        lines += ["", "## Targets", "", "| target | value | 95% CI | met |", "|---|---:|---|---|"]
        for t in summary["targets"]:
            met = {True: "yes", False: "no", None: "not measured"}[t["met"]]
            if t.get("significant") is not None:
                met += " (significant)" if t["significant"] else " (not significant)"
            value = t["value"]
            shown = "-" if value is None else f"{value:.3f}"
            lines.append(
                f"| {t['target']} | {shown} | {_ci(t.get('ci95'), pct=False, digits=3)} | {met} |"
            )
    if summary.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in summary["notes"]]
    machine = summary.get("machine") or {}
    if machine:
        lines += ["", "## Machine", ""] + [f"- {k}: `{v}`" for k, v in machine.items()]
    return "\n".join(lines) + "\n"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _signed_pts(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}"


def plot_pareto(summary: Mapping[str, Any], path: str | Path) -> bool:
    """Draw accuracy against mean latency and against escalation rate; ``False`` without matplotlib.

    Each policy's default point carries its 95% accuracy interval; a sweep is drawn as a line
    through its points. The dashed line joins the Pareto front of the default points.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    colours = plt.get_cmap("tab10")
    names = list(summary["policies"])
    sweeps = summary.get("sweep", {})
    for i, policy in enumerate(names):
        s = summary["policies"][policy]
        colour = colours(i % 10)
        acc = s["accuracy"]
        lo, hi = s["accuracy_ci95"]
        err = [[acc - lo], [hi - acc]]
        for axis, x in ((left, s["latency_s_mean"]), (right, s["escalation_rate"])):
            axis.errorbar([x], [acc], yerr=err, fmt="o", color=colour, capsize=3, label=policy)
        curve = sweeps.get(policy)
        if curve:
            left.plot(
                [e["latency_s_mean"] for e in sorted(curve, key=lambda e: e["latency_s_mean"])],
                [e["accuracy"] for e in sorted(curve, key=lambda e: e["latency_s_mean"])],
                "-",
                color=colour,
                alpha=0.6,
                marker=".",
            )
            right.plot(
                [e["escalation_rate"] for e in curve],
                [e["accuracy"] for e in curve],
                "-",
                color=colour,
                alpha=0.6,
                marker=".",
            )
    pts = [
        (summary["policies"][p]["latency_s_mean"], summary["policies"][p]["accuracy"])
        for p in names
    ]
    front = pareto_front(pts)
    if len(front) > 1:
        left.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "k--", lw=0.8)
    left.set_xlabel("mean latency per problem (s)")
    left.set_ylabel("accuracy")
    left.set_title("accuracy vs latency")
    right.set_xlabel("escalation rate (share of steps the LRM writes)")
    right.set_title("accuracy vs escalation rate")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    left.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_outputs(summary: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``summary.json``, ``report.md`` and (with matplotlib) ``pareto.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"summary": out / "summary.json", "report": out / "report.md"}
    paths["summary"].write_text(json.dumps(jsonable(summary), indent=2, allow_nan=False) + "\n")
    paths["report"].write_text(report_markdown(summary))
    if plot_pareto(summary, out / "pareto.png"):
        paths["pareto"] = out / "pareto.png"
    return paths
