"""Engine performance (``rankguide bench --perf``): what the framework costs next to the raw model.

Every measurement runs on the same tokens as a pinned baseline: the SRM's greedy trace of each
question is produced once through the run stream (policy ``srm``), and the *raw model* -- the very
same loaded module, so the same dtype and device -- is then timed feeding exactly those tokens
with its KV cache on (one forward for the prompt, one per generated token, an argmax on each
logit row, as greedy decoding does). Every timing is the median of ``repeats`` runs after a
warm-up run. Reported:

* ``overhead``: framework time per step = (graph wall time - raw model time) / steps, for the
  step engine alone and for the graph (run through the run stream) without a checkpointer,
  with an in-memory one and with a SQLite one; and as a share of the graph's step time;
* ``signals``: the routing signals' share of step time -- the graph under the ``rank`` policy
  with an unreachable threshold (so the trace is the SRM's, and only the router's signals are
  captured and computed) against the plain ``srm`` graph, plus the time inside
  ``compute_signals`` alone;
* ``prefill``: tokens prefilled per step against the trace length so far, under a policy that
  alternates authors (``random`` at 0.5): with incremental caches it stays flat (each model
  prefills only the steps it has not seen), where re-encoding the trace would grow linearly;
* ``memory``: peak resident memory of the process (and peak CUDA memory on a GPU).
"""

from __future__ import annotations

import json
import resource
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from langchain_rankguide.app import RankGuideApp
from langchain_rankguide.bench.report import jsonable, machine_info
from langchain_rankguide.bench.runner import BenchPipeline
from langchain_rankguide.bench.tasks import DemoTask
from langchain_rankguide.pipeline import RunOptions
from langchain_rankguide.schemas import usage_by_role

NEVER = 1e9
"""A threshold no score reaches: the router computes its signals but never escalates."""


