"""Extract steering vectors from SRM thoughts: SEAL, rank-filtered, and two controls.

A *thought* is one step of an SRM trace; its representation is the residual stream entering
block ``l`` at the delimiter token that opens it (the last token of the previous step), which
is exactly where :mod:`~langchain_rankguide.steering.apply` adds the vector. Thoughts are
labelled by keyword rules (:func:`~langchain_rankguide.signals.label_thought`).

Vectors (all with the sign ``mean(execution) - mean(reflection + transition)``):

* **SEAL**: the mean difference over every thought.
* **rank-filtered**: the same after keeping only thoughts whose rank signal *passes* the
  threshold: ``rank >= k`` with ``keep="above"`` (default), ``rank <= k`` with
  ``keep="below"``. ``k`` is absolute, or the given percentile of the rank values of all
  candidate thoughts pooled (labels together).
* **length-matched control**: keeps, per label, as many thoughts as the rank filter kept,
  chosen by token count alone (the longest for ``keep="above"``, the shortest for ``"below"``),
  from the same candidates. Rank grows with length, so this separates "high rank" from "long".
* **random control**: a seeded Gaussian direction with the norm of the chosen vector.

Example:
    >>> import torch
    >>> records = [
    ...     ThoughtRecord("12 + 3 = 15.", torch.tensor([1.0, 0.0]), rank=9.0, n_tokens=8),
    ...     ThoughtRecord("Wait, check 12 + 3.", torch.tensor([0.0, 1.0]), rank=7.0, n_tokens=9),
    ... ]
    >>> build_vectors(records, layer=1).seal.vector.tolist()
    [1.0, -1.0]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from langchain_rankguide.signals import (
    DEFAULT_SETTINGS,
    ReflectionRules,
    SignalInputs,
    SignalSettings,
    ThoughtLabel,
    compute_signals,
    label_thought,
    required_captures,
)
from langchain_rankguide.steering.vector import SteeringError, SteeringMethod, SteeringVector

LABELS: tuple[ThoughtLabel, ...] = ("execution", "reflection", "transition")
DEFAULT_RANK_SIGNAL = "rank.effective"
"""Rank of the thought's own token states (docs/signals.md, step matrix rank)."""

Keep = Literal["above", "below"]


@dataclass(frozen=True)
class ThoughtRecord:
    """One thought of an SRM trace, as extraction needs it.

    Attributes:
        text: the thought's text.
        state: ``(d,)`` residual stream entering block ``l`` at the delimiter opening it.
        rank: the thought's rank signal (``None`` when it could not be measured).
        n_tokens: tokens the thought spans (the length-matched control sorts on it).
        correct: the verifier's judgement of the thought (``None``: not judged).
        trace_correct: whether the trace it belongs to reached the right answer.
        problem_id: the problem it came from.
        step_index: its index in the trace.
    """

    text: str
    state: torch.Tensor
    rank: float | None = None
    n_tokens: int = 0
    correct: bool | None = None
    trace_correct: bool | None = None
    problem_id: str = ""
    step_index: int = 0


@dataclass(frozen=True)
class RankFilter:
    """Which thoughts pass the rank threshold.

    Exactly one of ``k`` (absolute) and ``percentile`` (0-100, over the rank values of every
    candidate thought, labels pooled) is set.

    Attributes:
        signal: the rank signal's registry name (recorded in the metadata).
        k: absolute threshold.
        percentile: percentile threshold (linear interpolation between values).
        keep: ``"above"`` keeps ``rank >= threshold``; ``"below"`` keeps ``rank <= threshold``.

    Raises:
        SteeringError: when neither or both thresholds are set, or for a bad percentile.
    """

    signal: str = DEFAULT_RANK_SIGNAL
    k: float | None = None
    percentile: float | None = None
    keep: Keep = "above"

    def __post_init__(self) -> None:
        if (self.k is None) == (self.percentile is None):
            raise SteeringError("set exactly one of k (absolute) and percentile")
        if self.percentile is not None and not 0.0 <= self.percentile <= 100.0:
            raise SteeringError(f"percentile must lie in [0, 100], got {self.percentile}")
        if self.keep not in ("above", "below"):
            raise SteeringError(f"keep must be 'above' or 'below', got {self.keep!r}")

    def threshold(self, values: Sequence[float]) -> float:
        """Return the absolute threshold for these candidate values."""
        if self.k is not None:
            return float(self.k)
        assert self.percentile is not None
        if not values:
            raise SteeringError("no thought has a rank value: cannot take a percentile")
        data = torch.tensor(list(values), dtype=torch.float64)
        return float(torch.quantile(data, self.percentile / 100.0))

    def passes(self, value: float, threshold: float) -> bool:
        """Whether one rank value passes ``threshold``."""
        return value >= threshold if self.keep == "above" else value <= threshold


