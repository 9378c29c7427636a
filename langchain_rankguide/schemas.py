r"""Shared record formats: the contract between the engine, graph, chat models and server.

Everything here is JSON-native (``to_dict``/``from_dict`` round-trip through ``json``), has no
tensors and imports neither pydantic nor LangChain, so the engine can use it on a bare
torch + transformers install and checkpoints can store it as is.

Example:
    >>> rec = StepRecord(index=0, author="srm", text="12 + 5 = 17, total 17.\\n\\n", tokens=9)
    >>> StepRecord.from_dict(rec.to_dict()) == rec
    True
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

# typing_extensions' TypedDict: pydantic (LangGraph's JSON schemas) rejects typing's before 3.12.
from typing_extensions import TypedDict

from langchain_rankguide.errors import CalibrationError

Author = Literal["srm", "lrm"]
"""Which model wrote a step."""

PolicyName = Literal[
    "rankguide",
    "rankguide-paper",
    "rank",
    "entropy",
    "specreason",
    "keyword",
    "random",
    "srm",
    "lrm",
]
"""A routing policy's name, as configuration and the command line spell it."""

FailureMode = Literal["overconfidence", "uncertainty", "heavy_revalidation", "numerical_fault"]
"""Why a step was judged likely to fail (``None`` on a record means no failure mode fired)."""

FAILURE_MODES: tuple[str, ...] = get_args(FailureMode)

Decision = Literal["accept", "escalate", "forced"]
"""What the guard did with a step: kept the SRM draft, handed it to the LRM, or a policy forced the
author (``srm``/``lrm`` policies, budget rules)."""

FinishReason = Literal["delimiter", "end_marker", "stop", "eos", "max_tokens", "budget"]
"""Why a step's generation stopped (``stop``: a per-call stop string)."""

ChatFinishReason = Literal["stop", "length"]
"""A run's end in chat terms (OpenAI's ``finish_reason``): ``length`` when a limit cut it."""


def chat_finish_reason(
    stop_reason: str | None, steps: Iterable[Mapping[str, Any]] = ()
) -> ChatFinishReason:
    """The chat ``finish_reason`` of a run: ``length`` or ``stop``.

    ``length`` when the run hit its token budget (``thinking_budget``, which a chat call's
    ``max_tokens`` sets) -- even when an answer was then forced inside the reserve, since the
    reasoning was cut short -- and when it hit the step cap without an answer. Every other end
    is ``stop``: an answer (one forced at the step cap included), EOS, the end-of-thinking
    marker, a repetition stop. The one mapping of the chat models, the server and the graph's
    reply.

    Args:
        stop_reason: the graph's stop reason (``answer``, ``eos``, ``budget``, ...).
        steps: the committed step records (``StepRecord.to_dict()``).
    """
    if stop_reason == "budget":
        return "length"
    if stop_reason == "max_steps" and not any(s.get("is_answer") for s in steps):
        return "length"
    return "stop"


SignalValue = float | None
"""A signal's value: a finite float, or ``None`` with a reason recorded beside it."""


class Usage(TypedDict):
    """Tokens one model processed: ``prefill_tokens`` fed as input, ``decode_tokens`` generated."""

    prefill_tokens: int
    decode_tokens: int


def empty_usage() -> Usage:
    """Return a zeroed :class:`Usage`."""
    return {"prefill_tokens": 0, "decode_tokens": 0}


def add_usage(total: Usage, more: Usage, *, sign: int = 1) -> Usage:
    """Return ``total + more`` (``total - more`` with ``sign=-1``) as a new :class:`Usage`."""
    return {
        "prefill_tokens": int(total["prefill_tokens"]) + sign * int(more["prefill_tokens"]),
        "decode_tokens": int(total["decode_tokens"]) + sign * int(more["decode_tokens"]),
    }


ROLES: tuple[str, str] = ("srm", "lrm")
"""The two models of a collaboration, as usage and token ids name them."""


def sum_usage(usages: Iterable[Usage]) -> Usage:
    """Add up several :class:`Usage` records (both models of a run, or many runs)."""
    total = empty_usage()
    for usage in usages:
        total = add_usage(total, usage)
    return total