@dataclass(frozen=True)
class PerfSettings:
    """How much to measure.

    Attributes:
        repeats: timed runs per measurement (the median is reported).
        seed: seed of the demo questions used as prompts.
        n_problems: questions timed (each run ``repeats`` times per variant).
        warmup: untimed runs before timing.
    """

    repeats: int = 5
    seed: int = 0
    n_problems: int = 5
    warmup: int = 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ForwardTimer:
    """Accumulates wall time spent inside a module's forward (hooks on the top module).

    Time outside the model's forward within the same run is the framework's own cost; measured
    this way it does not depend on the machine's load drifting between two separate runs.
    """

    def __init__(self, module: Any, device: torch.device) -> None:
        self.total = 0.0
        self.calls = 0
        self._device = device
        self._started = 0.0
        self._handles = [
            module.register_forward_pre_hook(self._pre),
            module.register_forward_hook(self._post),
        ]

    def _pre(self, *_args: Any) -> None:
        _sync(self._device)
        self._started = time.perf_counter()

    def _post(self, *_args: Any) -> None:
        _sync(self._device)
        self.total += time.perf_counter() - self._started
        self.calls += 1

    def reset(self) -> None:
        """Zero the counters."""
        self.total = 0.0
        self.calls = 0

    def close(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()


@dataclass
class Timing:
    """Summed medians of one variant over the traces."""

    wall: float = 0.0
    model: float = 0.0
    forwards: int = 0

    @property
    def outside(self) -> float:
        """Time outside the model's forward: the framework's own cost."""
        return self.wall - self.model


def _interleaved(
    variants: dict[str, Callable[[dict[str, Any]], None]],
    traces: Sequence[dict[str, Any]],
    settings: PerfSettings,
    timer: ForwardTimer,
    device: torch.device,
) -> dict[str, Timing]:
    """Per variant, the sum over traces of the median wall time and time inside the model.

    Running the variants round-robin, repeat after repeat, spreads drift in machine load
    (other processes, thermal state) over all of them instead of biasing whichever ran last.
    """
    totals = {name: Timing() for name in variants}
    for trace in traces:
        walls: dict[str, list[float]] = {name: [] for name in variants}
        inside: dict[str, list[float]] = {name: [] for name in variants}
        calls: dict[str, int] = {}
        for round_ in range(settings.warmup + settings.repeats):
            for name, fn in variants.items():
                _sync(device)
                timer.reset()
                started = time.perf_counter()
                fn(trace)
                _sync(device)
                if round_ >= settings.warmup:
                    walls[name].append(time.perf_counter() - started)
                    inside[name].append(timer.total)
                    calls[name] = timer.calls
        for name in variants:
            totals[name].wall += statistics.median(walls[name])
            totals[name].model += statistics.median(inside[name])
            totals[name].forwards += calls[name]
    return totals


def raw_greedy(loaded: Any, prompt_ids: Sequence[int], trace_ids: Sequence[int]) -> None:
    """Feed ``prompt_ids`` then each of ``trace_ids`` to the bare model with its KV cache on.

    This is the pinned baseline: what greedy decoding of the same tokens costs the model itself
    (one forward for the prompt, one per token, an argmax per step), with nothing around it.
    """
    from langchain_rankguide.engine.step_engine import _forward_takes_cache_kwarg, _new_cache

    model = loaded.model
    device = loaded.device
    kwarg = "cache" if _forward_takes_cache_kwarg(model) else "past_key_values"
    cache = _new_cache(model)
    with torch.inference_mode():
        out = model(
            input_ids=torch.tensor([list(prompt_ids)], device=device),
            use_cache=True,
            **{kwarg: cache},
        )
        out.logits[0, -1].argmax()
        for token in trace_ids:
            out = model(
                input_ids=torch.tensor([[token]], device=device), use_cache=True, **{kwarg: cache}
            )
            out.logits[0, -1].argmax()


def _prompt_ids(pipeline: BenchPipeline, question: str) -> list[int]:
    from langchain_rankguide.lrm import render_prompt

    loaded = pipeline.srm
    prompt_cfg = pipeline.config.prompt
    text = render_prompt(
        loaded.tokenizer, pipeline.messages(question), **prompt_cfg.chat_template_kwargs
    )
    text += prompt_cfg.assistant_prefix
    return list(loaded.tokenizer.encode(text, add_special_tokens=False))


def _fed_trace_ids(loaded: Any, steps: Sequence[dict[str, Any]]) -> list[int]:
    ids = [i for s in steps for i in s.get("token_ids", {}).get("srm", [])]
    # The engine never feeds a final end-of-sequence token: generation stops on it.
    while ids and ids[-1] in loaded.eos_token_ids:
        ids.pop()
    return ids


@contextmanager
def _timed_signals(totals: list[float]) -> Any:
    """Accumulate the time spent inside ``compute_signals`` during the block."""
    import langchain_rankguide.pipeline as pipeline_module

    original = pipeline_module.compute_signals

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals.append(time.perf_counter() - started)

    pipeline_module.compute_signals = timed
    try:
        yield
    finally:
        pipeline_module.compute_signals = original


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS, where this over-reports by 1024).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_perf(
    config: Any,
    settings: PerfSettings | None = None,
    *,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure the framework against the raw model; return a JSON-native result.

    Args:
        config: the configuration (its SRM is timed; its LRM is used for the prefill check).
        settings: how much to measure.
        log: receives short progress messages.

    Returns:
        ``{"machine", "settings", "models", "overhead", "signals", "prefill", "memory"}``.
    """
    from langgraph.checkpoint.memory import InMemorySaver

    from langchain_rankguide.engine import StepEngine

    settings = settings or PerfSettings()
    say = log or (lambda _msg: None)
    task = DemoTask()
    pipeline = BenchPipeline(config, task)
    rss_before = _peak_rss_mb()
    say("loading models")
    srm = pipeline.srm
    device = srm.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    problems = task.problems(settings.n_problems, settings.seed)
    plain = RankGuideApp(pipeline)
    srm_only = RunOptions(policy="srm")

    # ---- the SRM's trace of each question: the tokens every variant is timed on
    say("recording the SRM traces")
    traces: list[dict[str, Any]] = []
    for problem in problems:
        steps = plain.invoke(problem.question, srm_only).steps
        traces.append(
            {
                "question": problem.question,
                "prompt": _prompt_ids(pipeline, problem.question),
                "ids": _fed_trace_ids(srm, steps),
                "steps": len(steps),
                "texts": [s["text"] for s in steps],
            }
        )
    n_steps = sum(t["steps"] for t in traces)
    n_tokens = sum(len(t["ids"]) for t in traces)

    step_settings = pipeline.step_settings
    max_new = pipeline.config.steps.max_step_tokens
    engine_same = True

    def engine_run(t: dict[str, Any]) -> None:
        nonlocal engine_same
        engine = StepEngine(srm, role="srm", settings=step_settings)
        engine.start_ids(t["prompt"])
        texts = []
        for index in range(t["steps"]):
            draft = engine.draft_step(max_new_tokens=max_new, step_index=index)
            engine.commit(draft)
            texts.append(draft.text)
            if draft.ends_trace:
                break
        engine_same = engine_same and texts == t["texts"]

    def graph_run(app: RankGuideApp, options: RunOptions) -> Callable[[dict[str, Any]], None]:
        def go(t: dict[str, Any]) -> None:
            app.invoke(t["question"], options)

        return go

    from langgraph.checkpoint.sqlite import SqliteSaver

    compute_times: list[float] = []
    rank_options = RunOptions(policy="rank", threshold=NEVER)
    router = pipeline.router(rank_options)

    def rank_run(t: dict[str, Any]) -> None:
        with _timed_signals(compute_times):
            graph_run(plain, rank_options)(t)

    with tempfile.TemporaryDirectory() as folder:
        connection = sqlite3.connect(Path(folder) / "perf.sqlite", check_same_thread=False)
        variants: dict[str, Callable[[dict[str, Any]], None]] = {
            "raw": lambda t: raw_greedy(srm, t["prompt"], t["ids"]),
            "engine": engine_run,
            "graph": graph_run(plain, srm_only),
            "graph+memory": graph_run(
                RankGuideApp(pipeline, checkpointer=InMemorySaver()), srm_only
            ),
            "graph+sqlite": graph_run(
                RankGuideApp(pipeline, checkpointer=SqliteSaver(connection)), srm_only
            ),
            "graph+signals": rank_run,
        }
        say(f"timing {len(variants)} variants on {len(traces)} traces")
        timer = ForwardTimer(srm.model, device)
        try:
            times = _interleaved(variants, traces, settings, timer, device)
        finally:
            timer.close()
        connection.close()
    raw = times["raw"].wall

    def overhead_row(name: str, timing: Timing) -> dict[str, Any]:
        # The raw loop's own time outside the forward (building input tensors, the argmax) is
        # part of the baseline, not of the framework.
        extra = timing.outside - times["raw"].outside
        per_step = extra / n_steps
        return {
            "variant": name,
            "wall_s": timing.wall,
            "model_s": timing.model,
            "forwards": timing.forwards,
            "step_ms": 1000 * timing.wall / n_steps,
            "overhead_ms_per_step": 1000 * per_step,
            "overhead_share": extra / timing.wall if timing.wall > 0 else None,
            "vs_raw_ms_per_step": 1000 * (timing.wall - raw) / n_steps,
        }

    overhead = {
        "raw_model_s": raw,
        "raw_step_ms": 1000 * raw / n_steps,
        "raw_ms_per_forward": 1000 * raw / max(1, times["raw"].forwards),
        "raw_outside_ms_per_step": 1000 * times["raw"].outside / n_steps,
        "steps": n_steps,
        "tokens": n_tokens,
        "engine_same_text": engine_same,
        "rows": [
            overhead_row("raw model loop", times["raw"]),
            overhead_row("step engine alone", times["engine"]),
            overhead_row("graph, no checkpointer", times["graph"]),
            overhead_row("graph, in-memory checkpointer", times["graph+memory"]),
            overhead_row("graph, SQLite checkpointer", times["graph+sqlite"]),
        ],
    }

    # Routing signals on the hot path: the rank policy with a threshold it never reaches
    # computes its signals on the SRM's own trace. Outside the model, its extra time over the
    # plain graph is the signals' cost (compute, router, copying captured states); the capture
    # hooks run inside the forward, where only the (noisier) difference of totals shows them.
    rank_t, plain_t = times["graph+signals"], times["graph"]
    runs_timed = len(traces) * (settings.repeats + settings.warmup)
    outside_extra = rank_t.outside - plain_t.outside
    signals = {
        "policy": "rank (threshold never reached)",
        "signals": list(router.signals),
        "graph_s": rank_t.wall,
        "step_ms": 1000 * rank_t.wall / n_steps,
        "signal_ms_per_step": 1000 * outside_extra / n_steps,
        "signal_share": outside_extra / rank_t.wall if rank_t.wall else None,
        "total_diff_ms_per_step": 1000 * (rank_t.wall - plain_t.wall) / n_steps,
        "compute_ms_per_step": 1000 * sum(compute_times) / max(1, n_steps * runs_timed),
        "compute_share": (sum(compute_times) / runs_timed) / rank_t.wall if rank_t.wall else None,
    }

    # ---- prefill per step against trace length, authors alternating
    say("measuring prefill per step")
    prefill = _prefill_profile(pipeline, plain, problems)

    memory = {
        "peak_rss_mb_before_models": rss_before,
        "peak_rss_mb": _peak_rss_mb(),
    }
    if device.type == "cuda":
        memory["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 1024**2
    return jsonable(
        {
            "machine": machine_info(pipeline, device.type),
            "settings": settings.__dict__,
            "models": {
                "srm": pipeline.srm_identity,
                "srm_layers": srm.num_layers,
                "srm_hidden": srm.hidden_size,
                "srm_parameters": sum(p.numel() for p in srm.model.parameters()),
                "dtype": str(next(srm.model.parameters()).dtype),
                "device": str(device),
                "lrm": pipeline.lrm_identity,
            },
            "overhead": overhead,
            "signals": signals,
            "prefill": prefill,
            "memory": memory,
        }
    )


def _prefill_profile(
    pipeline: BenchPipeline, app: RankGuideApp, problems: Sequence[Any]
) -> dict[str, Any]:
    """Per-step prefill (both models, prompts excluded) against the trace length before it."""
    from langchain_rankguide.lrm import render_prompt

    rows: list[tuple[int, int, int]] = []  # (trace tokens before, prefill, step tokens)
    options = RunOptions(policy="random", threshold=0.5)
    kwargs = pipeline.config.prompt.chat_template_kwargs
    for problem in problems:
        prompts = {"srm": len(_prompt_ids(pipeline, problem.question)), "lrm": 0}
        if pipeline.config.lrm.provider == "hf_local":
            lrm_tok = pipeline.lrm_loaded().tokenizer
            text = render_prompt(lrm_tok, pipeline.messages(problem.question), **kwargs)
            prompts["lrm"] = len(lrm_tok.encode(text, add_special_tokens=False))
        previous = {"srm": 0, "lrm": 0}
        trace = 0
        with app.stream(problem.question, options) as run:
            events = [e for e in run if not e.withdrawn]
        for event in events:
            usage = usage_by_role(event.usage)
            now = {m: usage[m]["prefill_tokens"] for m in ("srm", "lrm")}
            delta = 0
            for model in ("srm", "lrm"):
                delta += now[model] - previous[model]
                if previous[model] == 0 and now[model] > 0:
                    delta -= prompts[model]  # a model's first use prefills its prompt
            previous = now
            tokens = int(event.step.get("tokens", 0))
            rows.append((trace, delta, tokens))
            trace += tokens
    if not rows:
        return {"steps": 0}
    xs = [float(r[0]) for r in rows]
    ys = [float(r[1]) for r in rows]
    slope = 0.0
    if len(set(xs)) > 1:
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        covariance = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
        slope = covariance / sum((x - mx) ** 2 for x in xs)
    ordered = sorted(rows)
    half = len(ordered) // 2
    early, late = ordered[:half] or ordered, ordered[half:]
    return {
        "policy": "random at rate 0.5",
        "steps": len(rows),
        "prefill_per_step_mean": statistics.fmean(ys),
        "step_tokens_mean": statistics.fmean(float(r[2]) for r in rows),
        # Each committed step should be prefilled about once, by the model that did not write
        # it; re-encoding the trace every step would make this grow with the trace length.
        "prefill_per_trace_token": sum(r[1] for r in rows) / max(1, sum(r[2] for r in rows)),
        "slope_prefill_per_trace_token": slope,
        "early_half": {
            "trace_tokens_mean": statistics.fmean(float(r[0]) for r in early),
            "prefill_per_step_mean": statistics.fmean(float(r[1]) for r in early),
        },
        "late_half": {
            "trace_tokens_mean": statistics.fmean(float(r[0]) for r in late),
            "prefill_per_step_mean": statistics.fmean(float(r[1]) for r in late),
        },
    }


# --------------------------------------------------------------------------- outputs


def perf_markdown(result: dict[str, Any]) -> str:
    """Render the perf result as Markdown tables."""
    o, s, p, m = result["overhead"], result["signals"], result["prefill"], result["memory"]
    models = result["models"]
    lines = [
        f"Model `{models['srm']}` ({models['srm_layers']} layers x {models['srm_hidden']}, "
        f"{models['srm_parameters']:,} parameters, {models['dtype']}, {models['device']}); "
        f"{o['steps']} steps, {o['tokens']} tokens; medians of "
        f"{result['settings']['repeats']} runs after {result['settings']['warmup']} warm-up.",
        "",
        f"Raw model on the same tokens: {o['raw_step_ms']:.2f} ms per step "
        f"({o['raw_ms_per_forward']:.3f} ms per forward). The step engine reproduces the graph's "
        f"texts: {o['engine_same_text']}.",
        "",
        "Overhead = time outside the model's forward in the same run, less the raw loop's own "
        "(robust to load drift); 'vs raw' = difference from the raw loop's median wall time "
        "(noisier).",
        "",
        "| variant | ms per step | in model | overhead ms per step | overhead share "
        "| vs raw ms per step |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in o["rows"]:
        lines.append(
            f"| {row['variant']} | {row['step_ms']:.2f} "
            f"| {1000 * row['model_s'] / o['steps']:.2f} | {row['overhead_ms_per_step']:.2f} "
            f"| {100 * row['overhead_share']:.1f}% | {row['vs_raw_ms_per_step']:+.2f} |"
        )
    lines += [
        "",
        f"Routing signals ({', '.join(s['signals'])}), policy {s['policy']}: "
        f"{s['step_ms']:.2f} ms per step; outside the model {s['signal_ms_per_step']:.3f} ms "
        f"per step more than the plain graph = {100 * (s['signal_share'] or 0):.2f}% of step "
        f"time (difference of totals, capture hooks included: "
        f"{s['total_diff_ms_per_step']:+.2f} ms); inside `compute_signals` alone "
        f"{s['compute_ms_per_step']:.3f} ms per step ({100 * (s['compute_share'] or 0):.2f}%).",
        "",
    ]
    if p.get("steps"):
        lines.append(
            f"Prefill per step ({p['policy']}, {p['steps']} steps): mean "
            f"{p['prefill_per_step_mean']:.1f} tokens (steps average "
            f"{p['step_tokens_mean']:.1f} tokens); early half of traces (mean "
            f"{p['early_half']['trace_tokens_mean']:.0f} trace tokens) "
            f"{p['early_half']['prefill_per_step_mean']:.1f}, late half "
            f"({p['late_half']['trace_tokens_mean']:.0f} trace tokens) "
            f"{p['late_half']['prefill_per_step_mean']:.1f}; slope "
            f"{p['slope_prefill_per_trace_token']:+.4f} prefill tokens per trace token; "
            f"{p['prefill_per_trace_token']:.2f} tokens prefilled per token of trace in all."
        )
    mem = (
        f"Peak RSS {m['peak_rss_mb']:.0f} MB "
        f"({m['peak_rss_mb_before_models']:.0f} MB before loading the models)"
    )
    if "peak_cuda_mb" in m:
        mem += f"; peak CUDA memory {m['peak_cuda_mb']:.0f} MB"
    lines += ["", mem + "."]
    return "\n".join(lines) + "\n"


def write_perf(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write ``perf.json`` and ``perf.md`` to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "perf.json", out_dir / "perf.md"
    json_path.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    md_path.write_text(perf_markdown(result))
    return [json_path, md_path]