@dataclass
class ExtractionResult:
    """The vectors of one extraction and what went into them.

    Attributes:
        seal: plain SEAL vector.
        rank_filtered: rank-filtered vector (``None`` without a filter).
        length_matched: length-matched control (``None`` without a filter).
        random: random direction with the norm of :attr:`chosen`.
        labels: the label of every record, in order.
        kept: indices of the records the rank filter kept.
        length_kept: indices the length-matched control kept.
    """

    seal: SteeringVector
    rank_filtered: SteeringVector | None
    length_matched: SteeringVector | None
    random: SteeringVector
    labels: list[ThoughtLabel]
    kept: list[int] = field(default_factory=list)
    length_kept: list[int] = field(default_factory=list)

    @property
    def chosen(self) -> SteeringVector:
        """The rank-filtered vector when there is one, else SEAL."""
        return self.rank_filtered if self.rank_filtered is not None else self.seal

    def vectors(self) -> dict[str, SteeringVector]:
        """Every vector made, by method name."""
        out = {"seal": self.seal, "random": self.random}
        if self.rank_filtered is not None:
            out["rank_filtered"] = self.rank_filtered
        if self.length_matched is not None:
            out["length_matched"] = self.length_matched
        return out

    def summary(self) -> dict[str, Any]:
        """JSON summary: sample counts, norms and cosine similarity to the SEAL vector."""
        seal = self.seal.vector
        rows = {}
        for name, vec in self.vectors().items():
            cosine = torch.nn.functional.cosine_similarity(vec.vector, seal, dim=0)
            rows[name] = {
                "norm": vec.norm,
                "cosine_to_seal": float(cosine),
                "samples": dict(vec.samples),
            }
        return {"labels": dict(Counter(self.labels)), "vectors": rows}


# --------------------------------------------------------------------------- the math


def label_thoughts(
    records: Sequence[ThoughtRecord], rules: ReflectionRules | None = None
) -> list[ThoughtLabel]:
    """Label every record reflection / transition / execution by the cue rules."""
    rules = rules or ReflectionRules()
    return [label_thought(r.text, rules) for r in records]


def _stack(records: Sequence[ThoughtRecord], indices: Sequence[int]) -> torch.Tensor:
    states = [records[i].state.detach().reshape(-1).to("cpu", torch.float64) for i in indices]
    sizes = {s.numel() for s in states}
    if len(sizes) > 1:
        raise SteeringError(f"thought states differ in size: {sorted(sizes)}")
    return torch.stack(states)


def mean_difference(
    records: Sequence[ThoughtRecord], labels: Sequence[ThoughtLabel], indices: Sequence[int]
) -> tuple[torch.Tensor, dict[str, int]]:
    """Return ``mean(execution) - mean(reflection + transition)`` over ``indices`` and counts.

    Raises:
        SteeringError: when either side has no thought.
    """
    positive = [i for i in indices if labels[i] == "execution"]
    negative = [i for i in indices if labels[i] != "execution"]
    counts = Counter(labels[i] for i in indices)
    samples: dict[str, int] = {label: counts.get(label, 0) for label in LABELS}
    samples["total"] = len(indices)
    if not positive or not negative:
        missing = "execution" if not positive else "reflection or transition"
        raise SteeringError(
            f"no {missing} thought among the {len(indices)} selected: the mean difference "
            "needs both sides (more problems, or a looser filter)"
        )
    vector = _stack(records, positive).mean(0) - _stack(records, negative).mean(0)
    return vector.float(), samples


def rank_filter_indices(
    records: Sequence[ThoughtRecord], candidates: Sequence[int], rank_filter: RankFilter
) -> tuple[list[int], float]:
    """Return the candidates whose rank passes the filter, and the absolute threshold used.

    Candidates without a rank value never pass.
    """
    measured = [i for i in candidates if records[i].rank is not None]
    threshold = rank_filter.threshold([float(records[i].rank) for i in measured])  # type: ignore[arg-type]
    kept = [i for i in measured if rank_filter.passes(float(records[i].rank), threshold)]  # type: ignore[arg-type]
    return kept, threshold