def merge_usage(
    left: Mapping[str, Usage] | None, right: Mapping[str, Usage] | None
) -> dict[str, Usage]:
    """Add per-model usage model by model (the graph state's reducer)."""
    total = {model: add_usage(empty_usage(), u) for model, u in (left or {}).items()}
    for model, usage in (right or {}).items():
        total[model] = add_usage(total.get(model, empty_usage()), usage)
    return total


def usage_delta(before: Mapping[str, Usage], after: Mapping[str, Usage]) -> dict[str, Usage]:
    """Per-model usage added between two readings (``after - before``)."""
    return {
        model: add_usage(usage, before.get(model, empty_usage()), sign=-1)
        for model, usage in after.items()
    }


def usage_by_role(usage: Mapping[str, Usage] | None) -> dict[str, Usage]:
    """Per-model usage of both roles (``srm`` then ``lrm``), zero for a model that never ran."""
    usage = usage or {}
    return {role: add_usage(empty_usage(), usage.get(role, empty_usage())) for role in ROLES}


def clean_signal(value: Any) -> SignalValue:
    """Coerce a signal value to ``float | None``: NaN and infinities become ``None``."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class StepRecord:
    """One committed reasoning step.

    Attributes:
        index: position of the step in the trace, from 0.
        author: the model whose text was committed.
        text: the committed text, ending exactly at the end of the delimiter (or at an end
            marker / EOS for the last step).
        tokens: number of tokens of ``text`` in the author's tokenizer.
        token_ids: the step's token ids per model (``"srm"``/``"lrm"``), as each model's cache
            holds them; used to rebuild engine caches when a run resumes.
        signals: signal name -> value (see :data:`SIGNALS`); ``None`` values have a reason in
            ``signal_notes``.
        signal_notes: signal name -> why its value is ``None``.
        decision: what the guard did (see :data:`Decision`).
        escalated: ``True`` when the LRM wrote (or was asked to write) this step.
        score: the router's score for the SRM draft (higher means more likely to fail).
        router: name of the routing policy that decided.
        failure_mode: the failure mode that fired, or ``None``.
        reason: a short human-readable account of the decision.
        draft_text: the discarded SRM draft when the step was escalated after drafting.
        latency_s: wall time spent on this step, discarded drafts and routing included.
        draft_latency_s: the part of ``latency_s`` spent on a discarded draft.
        finish_reason: why generation of the committed text stopped.
        is_answer: ``True`` for the final-answer step.
        fallback: set when a configured fallback replaced the intended author (e.g. the LRM
            failed and the SRM draft was kept); names what happened.
    """

    index: int
    author: Author
    text: str
    tokens: int = 0
    token_ids: dict[str, list[int]] = field(default_factory=dict)
    signals: dict[str, SignalValue] = field(default_factory=dict)
    signal_notes: dict[str, str] = field(default_factory=dict)
    decision: Decision = "accept"
    escalated: bool = False
    score: float | None = None
    router: str = ""
    failure_mode: FailureMode | None = None
    reason: str = ""
    draft_text: str | None = None
    latency_s: float = 0.0
    draft_latency_s: float = 0.0
    finish_reason: FinishReason = "delimiter"
    is_answer: bool = False
    fallback: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-native dict (NaN-free)."""
        data = asdict(self)
        data["signals"] = {k: clean_signal(v) for k, v in self.signals.items()}
        data["score"] = clean_signal(self.score)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepRecord:
        """Build a record from :meth:`to_dict` output; unknown keys are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class StepEvent:
    """The stream event emitted once per committed step (LangGraph ``custom`` stream mode).

    Attributes:
        type: always ``"rankguide.step"`` so consumers can filter custom events.
        run_id: the run (LangGraph thread) the step belongs to.
        step: the committed step record, as :meth:`StepRecord.to_dict` returns it.
        usage: per-model usage so far in this run.
        withdrawn: ``True`` when the event withdraws ``step`` instead (a rollback: the LRM
            rewrites it next, under the same index).
    """

    run_id: str
    step: dict[str, Any]
    usage: dict[str, Usage] = field(default_factory=dict)
    type: str = "rankguide.step"
    withdrawn: bool = False

    @classmethod
    def from_step(
        cls, run_id: str, step: StepRecord, usage: dict[str, Usage], *, withdrawn: bool = False
    ) -> StepEvent:
        """Build the event for a committed (or withdrawn) step."""
        return cls(
            run_id=run_id,
            step=step.to_dict(),
            usage={k: dict(v) for k, v in usage.items()},  # type: ignore[misc]
            withdrawn=withdrawn,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-native dict."""
        return asdict(self)


