"""Calibration: measure which signals predict a failing SRM step and fit the RankGuide router.

Runs the SRM alone (through the same graph as every other run, with every signal computed),
labels each step -- with the task's step verifier, or, where a task has none, by agreement
with the LRM (:func:`lrm_agreement_labels`: the LRM writes the same step from the same prefix
and a step it would write differently is failing) -- and reports per signal its AUROC for
predicting a failing step, overall and within groups of equal step length, since a raw rank
can be a length proxy. It then fits the ``rankguide`` combination (logistic regression on
z-scored signals), the thresholds for a target escalation rate, the baseline policies'
thresholds at the same rate and at each rate of a benchmark sweep (``policy_thresholds`` keys
``"entropy@0.2"``...), and the failure-mode entropy cut-offs, writes the shared calibration
file, and can plot each signal's distribution on good and failing steps.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from langchain_rankguide.schemas import SIGNALS, Calibration, SignalStats

ENTROPY = "entropy.first_token"
ENTROPY_TOP20 = "entropy.first_token_top20"
RANK_CANDIDATES = tuple(n for n in SIGNALS if n.startswith("rank."))
SWEEP_RATES = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7)
"""Escalation rates whose thresholds are stored for benchmark sweeps (``"entropy@0.2"``)."""


@dataclass
class LabelledStep:
    """One SRM step with its signals and the verifier's verdict (``index``: its step number)."""

    signals: dict[str, float | None]
    failing: bool
    tokens: int
    index: int | None = None


@dataclass
class SignalReport:
    """How well one signal separates failing from good steps."""

    name: str
    n: int
    auroc: float | None
    auroc_within_length: float | None
    direction: int
    mean: float
    std: float
    auroc_within_position: float | None = None
    """AUROC within groups of equal step index: a signal that grows along the trace (a
    cross-step rank over the last W openings) can look predictive only because failing steps
    come late."""


