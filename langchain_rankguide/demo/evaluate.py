"""Measure the demo models (``rankguide demo eval``): accuracy, speed and the SRM's failure modes.

Every trace is generated through the project's step engine
(:class:`~langchain_rankguide.engine.StepEngine`), greedy, one step at a time, exactly as a
RankGuide run drafts steps, and each step is judged by the task's exact verifier.

Failure modes (the project's operational rules for measuring them), measured on the SRM:

* overconfident: a wrong step whose first-token entropy is below the 25th percentile of the
  first-token entropies of all the SRM's steps;
* uncertain: a step whose first-token entropy is above the 75th percentile;
* heavy revalidation: a step in a run of 3 or more consecutive reflection steps, or a step
  that repeats an earlier one verbatim.

Speed is the per-token time of KV-cached greedy decoding on one thread, measured on the bare
model (median over runs) and, separately, through the step engine during the evaluation.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from langchain_rankguide.demo.task import (
    Problem,
    StepLabel,
    chat_messages,
    make_problems,
    revalidation_flags,
    verify_steps,
)
from langchain_rankguide.stats import wilson_interval

#: Step-engine limits for evaluation: generous next to the longest reference trace
#: (about 300 tokens, no step over 35), so only a runaway model hits them.
MAX_STEP_TOKENS = 64
MAX_STEPS = 40
MAX_TRACE_TOKENS = 800


@dataclass
class TraceRecord:
    """One model's greedy trace of one problem, judged.

    Attributes:
        problem_id: The problem.
        steps: Step texts as the engine produced them.
        labels: The verifier's label per step.
        entropies: First-token entropy (nats) per step.
        finish: Finish reason per step.
        correct: Whether the final answer is right.
        tokens: Tokens decoded for the trace.
        seconds: Time spent drafting its steps.
    """

    problem_id: str
    steps: list[str]
    labels: list[StepLabel]
    entropies: list[float]
    finish: list[str]
    correct: bool
    tokens: int
    seconds: float


def run_traces(
    loaded: Any,
    problems: Sequence[Problem],
    *,
    role: str,
    max_trace_tokens: int = MAX_TRACE_TOKENS,
    progress: Callable[[int, int], None] | None = None,
) -> list[TraceRecord]:
    """Generate and verify one greedy trace per problem through the step engine.

    Args:
        loaded: A :class:`~langchain_rankguide.engine.LoadedModel`.
        problems: The problems.
        role: ``"srm"`` or ``"lrm"`` (names the engine).
        max_trace_tokens: Decoded-token budget of one trace.
        progress: Called with ``(done, total)`` now and then.

    Returns:
        One record per problem.
    """
    from langchain_rankguide.engine import SamplingSettings, StepEngine, StepSettings

    engine = StepEngine(
        loaded,
        role=role,
        settings=StepSettings(delimiter="\n\n", max_step_tokens=MAX_STEP_TOKENS, end_markers=()),
        sampling=SamplingSettings(),
    )
    tokenizer = loaded.tokenizer
    records: list[TraceRecord] = []
    for index, problem in enumerate(problems):
        prompt = tokenizer.apply_chat_template(
            chat_messages(problem), tokenize=False, add_generation_prompt=True
        )
        engine.reset()
        engine.start(prompt)
        steps: list[str] = []
        entropies: list[float] = []
        finish: list[str] = []
        tokens = 0
        seconds = 0.0
        for _ in range(MAX_STEPS):
            draft = engine.draft_step(
                max_new_tokens=min(MAX_STEP_TOKENS, max_trace_tokens - tokens)
            )
            engine.commit(draft)
            steps.append(draft.text)
            entropies.append(draft.first_token_entropy)
            finish.append(draft.finish_reason)
            tokens += draft.n_tokens
            seconds += draft.latency_s
            if draft.ends_trace or tokens >= max_trace_tokens:
                break
        verdict = verify_steps(problem, steps)
        records.append(
            TraceRecord(
                problem_id=problem.id,
                steps=steps,
                labels=list(verdict.labels),
                entropies=entropies,
                finish=finish,
                correct=verdict.correct,
                tokens=tokens,
                seconds=seconds,
            )
        )
        if progress is not None and ((index + 1) % 50 == 0 or index + 1 == len(problems)):
            progress(index + 1, len(problems))
    return records


def decode_ms_per_token(
    loaded: Any, *, prompt_text: str, new_tokens: int = 64, runs: int = 7
) -> float:
    """Median per-token time (ms) of KV-cached greedy decoding on the bare model.

    Args:
        loaded: A :class:`~langchain_rankguide.engine.LoadedModel`.
        prompt_text: The rendered prompt to decode after (prefill is not timed).
        new_tokens: Tokens decoded per run (EOS does not stop it: the speed is what counts).
        runs: Timed runs (one untimed warm-up run precedes them).

    Returns:
        The median over runs of (decode time / tokens), in milliseconds.
    """
    import inspect

    import torch
    from transformers import DynamicCache

    model = loaded.model
    kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    ids = torch.tensor([loaded.tokenizer.encode(prompt_text, add_special_tokens=False)])
    timings: list[float] = []
    with torch.inference_mode():
        for run in range(runs + 1):
            cache = DynamicCache(config=model.config)
            out = model(input_ids=ids, use_cache=True, **{kwarg: cache})
            token = out.logits[:, -1:].argmax(-1)
            began = time.perf_counter()
            for _ in range(new_tokens):
                out = model(input_ids=token, use_cache=True, **{kwarg: cache})
                token = out.logits[:, -1:].argmax(-1)
            elapsed = time.perf_counter() - began
            if run:
                timings.append(elapsed / new_tokens * 1000.0)
    return statistics.median(timings)


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class ModelReport:
    """Measured figures of one model.

    Attributes:
        name: ``"srm"`` or ``"lrm"``.
        source: Where it was loaded from.
        parameters: Parameter count.
        n: Problems.
        correct: Problems answered right.
        accuracy: ``correct / n``.
        interval: Wilson 95% interval of the accuracy.
        ms_per_token: Bare-model decode time per token (median).
        engine_ms_per_token: Step-engine drafting time per decoded token over the evaluation.
        mean_steps: Steps per trace.
        mean_tokens: Decoded tokens per trace.
        wrong_step_rate: Fraction of steps the verifier judges wrong.
        reflection_rate: Fraction of steps that are reflections.
        error_kinds: Count of wrong steps per error kind.
        finish_reasons: Count of steps per finish reason.
    """

    name: str
    source: str
    parameters: int
    n: int
    correct: int
    accuracy: float
    interval: tuple[float, float]
    ms_per_token: float
    engine_ms_per_token: float
    mean_steps: float
    mean_tokens: float
    wrong_step_rate: float
    reflection_rate: float
    error_kinds: dict[str, int] = field(default_factory=dict)
    finish_reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class FailureModes:
    """The SRM's failure-mode frequencies against the verifier.

    Attributes:
        steps: Steps judged.
        problems: Problems.
        entropy_p25: 25th percentile of first-token entropy over all steps (nats).
        entropy_p75: 75th percentile.
        overconfident_steps: Fraction of steps that are overconfident.
        overconfident_problems: Fraction of problems with at least one.
        overconfident_share_of_wrong: Fraction of wrong steps that are overconfident.
        uncertain_steps: Fraction of steps that are uncertain.
        uncertain_problems: Fraction of problems with at least one.
        uncertain_wrong_rate: Fraction of uncertain steps that are wrong.
        revalidation_steps: Fraction of steps in heavy revalidation.
        revalidation_problems: Fraction of problems with heavy revalidation.
        wrong_steps: Fraction of steps judged wrong.
    """

    steps: int
    problems: int
    entropy_p25: float
    entropy_p75: float
    overconfident_steps: float
    overconfident_problems: float
    overconfident_share_of_wrong: float
    uncertain_steps: float
    uncertain_problems: float
    uncertain_wrong_rate: float
    revalidation_steps: float
    revalidation_problems: float
    wrong_steps: float


def failure_modes(records: Sequence[TraceRecord]) -> FailureModes:
    """Compute the failure-mode frequencies of a model's traces (see the module docstring)."""
    entropies = [e for r in records for e in r.entropies if not math.isnan(e)]
    p25, p75 = _percentile(entropies, 0.25), _percentile(entropies, 0.75)
    n_steps = sum(len(r.steps) for r in records)
    over = under = reval = wrong = uncertain_wrong = 0
    over_p = under_p = reval_p = 0
    for record in records:
        flags = revalidation_flags(record.labels)
        is_over = [
            label.correct is False and e < p25
            for label, e in zip(record.labels, record.entropies, strict=True)
        ]
        is_unc = [e > p75 for e in record.entropies]
        over += sum(is_over)
        under += sum(is_unc)
        reval += sum(flags)
        wrong += sum(label.correct is False for label in record.labels)
        uncertain_wrong += sum(
            u and label.correct is False for u, label in zip(is_unc, record.labels, strict=True)
        )
        over_p += any(is_over)
        under_p += any(is_unc)
        reval_p += any(flags)
    n_problems = max(1, len(records))
    steps = max(1, n_steps)
    return FailureModes(
        steps=n_steps,
        problems=len(records),
        entropy_p25=p25,
        entropy_p75=p75,
        overconfident_steps=over / steps,
        overconfident_problems=over_p / n_problems,
        overconfident_share_of_wrong=over / max(1, wrong),
        uncertain_steps=under / steps,
        uncertain_problems=under_p / n_problems,
        uncertain_wrong_rate=uncertain_wrong / max(1, under),
        revalidation_steps=reval / steps,
        revalidation_problems=reval_p / n_problems,
        wrong_steps=wrong / steps,
    )