# --------------------------------------------------------------------------- signal registry


SignalCost = Literal["hot", "diagnostic"]


@dataclass(frozen=True)
class SignalSpec:
    """What a named signal means.

    Attributes:
        name: stable dotted name, e.g. ``rank.energy``.
        description: one line on what is measured.
        needs: the engine capture it needs: ``"step_hidden"``, ``"window_hidden"``,
            ``"multi_layer"`` (several signal layers), ``"opening_states"``, ``"logprobs"``,
            ``"first_token"`` or ``"text"``.
        value_range: documented range of finite values, ``(low, high)``; ``None`` = unbounded.
        failing_direction: ``+1`` if larger values are expected to mean a failing step, ``-1``
            if smaller, ``0`` if unknown. Calibration decides the real direction.
        pre_step: ``True`` if the value is known before the SRM drafts the step.
    """

    name: str
    description: str
    needs: str
    value_range: tuple[float | None, float | None] = (0.0, None)
    failing_direction: int = 0
    pre_step: bool = False


def _rank_specs(prefix: str, what: str, needs: str) -> list[SignalSpec]:
    return [
        SignalSpec(f"{prefix}.energy", f"energy rank (eta) of {what}", needs, (0.0, None), 0),
        SignalSpec(
            f"{prefix}.energy_norm",
            f"energy rank of {what} / max attainable rank",
            needs,
            (0.0, 1.0),
        ),
        SignalSpec(f"{prefix}.numerical", f"numerical rank (s_i > eps*s_1) of {what}", needs),
        SignalSpec(
            f"{prefix}.numerical_norm",
            f"numerical rank of {what} / max attainable rank",
            needs,
            (0.0, 1.0),
        ),
        SignalSpec(f"{prefix}.effective", f"effective rank exp(H(s/sum s)) of {what}", needs),
        SignalSpec(
            f"{prefix}.effective_norm",
            f"effective rank of {what} / max attainable rank",
            needs,
            (0.0, 1.0),
        ),
        SignalSpec(f"{prefix}.stable", f"stable rank sum s^2 / s_1^2 of {what}", needs),
        SignalSpec(
            f"{prefix}.stable_norm",
            f"stable rank of {what} / max attainable rank",
            needs,
            (0.0, 1.0),
        ),
    ]