def length_matched_indices(
    records: Sequence[ThoughtRecord],
    labels: Sequence[ThoughtLabel],
    candidates: Sequence[int],
    per_label: dict[str, int],
    *,
    longest: bool = True,
) -> list[int]:
    """Keep ``per_label[label]`` candidates of each label chosen by token count alone.

    Ties keep the earlier record, so the choice is deterministic.
    """
    chosen: list[int] = []
    for label in LABELS:
        pool = [i for i in candidates if labels[i] == label]
        pool.sort(key=lambda i: -records[i].n_tokens if longest else records[i].n_tokens)
        chosen.extend(pool[: per_label.get(label, 0)])
    return sorted(chosen)


def random_direction(hidden_size: int, norm: float, seed: int = 0) -> torch.Tensor:
    """Return a seeded Gaussian direction of the given norm (float32, CPU)."""
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(hidden_size, generator=generator, dtype=torch.float64)
    return (direction * (norm / float(torch.linalg.vector_norm(direction)))).float()


def build_vectors(
    records: Sequence[ThoughtRecord],
    *,
    layer: int,
    rank_filter: RankFilter | None = None,
    rules: ReflectionRules | None = None,
    correct_only: bool = False,
    model_identity: str | None = None,
    num_layers: int | None = None,
    seed: int = 0,
    extra: dict[str, Any] | None = None,
) -> ExtractionResult:
    """Build the SEAL vector, the rank-filtered vector and both controls from thoughts.

    Args:
        records: the thoughts.
        layer: the layer their states were read at (and the vectors will be added at).
        rank_filter: the rank filter; ``None`` makes only SEAL and the random control.
        rules: cue rules for the labels (default: the built-in ones).
        correct_only: drop thoughts the verifier judged wrong (``correct is False``).
        model_identity: the SRM's identity, stored in every vector.
        num_layers: the SRM's depth, stored in every vector.
        seed: seed of the random control.
        extra: more JSON metadata stored in every vector.

    Returns:
        The vectors and the selections.

    Raises:
        SteeringError: when a selection lacks execution or reflection/transition thoughts.
    """
    if not records:
        raise SteeringError("no thoughts to extract a steering vector from")
    labels = label_thoughts(records, rules)
    candidates = [i for i, r in enumerate(records) if not (correct_only and r.correct is False)]
    common: dict[str, Any] = {
        "layer": layer,
        "model_identity": model_identity,
        "num_layers": num_layers,
        "extra": {**(extra or {}), "correct_only": correct_only},
    }

    def make(
        method: SteeringMethod, vector: torch.Tensor, samples: dict[str, int], filt: Any
    ) -> SteeringVector:
        return SteeringVector(vector=vector, method=method, samples=samples, filter=filt, **common)

    seal_vec, seal_samples = mean_difference(records, labels, candidates)
    seal = make("seal", seal_vec, seal_samples, None)
    rank_filtered = length_matched = None
    kept: list[int] = []
    length_kept: list[int] = []
    if rank_filter is not None:
        kept, threshold = rank_filter_indices(records, candidates, rank_filter)
        measured = [i for i in candidates if records[i].rank is not None]
        description = {
            "signal": rank_filter.signal,
            "k": rank_filter.k,
            "percentile": rank_filter.percentile,
            "threshold": threshold,
            "keep": rank_filter.keep,
            "rule": f"rank {'>=' if rank_filter.keep == 'above' else '<='} {threshold:.6g}",
            "candidates": len(measured),
            "kept": len(kept),
        }
        vec, samples = mean_difference(records, labels, kept)
        rank_filtered = make("rank_filtered", vec, samples, description)
        per_label: dict[str, int] = {label: samples[label] for label in LABELS}
        longest = rank_filter.keep == "above"
        length_kept = length_matched_indices(records, labels, measured, per_label, longest=longest)
        vec, samples = mean_difference(records, labels, length_kept)
        length_matched = make(
            "length_matched",
            vec,
            samples,
            {
                "control_for": description,
                "selection": f"{'longest' if longest else 'shortest'} thoughts per label",
                "per_label": per_label,
            },
        )
    chosen = rank_filtered if rank_filtered is not None else seal
    random = make(
        "random",
        random_direction(seal.hidden_size, chosen.norm, seed),
        dict(chosen.samples),
        {"seed": seed, "norm_of": chosen.method},
    )
    return ExtractionResult(
        seal=seal,
        rank_filtered=rank_filtered,
        length_matched=length_matched,
        random=random,
        labels=labels,
        kept=kept,
        length_kept=length_kept,
    )