def model_report(
    name: str, loaded: Any, records: Sequence[TraceRecord], ms_per_token: float
) -> ModelReport:
    """Summarise one model's traces."""
    n = len(records)
    correct = sum(r.correct for r in records)
    steps = sum(len(r.steps) for r in records)
    tokens = sum(r.tokens for r in records)
    labels = [label for r in records for label in r.labels]
    return ModelReport(
        name=name,
        source=str(loaded.source),
        parameters=sum(p.numel() for p in loaded.model.parameters()),
        n=n,
        correct=correct,
        accuracy=correct / max(1, n),
        interval=wilson_interval(correct, n),
        ms_per_token=ms_per_token,
        engine_ms_per_token=1000.0 * sum(r.seconds for r in records) / max(1, tokens),
        mean_steps=steps / max(1, n),
        mean_tokens=tokens / max(1, n),
        wrong_step_rate=sum(label.correct is False for label in labels) / max(1, steps),
        reflection_rate=sum(label.kind == "reflection" for label in labels) / max(1, steps),
        error_kinds=dict(
            Counter(label.error_kind for label in labels if label.error_kind).most_common()
        ),
        finish_reasons=dict(Counter(f for r in records for f in r.finish).most_common()),
    )


@dataclass
class EvalReport:
    """Everything ``rankguide demo eval`` measures.

    Attributes:
        n: Held-out problems.
        seed: Seed of the held-out set.
        models: Per-model figures.
        speed_ratio: LRM / SRM bare-model decode time per token.
        engine_speed_ratio: The same ratio through the step engine.
        srm_failure_modes: The SRM's failure-mode frequencies.
        seconds: Wall time of the evaluation.
        skills: Takeover, wording and tool-call accuracies (see
            :mod:`~langchain_rankguide.demo.skills`): name -> ``{"hits", "n", "value",
            "interval"}``; empty when not measured.
    """

    n: int
    seed: int
    models: dict[str, ModelReport]
    speed_ratio: float
    engine_speed_ratio: float
    srm_failure_modes: FailureModes
    seconds: float
    skills: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> str:
        """The report as indented JSON."""
        return json.dumps(asdict(self), indent=1)