def _build_registry() -> dict[str, SignalSpec]:
    specs = [
        *_rank_specs("rank", "the step's hidden-state matrix (n tokens x d)", "step_hidden"),
        *_rank_specs("rank.window", "the last W tokens' hidden states", "window_hidden"),
        SignalSpec(
            "rank.tensor",
            "token-mode energy rank of the L x n x d step tensor (HOSVD)",
            "multi_layer",
        ),
        SignalSpec(
            "rank.tensor_norm",
            "rank.tensor / max attainable rank (min(n-1, L*d) centred)",
            "multi_layer",
            (0.0, 1.0),
        ),
        SignalSpec(
            "rank.cross_step",
            "energy rank of the last W step-opening states (W x d)",
            "opening_states",
            (0.0, None),
            -1,
        ),
        SignalSpec(
            "rank.cross_step_norm",
            "rank.cross_step / max attainable rank (min(W-1, d) centred)",
            "opening_states",
            (0.0, 1.0),
            -1,
        ),
        SignalSpec(
            "entropy.first_token",
            "entropy (nats) of the step's first-token distribution",
            "first_token",
            (0.0, None),
            +1,
            True,
        ),
        SignalSpec(
            "entropy.first_token_top20",
            "entropy over the renormalised top-20 first-token log-probs (GlimpRouter)",
            "first_token",
            (0.0, None),
            +1,
            True,
        ),
        SignalSpec(
            "entropy.mean", "mean per-token entropy (nats) of the step", "logprobs", (0.0, None), +1
        ),
        SignalSpec(
            "entropy.max", "max per-token entropy (nats) of the step", "logprobs", (0.0, None), +1
        ),
        SignalSpec(
            "entropy.q50",
            "median per-token entropy (nats) of the step",
            "logprobs",
            (0.0, None),
            +1,
        ),
        SignalSpec(
            "entropy.q90",
            "90th percentile of the step's per-token entropies (nats)",
            "logprobs",
            (0.0, None),
            +1,
        ),
        SignalSpec(
            "prob.min",
            "smallest probability of a chosen token in the step",
            "logprobs",
            (0.0, 1.0),
            -1,
        ),
        SignalSpec(
            "logprob.mean", "mean log-probability of the chosen tokens", "logprobs", (None, 0.0), -1
        ),
        SignalSpec("step.tokens", "number of tokens in the step", "text", (0.0, None), 0),
        SignalSpec(
            "reflection.cue",
            "1 if the step starts a re-check (reflection cue rules), else 0",
            "text",
            (0.0, 1.0),
            +1,
        ),
        SignalSpec(
            "reflection.streak",
            "consecutive reflection steps ending with this one",
            "text",
            (0.0, None),
            +1,
        ),
        SignalSpec(
            "step.repeat",
            "1 if the step repeats an earlier step verbatim, else 0",
            "text",
            (0.0, 1.0),
            +1,
        ),
        SignalSpec(
            "context.position", "the step's index in the trace (0 = first)", "text", (0.0, None), 0
        ),
        SignalSpec(
            "context.after_reflection",
            "1 if the previous step was a reflection (a re-check), else 0",
            "text",
            (0.0, 1.0),
            +1,
        ),
        SignalSpec(
            "context.answer",
            "1 if the step opens with an answer marker (steps.answer_markers), else 0",
            "text",
            (0.0, 1.0),
            0,
        ),
    ]
    return {spec.name: spec for spec in specs}


SIGNALS: dict[str, SignalSpec] = _build_registry()
"""Every signal the package can compute, by stable dotted name."""


# --------------------------------------------------------------------------- calibration file

CALIBRATION_VERSION = 2
SUPPORTED_CALIBRATION_VERSIONS = (1, 2)
"""Version 2 added the escalation rule, the named variants and the replay record; a version-1
file reads as a one-step-at-a-time router without them."""

MAX_CALIBRATION_BYTES = 16 << 20
"""Largest calibration file read (16 MiB); a fitted one is a few kilobytes."""


@dataclass
class SignalStats:
    """Per-signal statistics for z-scoring: ``z = direction * (x - mean) / std``."""

    mean: float
    std: float
    direction: int = 1
    auroc: float | None = None


@dataclass(frozen=True)
class EscalationRule:
    """When a drafted step goes to the LRM, and what else the LRM then writes.

    A step is flagged when its score reaches ``threshold``, or when the run's running risk (the
    probability that some accepted SRM step so far fails, each score read as a logit) reaches
    ``risk_threshold``. On a flag, if the previous step was the SRM's and its score reached
    ``rollback_threshold``, that step is withdrawn too and the LRM rewrites it first (at most
    once per run). With ``takeover`` the LRM then writes every later step as well.

    Example:
        >>> rule = EscalationRule(threshold=1.0, risk_threshold=0.9)
        >>> rule.flags(0.5, risk=0.2), rule.flags(0.5, risk=0.95), rule.flags(1.2, risk=0.0)
        (False, True, True)
    """

    threshold: float
    risk_threshold: float | None = None
    rollback_threshold: float | None = None
    takeover: bool = False

    def flags(self, score: float, risk: float) -> bool:
        """Whether a step with this score, in a run at this risk, is handed to the LRM."""
        if score >= self.threshold:
            return True
        return self.risk_threshold is not None and risk >= self.risk_threshold

    def rolls_back(self, previous_score: float | None) -> bool:
        """Whether a flag also withdraws the previous SRM step with this score."""
        return (
            self.rollback_threshold is not None
            and previous_score is not None
            and previous_score >= self.rollback_threshold
        )