# --------------------------------------------------------------------------- collection


def collect_thoughts(
    loaded: Any,
    problems: Sequence[Any],
    *,
    layer: int,
    prompt_for: Callable[[Any], str],
    rank_signal: str = DEFAULT_RANK_SIGNAL,
    rank_layer: int | None = None,
    settings: Any = None,
    signal_settings: SignalSettings = DEFAULT_SETTINGS,
    max_steps: int = 48,
    window: int = 16,
    cross_step_window: int = 8,
    answer_markers: Sequence[str] = ("Answer:",),
    verify: Callable[[Any, list[str]], Any] | None = None,
    include_first: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[ThoughtRecord]:
    """Run the SRM greedily on ``problems`` through the step engine and record its thoughts.

    The first step is skipped unless ``include_first``: the token before it ends the prompt,
    not a delimiter, so delimiter steering never acts there.

    Args:
        loaded: the SRM (:class:`~langchain_rankguide.engine.LoadedModel`).
        problems: objects passed to ``prompt_for`` and ``verify`` (``.id`` is recorded if any).
        layer: steering layer: the opening state is read here.
        prompt_for: problem -> rendered prompt text (chat template applied).
        rank_signal: registry name of the rank signal per thought.
        rank_layer: layer of the rank signal (default: ``layer``).
        settings: :class:`~langchain_rankguide.engine.StepSettings` (delimiter, step cap).
        signal_settings: how the rank signal is computed.
        max_steps: most steps per problem.
        window: window of ``rank.window.*`` signals.
        cross_step_window: window of ``rank.cross_step*`` signals.
        answer_markers: a step opening with one of these ends the trace.
        verify: ``(problem, step_texts) -> verdict`` with ``.labels[i].correct`` and
            ``.correct`` (e.g. :func:`langchain_rankguide.demo.task.verify_steps`).
        include_first: also record the first step of each trace.
        progress: called with ``(done, total)`` after each problem.

    Returns:
        One record per recorded thought, in problem and step order.
    """
    from langchain_rankguide.engine import CaptureSettings, StepEngine, StepSettings

    signal_layer = layer if rank_layer is None else rank_layer
    needs = required_captures([rank_signal])
    capture = CaptureSettings(
        layers=tuple(sorted({layer, signal_layer})),
        step_hidden=bool(needs & {"step_hidden", "multi_layer"}),
        window=window if "window_hidden" in needs else 0,
        opening_states=cross_step_window if "opening_states" in needs else 1,
    )
    engine = StepEngine(loaded, role="srm", settings=settings or StepSettings(), capture=capture)
    markers = tuple(answer_markers)

    def is_answer(draft: Any) -> bool:
        return bool(markers) and draft.text.lstrip().startswith(markers)

    records: list[ThoughtRecord] = []
    for done, problem in enumerate(problems, start=1):
        engine.start(prompt_for(problem))
        drafts = list(engine.generate_steps(max_steps, should_stop=is_answer))
        texts = [d.text for d in drafts]
        verdict = verify(problem, texts) if verify is not None else None
        for index, draft in enumerate(drafts):
            if (index == 0 and not include_first) or not draft.text.strip():
                continue
            opening = draft.opening_states.get(layer)
            if opening is None or not len(opening):
                continue
            values, _ = compute_signals(
                [rank_signal],
                SignalInputs(
                    step_hidden=draft.step_hidden,
                    window_hidden=draft.window_hidden,
                    opening_states=draft.opening_states,
                    text=draft.text,
                    previous_texts=texts[:index],
                    n_tokens=draft.n_tokens,
                    primary_layer=signal_layer,
                ),
                signal_settings,
            )
            label = verdict.labels[index] if verdict is not None else None
            records.append(
                ThoughtRecord(
                    text=draft.text,
                    state=opening[-1].detach().float().cpu(),
                    rank=values[rank_signal],
                    n_tokens=draft.n_tokens,
                    correct=getattr(label, "correct", None),
                    trace_correct=getattr(verdict, "correct", None),
                    problem_id=str(getattr(problem, "id", done - 1)),
                    step_index=index,
                )
            )
        if progress is not None:
            progress(done, len(problems))
    return records