@dataclass
class CalibrationReport:
    """Everything calibration measured, plus the fitted file."""

    n_steps: int
    failing_rate: float
    signals: list[SignalReport]
    calibration: Calibration
    chosen_rank_signal: str | None
    fitted_escalation_rate: float
    notes: list[str] = field(default_factory=list)
    policy_aurocs: dict[str, float | None] = field(default_factory=dict)
    """In-sample AUROC of each policy's score (``rankguide`` combination, ``entropy``,
    ``rank``) on the calibration steps: the ``rank`` ablation at a glance."""
    labels: str = "verifier"


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` for ``labels`` (Mann-Whitney, ties count half)."""
    positives = sum(labels)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    positive_rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    return (positive_rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def auroc_within_groups(
    scores: Sequence[float], labels: Sequence[bool], groups: Sequence[int]
) -> float | None:
    """AUROC averaged over groups (e.g. equal step length), weighted by pairs compared."""
    by_group: dict[int, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        by_group[group].append(index)
    total, weight = 0.0, 0
    for members in by_group.values():
        group_labels = [labels[i] for i in members]
        value = auroc([scores[i] for i in members], group_labels)
        if value is None:
            continue
        pairs = sum(group_labels) * (len(group_labels) - sum(group_labels))
        total += value * pairs
        weight += pairs
    return total / weight if weight else None


def _values(steps: Sequence[LabelledStep], name: str) -> list[float]:
    return [float(v) for v in (s.signals.get(name) for s in steps) if v is not None]


def _stats(values: Sequence[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)
    return mean, math.sqrt(var)


def signal_reports(steps: Sequence[LabelledStep], names: Iterable[str]) -> list[SignalReport]:
    """AUROC (overall, within equal lengths), direction, mean and std of each signal."""
    reports = []
    for name in names:
        rows = [s for s in steps if s.signals.get(name) is not None]
        if len(rows) < 2:
            continue
        values = _values(rows, name)
        labels = [s.failing for s in rows]
        mean, std = _stats(values)
        area = auroc(values, labels)
        within = auroc_within_groups(values, labels, [s.tokens for s in rows])
        direction = 1 if area is None or area >= 0.5 else -1
        oriented = None if area is None else max(area, 1 - area)
        oriented_within = None
        if within is not None:
            oriented_within = within if direction == 1 else 1 - within
        by_position = None
        if all(s.index is not None for s in rows):
            positions = [int(s.index or 0) for s in rows]
            at = auroc_within_groups(values, labels, positions)
            by_position = None if at is None else (at if direction == 1 else 1 - at)
        reports.append(
            SignalReport(
                name, len(rows), oriented, oriented_within, direction, mean, std, by_position
            )
        )
    return reports


def calibration_z(stats: SignalStats, value: float | None) -> float:
    """z-score oriented so that + means failing (``value`` must be measured)."""
    assert value is not None
    return stats.direction * (value - stats.mean) / stats.std


def fit_logistic(features: torch.Tensor, labels: torch.Tensor, l2: float = 1e-3) -> torch.Tensor:
    """Fit logistic-regression weights (last entry is the bias) with L-BFGS."""
    x = torch.cat([features, torch.ones(features.shape[0], 1, dtype=features.dtype)], dim=1)
    w = torch.zeros(x.shape[1], dtype=features.dtype, requires_grad=True)
    optimiser = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w, labels)
        loss = loss + l2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return w.detach()


def quantile_threshold(scores: Sequence[float], rate: float) -> float:
    """The score above which a fraction ``rate`` of ``scores`` lies."""
    ordered = sorted(scores)
    if not ordered:
        return math.inf
    if rate <= 0:
        return math.inf
    chosen = max(1, round(rate * len(ordered)))
    return ordered[len(ordered) - min(chosen, len(ordered))]


def fit_calibration(
    steps: Sequence[LabelledStep],
    *,
    models: dict[str, str],
    target_rate: float = 0.25,
    rank_signal: str | None = None,
    reflection_streak: int = 3,
    extra_signals: Sequence[str] = (),
) -> CalibrationReport:
    """Fit the RankGuide router and the policies' thresholds from labelled SRM steps.

    The rank signal combined with first-token entropy is ``rank_signal`` if given, else the
    rank signal with the best AUROC *within groups of equal step length* (so a length proxy
    is not chosen for being long). ``extra_signals`` (registry names) join the combination,
    e.g. ``("entropy.mean",)``.

    Raises:
        ValueError: no steps, or an extra signal that is not in the registry.
    """
    unknown = [n for n in extra_signals if n not in SIGNALS]
    if unknown:
        raise ValueError(f"unknown signals {unknown}; see langchain_rankguide.schemas.SIGNALS")
    if not steps:
        raise ValueError("no labelled steps to calibrate on")
    names = [n for n in SIGNALS if any(s.signals.get(n) is not None for s in steps)]
    reports = signal_reports(steps, names)
    by_name = {r.name: r for r in reports}
    notes: list[str] = []
    if rank_signal is None:
        candidates = [
            r for r in reports if r.name in RANK_CANDIDATES and r.auroc_within_length is not None
        ]
        candidates.sort(key=lambda r: r.auroc_within_length or 0.0, reverse=True)
        rank_signal = candidates[0].name if candidates else None
    wanted = (rank_signal, ENTROPY, *extra_signals)
    combined = list(dict.fromkeys(n for n in wanted if n is not None and n in by_name))
    missing = [n for n in extra_signals if n not in by_name]
    if missing:
        notes.append(f"never measured on these steps, left out of the combination: {missing}")
    stats = {
        r.name: SignalStats(mean=r.mean, std=r.std or 1.0, direction=r.direction, auroc=r.auroc)
        for r in reports
    }
    rows = [s for s in steps if all(s.signals.get(n) is not None for n in combined)]
    features = torch.tensor(
        [[calibration_z(stats[n], s.signals[n]) for n in combined] for s in rows],
        dtype=torch.float64,
    )
    labels = torch.tensor([float(s.failing) for s in rows], dtype=torch.float64)
    if rows and 0 < labels.sum() < len(rows):
        w = fit_logistic(features, labels)
        weights = {n: float(w[i]) for i, n in enumerate(combined)}
        bias = float(w[-1])
    else:
        weights = {n: 1.0 for n in combined}
        bias = 0.0
        notes.append("labels were all one class: equal weights used")
    calibration = Calibration(
        models=models, signals=stats, weights=weights, threshold=0.0, bias=bias
    )
    scores = [s for s in (calibration.score(r.signals) for r in rows) if s is not None]
    calibration.threshold = quantile_threshold(scores, target_rate)
    calibration.target_escalation_rate = target_rate
    calibration.reflection_streak = reflection_streak
    entropies = sorted(_values(steps, ENTROPY))
    if entropies:
        calibration.failure_thresholds = {
            "overconfidence_entropy": entropies[int(0.25 * (len(entropies) - 1))],
            "uncertainty_entropy": entropies[int(0.75 * (len(entropies) - 1))],
        }
    top20 = _values(steps, ENTROPY_TOP20)
    zs: list[float] = []
    if rank_signal is not None and rank_signal in stats:
        zs = [calibration.zscore(rank_signal, v) for v in _values(steps, rank_signal)]
    # The plain keys are the policies' defaults; "@rate" keys serve benchmark sweeps.
    for key, rate in [("", target_rate), *((f"@{r:g}", r) for r in SWEEP_RATES)]:
        if top20:
            calibration.policy_thresholds[f"entropy{key}"] = quantile_threshold(top20, rate)
        if zs:
            calibration.policy_thresholds[f"rank{key}"] = quantile_threshold(zs, rate)
        if key and scores:
            calibration.policy_thresholds[f"rankguide{key}"] = quantile_threshold(scores, rate)
    policy_aurocs = {
        "rankguide": auroc(scores, [r.failing for r in rows]) if scores else None,
        # As the policies use them: entropy escalates high values, rank its oriented z-score.
        "entropy": _auroc_of(steps, ENTROPY_TOP20, oriented=False),
        "rank": _auroc_of(steps, rank_signal) if rank_signal else None,
    }
    calibration.notes = (
        f"fitted on {len(steps)} SRM steps ({sum(s.failing for s in steps)} failing); "
        f"combination {combined}; target escalation rate {target_rate}"
    )
    fitted_rate = sum(1 for s in scores if s >= calibration.threshold) / max(1, len(scores))
    return CalibrationReport(
        n_steps=len(steps),
        failing_rate=sum(s.failing for s in steps) / len(steps),
        signals=reports,
        calibration=calibration,
        chosen_rank_signal=rank_signal,
        fitted_escalation_rate=fitted_rate,
        notes=notes,
        policy_aurocs=policy_aurocs,
    )


def _auroc_of(steps: Sequence[LabelledStep], name: str, oriented: bool = True) -> float | None:
    """AUROC of one signal for failing; ``oriented`` takes the better of the two directions."""
    rows = [s for s in steps if s.signals.get(name) is not None]
    area = auroc([float(s.signals[name] or 0.0) for s in rows], [s.failing for s in rows])
    if area is None or not oriented:
        return area
    return max(area, 1 - area)


StepLabeller = Callable[[Any, list[dict[str, Any]]], list[bool]]
"""Labels an SRM trace: ``(problem, step records) -> failing flag per step``."""


def verifier_labels(task: Any) -> StepLabeller:
    """Label steps with a task's step verifier (the demo's exact one).

    A step is failing when the verifier judges it wrong. On the demo task (problems carrying
    the parsed demo problem as ``payload``) steps of a heavy-revalidation run (3+ consecutive
    reflections or a repeat) are failing too, since they waste the budget.
    """
    from langchain_rankguide.demo.task import revalidation_flags, verify_steps

    def label(problem: Any, records: list[dict[str, Any]]) -> list[bool]:
        texts = [r["text"] for r in records]
        payload = getattr(problem, "payload", None)
        if payload is None:
            return [flag is False for flag in task.step_labels(problem, texts)]
        verdict = verify_steps(payload, texts)
        heavy = revalidation_flags(verdict.labels)
        flags = [
            label.correct is False or bool(flag)
            for label, flag in zip(verdict.labels, heavy, strict=False)
        ]
        return flags + [False] * (len(records) - len(flags))

    return label


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def steps_agree(srm_text: str, lrm_text: str) -> bool:
    """Whether the LRM's version of a step says what the SRM's does.

    Equal after collapsing whitespace and case, or -- since in reasoning traces the numbers
    carry the content -- the same non-empty sequence of numbers.
    """

    def norm(text: str) -> str:
        return " ".join(text.lower().split())

    if norm(srm_text) == norm(lrm_text):
        return True
    a, b = _NUMBER.findall(srm_text), _NUMBER.findall(lrm_text)
    return bool(a) and a == b


def lrm_agreement_labels(pipeline: Any) -> StepLabeller:
    """Label steps by agreement with the LRM, for tasks without a step verifier.

    For each SRM step the LRM writes the step from the same prefix (greedy, as configured);
    the SRM step is failing when the two disagree (:func:`steps_agree`). With a local LRM the
    prefix is kept in one KV cache (the LRM's draft is discarded and the SRM's step appended);
    a remote LRM is restarted from the committed prefix for each step.
    """
    from langchain_rankguide.pipeline import RunOptions

    max_new = pipeline.config.steps.max_step_tokens

    def local(problem: Any, records: list[dict[str, Any]]) -> list[bool]:
        from langchain_rankguide.engine import StepEngine
        from langchain_rankguide.lrm import render_prompt

        loaded = pipeline.lrm_loaded()
        engine = StepEngine(loaded, role="lrm", settings=pipeline.step_settings)
        kwargs = pipeline.config.prompt.chat_template_kwargs
        prompt = render_prompt(loaded.tokenizer, pipeline.messages(problem.question), **kwargs)
        engine.start(prompt + pipeline.config.prompt.assistant_prefix)
        flags = []
        for index, record in enumerate(records):
            if engine.finished:
                flags.append(False)
                continue
            draft = engine.draft_step(max_new_tokens=max_new, step_index=index)
            flags.append(not steps_agree(record["text"], draft.text))
            engine.discard(draft)
            engine.append_text(record["text"], ends_trace=record.get("finish_reason") == "eos")
        return flags

    def remote(problem: Any, records: list[dict[str, Any]]) -> list[bool]:
        from langchain_rankguide.schemas import StepRecord

        committed = [StepRecord.from_dict(r) for r in records]
        flags = []
        for index, record in enumerate(records):
            lrm = pipeline.make_lrm(RunOptions())
            try:
                lrm.begin(pipeline.messages(problem.question), committed[:index])
                written = lrm.write_step(max_new_tokens=max_new)
            finally:
                lrm.close()
            flags.append(not steps_agree(record["text"], written.text))
        return flags

    return local if pipeline.config.lrm.provider == "hf_local" else remote


def collect_steps(
    pipeline: Any,
    problems: Sequence[Any],
    labeller: StepLabeller,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> list[LabelledStep]:
    """Run the SRM alone on ``problems`` (objects with ``.question``) and label its steps.

    Args:
        pipeline: a pipeline whose configuration computes every signal (diagnostics on).
        problems: the calibration problems.
        labeller: :func:`verifier_labels` or :func:`lrm_agreement_labels`.
        progress: called with (problems done, problems in total).

    Returns:
        One labelled step per SRM step.
    """
    from langchain_rankguide.app import RankGuideApp
    from langchain_rankguide.pipeline import RunOptions

    app = RankGuideApp(pipeline)
    steps: list[LabelledStep] = []
    for done, problem in enumerate(problems, 1):
        records = app.invoke(problem.question, RunOptions(policy="srm")).steps
        for index, (record, failing) in enumerate(
            zip(records, labeller(problem, records), strict=False)
        ):
            steps.append(LabelledStep(record["signals"], bool(failing), record["tokens"], index))
        if progress is not None:
            progress(done, len(problems))
    return steps


def collect_demo_steps(
    pipeline: Any,
    n: int,
    *,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> list[LabelledStep]:
    """Run the SRM alone on ``n`` demo calibration problems and label them with the verifier."""
    from langchain_rankguide.bench.tasks import DemoTask

    task = DemoTask()
    problems = task.calibration_problems(n, seed)
    return collect_steps(pipeline, problems, verifier_labels(task), progress=progress)


# --------------------------------------------------------------------------- plots


def plot_distributions(
    steps: Sequence[LabelledStep],
    reports: Sequence[SignalReport],
    path: str | Path,
    *,
    max_signals: int = 12,
    always: Sequence[str] = (ENTROPY, ENTROPY_TOP20),
) -> bool:
    """Histogram each signal on good and failing steps; ``False`` when matplotlib is missing.

    The signals shown are those in ``always`` plus the best by AUROC, up to ``max_signals``;
    each panel's title gives the AUROC overall and within equal step length.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    by_name = {r.name: r for r in reports}
    ranked = sorted(reports, key=lambda r: -(r.auroc or 0.0))
    names = [n for n in always if n in by_name]
    names += [r.name for r in ranked if r.name not in names]
    names = names[:max_signals]
    if not names:
        return False
    cols = 4
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for axis, name in zip(axes.flat, names, strict=False):
        good = [
            float(s.signals[name] or 0.0)
            for s in steps
            if s.signals.get(name) is not None and not s.failing
        ]
        bad = [
            float(s.signals[name] or 0.0)
            for s in steps
            if s.signals.get(name) is not None and s.failing
        ]
        values = good + bad
        low, high = min(values), max(values)
        bins = 30 if high > low else 1
        span = (low, high) if high > low else (low - 0.5, high + 0.5)
        for values_of, label in ((good, "good"), (bad, "failing")):
            if values_of:  # a density of nothing divides by zero
                axis.hist(values_of, bins=bins, range=span, density=True, alpha=0.55, label=label)
        r = by_name[name]
        def show(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}"

        axis.set_title(
            f"{name}\nAUROC {show(r.auroc)}; within length {show(r.auroc_within_length)}, "
            f"position {show(r.auroc_within_position)}",
            fontsize=8,
        )
        axis.tick_params(labelsize=7)
    for axis in list(axes.flat)[len(names) :]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