def evaluate(
    *,
    n: int = 1000,
    seed: int = 0,
    srm: str = "demo:srm",
    lrm: str = "demo:lrm",
    max_trace_tokens: int = MAX_TRACE_TOKENS,
    log: Callable[[str], None] | None = None,
    skills_n: int = 300,
) -> EvalReport:
    """Evaluate the SRM and LRM on ``n`` held-out problems (greedy, one thread, step engine).

    Args:
        n: Held-out problems.
        seed: Seed of the held-out set.
        srm: Model spec of the SRM (``demo:srm`` or a folder).
        lrm: Model spec of the LRM.
        max_trace_tokens: Decoded-token budget of one trace.
        log: Where progress lines go (``None``: silent).
        skills_n: Problems (at most ``n``; tool dialogues: two thirds as many) for the
            takeover, wording and tool-call figures; 0 skips them.

    Returns:
        The report.
    """
    from langchain_rankguide.engine import load_model

    began = time.perf_counter()
    problems = make_problems(n, seed=seed, split="heldout")
    say = log or (lambda _line: None)
    reports: dict[str, ModelReport] = {}
    all_records: dict[str, list[TraceRecord]] = {}
    models: dict[str, Any] = {}
    for name, spec in (("srm", srm), ("lrm", lrm)):
        loaded = models[name] = load_model(spec, dtype="float32", device="cpu", threads=1)
        prompt = loaded.tokenizer.apply_chat_template(
            chat_messages(problems[0]), tokenize=False, add_generation_prompt=True
        )
        speed = decode_ms_per_token(loaded, prompt_text=prompt)
        say(f"[{name}] {spec}: {speed:.2f} ms/token (bare decode); evaluating {n} problems")
        records = run_traces(
            loaded,
            problems,
            role=name,
            max_trace_tokens=max_trace_tokens,
            progress=lambda done, total, name=name: say(  # type: ignore[misc]
                f"[{name}] {done}/{total}  {time.perf_counter() - began:6.0f}s"
            ),
        )
        all_records[name] = records
        reports[name] = model_report(name, loaded, records, speed)
    srm_report, lrm_report = reports["srm"], reports["lrm"]
    skills = (
        measure_skills(
            models,
            problems,
            all_records["srm"],
            n=min(skills_n, n),
            seed=seed,
            say=say,
            budget=max_trace_tokens,
        )
        if skills_n
        else {}
    )
    return EvalReport(
        n=n,
        seed=seed,
        models=reports,
        speed_ratio=lrm_report.ms_per_token / srm_report.ms_per_token,
        engine_speed_ratio=lrm_report.engine_ms_per_token / srm_report.engine_ms_per_token,
        srm_failure_modes=failure_modes(all_records["srm"]),
        seconds=time.perf_counter() - began,
        skills=skills,
    )