@dataclass
class ScoreModel:
    """A named router variant in a calibration file (the ablation, the paper's combination).

    ``score = bias + sum_i weights[i] * z_i`` with the file's signal statistics; ``rule`` set
    means the escalation rule decides (running risk, rollback, takeover), else a step escalates
    alone when ``score >= threshold``.
    """

    weights: dict[str, float]
    bias: float
    threshold: float
    rule: EscalationRule | None = None
    notes: str = ""


@dataclass
class Calibration:
    """A versioned calibration file: statistics, router weights and threshold for a model pair.

    ``score = bias + sum_i weights[i] * z_i`` over the z-scored signals; a step escalates when
    ``score >= threshold``. ``failure_thresholds`` holds the entropy cut-offs of the failure-mode
    rules (``uncertainty_entropy``, ``overconfidence_entropy``: the 75th and 25th percentiles of
    first-token entropy on the calibration split); ``policy_thresholds`` the fitted thresholds of
    the baseline policies (``entropy``, ``rank``) at the same target escalation rate.
    The file records the model identities it was fitted for; using it
    with other models is refused unless explicitly allowed.

    Example:
        >>> cal = Calibration(models={"srm": "demo-srm", "lrm": "demo-lrm"},
        ...                   signals={"entropy.first_token": SignalStats(1.0, 0.5)},
        ...                   weights={"entropy.first_token": 1.0}, threshold=0.8)
        >>> round(cal.score({"entropy.first_token": 2.0}), 3)
        2.0
    """

    models: dict[str, str]
    signals: dict[str, SignalStats]
    weights: dict[str, float]
    threshold: float
    bias: float = 0.0
    target_escalation_rate: float | None = None
    reflection_streak: int = 3
    failure_thresholds: dict[str, float] = field(default_factory=dict)
    policy_thresholds: dict[str, float] = field(default_factory=dict)
    notes: str = ""
    version: int = CALIBRATION_VERSION
    rule: EscalationRule | None = None
    variants: dict[str, ScoreModel] = field(default_factory=dict)
    replay: dict[str, Any] = field(default_factory=dict)
    """What the operating point was chosen from (target speed-up, the chosen point, the curve)."""

    def variant(self, name: str | None) -> ScoreModel:
        """The named variant, or (``None``) the file's main router as a :class:`ScoreModel`.

        Raises:
            CalibrationError: no variant of that name (the message lists the ones there are).
        """
        if name is None:
            return ScoreModel(self.weights, self.bias, self.threshold, self.rule)
        if name not in self.variants:
            have = ", ".join(sorted(self.variants)) or "none"
            raise CalibrationError(f"calibration has no router variant {name!r} (it has: {have})")
        return self.variants[name]

    def zscore(self, name: str, value: float) -> float:
        """Return the z-score of ``value`` for signal ``name``, oriented so + means failing."""
        stats = self.signals[name]
        std = stats.std if stats.std > 0 else 1.0
        return stats.direction * (value - stats.mean) / std

    def score(self, values: dict[str, SignalValue]) -> float | None:
        """Combine the weighted z-scores; ``None`` if a weighted signal is missing."""
        total = self.bias
        for name, weight in self.weights.items():
            value = values.get(name)
            if value is None:
                return None
            total += weight * self.zscore(name, value)
        return total

    def check_models(self, srm: str, lrm: str | None = None) -> None:
        """Refuse a calibration fitted for other models (identities compare exactly)."""
        if self.models.get("srm") not in (None, srm):
            raise CalibrationError(
                f"calibration was fitted for SRM {self.models['srm']!r}, not {srm!r}"
            )
        if lrm is not None and self.models.get("lrm") not in (None, lrm):
            raise CalibrationError(
                f"calibration was fitted for LRM {self.models['lrm']!r}, not {lrm!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-native dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """Validate and build a calibration from a dict; errors name the bad field.

        Every number must be finite (JSON's ``NaN`` and ``Infinity`` are refused: a NaN mean
        would make every score NaN and silently switch routing off), every mapping must be a
        JSON object of the documented shape, and every signal must be a known one.

        Raises:
            CalibrationError: one line naming the field and the problem.
        """
        if not isinstance(data, dict):
            raise CalibrationError("calibration file must hold a JSON object")
        version = data.get("version")
        if version not in SUPPORTED_CALIBRATION_VERSIONS:
            raise CalibrationError(
                f"calibration version {version!r} is not supported (expected one of "
                f"{list(SUPPORTED_CALIBRATION_VERSIONS)})"
            )
        for key in ("models", "signals", "weights", "threshold"):
            if key not in data:
                raise CalibrationError(f"calibration file is missing key {key!r}")
        signals = {
            name: _signal_stats(stats, f"signals[{name!r}]")
            for name, stats in _object(data["signals"], "signals").items()
        }
        weights = _numbers(data["weights"], "weights")
        rate = data.get("target_escalation_rate")
        if rate is not None:
            rate = _finite(rate, "target_escalation_rate", 0, 1)
        cal = cls(
            models=_strings(data["models"], "models"),
            signals=signals,
            weights=weights,
            threshold=_finite(data["threshold"], "threshold"),
            bias=_finite(data.get("bias", 0.0), "bias"),
            target_escalation_rate=rate,
            reflection_streak=_count(data.get("reflection_streak", 3), "reflection_streak"),
            failure_thresholds=_numbers(data.get("failure_thresholds", {}), "failure_thresholds"),
            policy_thresholds=_numbers(data.get("policy_thresholds", {}), "policy_thresholds"),
            notes=str(data.get("notes", "")),
            rule=_rule(data.get("rule"), "rule"),
            variants={
                name: _score_model(model, f"variants[{name!r}]")
                for name, model in _object(data.get("variants", {}), "variants").items()
            },
            replay=_object(data.get("replay", {}), "replay"),
        )
        named = [*weights, *(n for v in cal.variants.values() for n in v.weights)]
        unknown = [n for n in [*signals, *named] if n not in SIGNALS]
        if unknown:
            raise CalibrationError(f"calibration names unknown signal(s) {unknown}")
        missing = sorted({n for n in named if n not in signals})
        if missing:
            raise CalibrationError(f"calibration weights name signal(s) without stats: {missing}")
        return cal

    def save(self, path: str | Path) -> None:
        """Write the calibration as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read a calibration JSON file; errors name the file.

        Only a regular file of at most :data:`MAX_CALIBRATION_BYTES` is read (a FIFO would hang
        the read, ``/dev/zero`` never end it); its content is checked by :meth:`from_dict`.
        """
        path = Path(path)
        try:
            if path.exists() and not path.is_file():
                raise CalibrationError(f"calibration file {path} is not a regular file")
            if path.exists() and path.stat().st_size > MAX_CALIBRATION_BYTES:
                raise CalibrationError(
                    f"calibration file {path} is larger than {MAX_CALIBRATION_BYTES:,} bytes"
                )
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise CalibrationError(f"calibration file not found: {path}") from None
        except RecursionError:
            raise CalibrationError(f"calibration file {path} is nested too deeply") from None
        except json.JSONDecodeError as exc:
            raise CalibrationError(f"calibration file {path} is not valid JSON: {exc}") from None
        except (UnicodeDecodeError, OSError) as exc:
            # Binary files (a pickle, a tensor file) and unreadable paths are refused, not run.
            raise CalibrationError(f"calibration file {path} is not JSON text: {exc}") from None
        try:
            return cls.from_dict(data)
        except CalibrationError as exc:
            raise CalibrationError(f"{path}: {exc}") from None


# --------------------------------------------------------------------------- calibration checks


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CalibrationError(
            f"calibration field {where}: must be a JSON object (got {_kind(value)})"
        )
    return value


def _kind(value: Any) -> str:
    """Name a rejected JSON value briefly: numbers and literals as JSON, others by kind."""
    if isinstance(value, bool | int | float) or value is None:
        return json.dumps(value)
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return "a string" if isinstance(value, str) else type(value).__name__


def _finite(value: Any, where: str, low: float | None = None, high: float | None = None) -> float:
    """A finite JSON number (not a boolean) within ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CalibrationError(
            f"calibration field {where}: must be a finite number (got {_kind(value)})"
        )
    if (low is not None and value < low) or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise CalibrationError(f"calibration field {where}: must be {bound} (got {value!r})")
    return float(value)


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CalibrationError(
            f"calibration field {where}: must be an integer >= 1 (got {_kind(value)})"
        )
    return value


def _numbers(value: Any, where: str) -> dict[str, float]:
    return {k: _finite(v, f"{where}[{k!r}]") for k, v in _object(value, where).items()}


def _strings(value: Any, where: str) -> dict[str, str]:
    out = _object(value, where)
    for key, text in out.items():
        if not isinstance(text, str):
            raise CalibrationError(
                f"calibration field {where}[{key!r}]: must be a string (got {_kind(text)})"
            )
    return dict(out)


def _rule(value: Any, where: str) -> EscalationRule | None:
    if value is None:
        return None
    rule = _object(value, where)
    known = {"threshold", "risk_threshold", "rollback_threshold", "takeover"}
    unknown = sorted(set(rule) - known)
    if unknown:
        raise CalibrationError(f"calibration field {where}: unknown key(s) {unknown}")
    if "threshold" not in rule:
        raise CalibrationError(f"calibration field {where}: needs 'threshold'")
    risk, back = rule.get("risk_threshold"), rule.get("rollback_threshold")
    takeover = rule.get("takeover", False)
    if not isinstance(takeover, bool):
        raise CalibrationError(
            f"calibration field {where}.takeover: must be true or false (got {_kind(takeover)})"
        )
    return EscalationRule(
        threshold=_finite(rule["threshold"], f"{where}.threshold"),
        risk_threshold=None if risk is None else _finite(risk, f"{where}.risk_threshold", 0, 1),
        rollback_threshold=None if back is None else _finite(back, f"{where}.rollback_threshold"),
        takeover=takeover,
    )


def _score_model(value: Any, where: str) -> ScoreModel:
    model = _object(value, where)
    for key in ("weights", "threshold"):
        if key not in model:
            raise CalibrationError(f"calibration field {where}: needs {key!r}")
    return ScoreModel(
        weights=_numbers(model["weights"], f"{where}.weights"),
        bias=_finite(model.get("bias", 0.0), f"{where}.bias"),
        threshold=_finite(model["threshold"], f"{where}.threshold"),
        rule=_rule(model.get("rule"), f"{where}.rule"),
        notes=str(model.get("notes", "")),
    )


def _signal_stats(value: Any, where: str) -> SignalStats:
    stats = _object(value, where)
    unknown = sorted(set(stats) - {"mean", "std", "direction", "auroc"})
    if unknown:
        raise CalibrationError(f"calibration field {where}: unknown key(s) {unknown}")
    if "mean" not in stats or "std" not in stats:
        raise CalibrationError(f"calibration field {where}: needs 'mean' and 'std'")
    direction = stats.get("direction", 1)
    if isinstance(direction, bool) or direction not in (-1, 1):
        raise CalibrationError(
            f"calibration field {where}.direction: must be 1 or -1 (got {_kind(direction)})"
        )
    auroc = stats.get("auroc")
    return SignalStats(
        mean=_finite(stats["mean"], f"{where}.mean"),
        std=_finite(stats["std"], f"{where}.std", 0),
        direction=int(direction),
        auroc=None if auroc is None else _finite(auroc, f"{where}.auroc", 0, 1),
    )