def measure_skills(
    models: dict[str, Any],
    problems: Sequence[Problem],
    srm_records: Sequence[TraceRecord],
    *,
    n: int,
    seed: int,
    say: Callable[[str], None],
    budget: int = MAX_TRACE_TOKENS,
) -> dict[str, dict[str, Any]]:
    """Takeover accuracy (first ``n`` SRM traces), wording and tool-call accuracy per model."""
    from langchain_rankguide.demo import skills

    rates: dict[str, skills.Rate] = {}
    say(f"[skills] takeover from the SRM's first {n} held-out traces")
    rates["takeover"] = skills.takeover_accuracy(
        models["lrm"], problems[:n], [r.steps for r in srm_records[:n]], budget=budget
    )
    worded = skills.worded_problems(n, seed)
    for name, loaded in models.items():
        say(f"[skills] {name}: {n} worded questions, {2 * n // 3} tool dialogues")
        rates[f"{name}_wording"] = skills.wording_accuracy(loaded, name, worded, budget=budget)
        rates[f"{name}_tool_calls"] = skills.tool_call_accuracy(loaded, 2 * n // 3, seed)
        guided = skills.tool_call_rates(loaded, 2 * n // 3, seed, grammar=True)
        rates[f"{name}_tool_calls_grammar"] = guided["exact"]
        rates[f"{name}_tool_names_grammar"] = guided["name"]
    return {
        key: {"hits": r.hits, "n": r.n, "value": r.value, "interval": r.interval}
        for key, r in rates.items()
    }


def format_report(report: EvalReport) -> str:
    """Render a report as the text ``rankguide demo eval`` prints."""
    lines = [
        f"held-out problems: {report.n} (seed {report.seed}), greedy, 1 thread, step engine",
        "",
        f"{'model':<5} {'params':>10} {'accuracy':>9} {'95% CI':>17} {'ms/token':>9} "
        f"{'engine':>8} {'steps':>6} {'tokens':>7} {'wrong':>7} {'reflect':>8}",
    ]
    for m in report.models.values():
        lines.append(
            f"{m.name:<5} {m.parameters:>10,} {m.accuracy:>8.1%} "
            f"{f'[{m.interval[0]:.1%}, {m.interval[1]:.1%}]':>17} {m.ms_per_token:>9.2f} "
            f"{m.engine_ms_per_token:>8.2f} {m.mean_steps:>6.1f} {m.mean_tokens:>7.1f} "
            f"{m.wrong_step_rate:>7.1%} {m.reflection_rate:>8.1%}"
        )
    lines += [
        "",
        f"LRM/SRM time per decoded token: {report.speed_ratio:.2f}x bare model, "
        f"{report.engine_speed_ratio:.2f}x through the step engine",
    ]
    for m in report.models.values():
        kinds = ", ".join(f"{k} {v}" for k, v in m.error_kinds.items()) or "none"
        lines.append(f"{m.name} wrong steps by kind: {kinds}")
    f = report.srm_failure_modes
    lines += [
        "",
        f"SRM failure modes ({f.steps} steps, {f.problems} problems; first-token entropy "
        f"p25 {f.entropy_p25:.3f}, p75 {f.entropy_p75:.3f} nats; {f.wrong_steps:.1%} of steps "
        "wrong):",
        f"  overconfident (wrong, entropy < p25): {f.overconfident_steps:6.1%} of steps, "
        f"{f.overconfident_problems:6.1%} of problems, {f.overconfident_share_of_wrong:.1%} of "
        "wrong steps",
        f"  uncertain (entropy > p75):            {f.uncertain_steps:6.1%} of steps, "
        f"{f.uncertain_problems:6.1%} of problems, {f.uncertain_wrong_rate:.1%} of them wrong",
        f"  heavy revalidation (>=3 reflections or a repeat): {f.revalidation_steps:6.1%} of "
        f"steps, {f.revalidation_problems:6.1%} of problems",
    ]
    lines += _skill_lines(report.skills)
    lines += ["", f"evaluation time: {report.seconds:.0f} s"]
    return "\n".join(lines)


_SKILL_NAMES = {
    "takeover": "LRM takeover from accepted SRM prefixes",
    "lrm_wording": "LRM on worded / one-operation questions",
    "srm_wording": "SRM on worded / one-operation questions",
    "lrm_tool_calls": "LRM exact tool calls",
    "lrm_tool_calls_grammar": "LRM exact tool calls, call grammar",
    "lrm_tool_names_grammar": "LRM right tool, call grammar",
    "srm_tool_calls": "SRM exact tool calls",
    "srm_tool_calls_grammar": "SRM exact tool calls, call grammar",
    "srm_tool_names_grammar": "SRM right tool, call grammar",
}


def _skill_lines(skills: dict[str, dict[str, Any]]) -> list[str]:
    if not skills:
        return []
    lines = ["", "beyond its own canonical traces:"]
    for key, label in _SKILL_NAMES.items():
        if key in skills:
            s = skills[key]
            low, high = s["interval"]
            lines.append(
                f"  {label + ':':<42} {s['value']:6.1%} [{low:.1%}, {high:.1%}] "
                f"({s['hits']}/{s['n']})"
            )
    return lines
