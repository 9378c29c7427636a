"""Routers: decide, step by step, whether the SRM's step stands or the LRM writes it.

Every policy answers the same two questions through one interface:

- :meth:`Router.decide_before` -- before the SRM drafts, from the first-token distribution
  (``None`` means "let the SRM draft first");
- :meth:`Router.decide` -- after the draft, from its signals and text.

Each answer is a :class:`RouteDecision`: escalate or not, a score, a failure mode and a reason.
Budget rules (maximum escalations, hysteresis) wrap any policy in :func:`apply_budget`.

Example:
    >>> router = EntropyRouter(threshold=1.0)
    >>> ctx = StepContext(step_index=0, signals={"entropy.first_token_top20": 1.7})
    >>> router.decide_before(ctx).escalate
    True
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import get_args

from langchain_rankguide.errors import ConfigError
from langchain_rankguide.schemas import (
    Calibration,
    EscalationRule,
    FailureMode,
    PolicyName,
    SignalValue,
)
from langchain_rankguide.signals.failure import FailureRules, tag_failure_mode

POLICIES: tuple[str, ...] = get_args(PolicyName)
"""Every routing policy name, as used in configuration and on the command line."""

REVALIDATION_SIGNALS = ("reflection.streak", "step.repeat")


@dataclass(frozen=True)
class RouteDecision:
    """A router's verdict on one step.

    Attributes:
        escalate: ``True`` hands the step to the LRM.
        score: the policy's score (higher = more likely failing); ``None`` if it has none.
        failure_mode: the failure mode tagged on the step, if any.
        reason: a short account for humans and logs.
        hold: how many following steps the LRM writes too, without an SRM draft
            (:data:`TAKEOVER`: the rest of the run).
        held: ``True`` when the step goes to the LRM because an earlier decision holds it
            there, not because of a flag of its own.
        rollback: how many committed SRM steps the LRM withdraws and rewrites first (0 or 1).
    """

    escalate: bool
    score: float | None = None
    failure_mode: FailureMode | None = None
    reason: str = ""
    hold: int = 0
    held: bool = False
    rollback: int = 0


TAKEOVER = 1_000_000
"""A hold long enough for the rest of any run: the LRM takes over."""


@dataclass
class StepContext:
    """What a router may look at.

    Attributes:
        step_index: the step's index in the run.
        text: the SRM draft ("" before drafting).
        signals: signal name -> value; before drafting only first-token signals are set.
        notes: signal name -> why its value is ``None``.
        is_answer: ``True`` if the draft is the final answer.
        previous_texts: committed steps so far.
        previous_scores: the router's score of each committed step (``None`` where the LRM
            wrote it or no score was given), for rules that read the run's running risk.
        judge: asks the LRM for a one-token 0-9 score of ``text`` (SpecReason); ``None`` if
            unavailable.
        run_key: a stable identity of the run's prompt, so seeded per-step draws differ from
            one problem to the next yet repeat for the same problem.
    """

    step_index: int
    text: str = ""
    signals: Mapping[str, SignalValue] = field(default_factory=dict)
    notes: Mapping[str, str] = field(default_factory=dict)
    is_answer: bool = False
    previous_texts: Sequence[str] = ()
    previous_scores: Sequence[float | None] = ()
    judge: Callable[[str], int | None] | None = None
    run_key: str = ""


class Router(ABC):
    """A routing policy. Subclasses set :attr:`name` and implement :meth:`decide`."""

    name: str = ""
    probe_signals: tuple[str, ...] = ()
    """Signals needed before drafting (first-token only)."""

    def __init__(self, failure_rules: FailureRules | None = None) -> None:
        self.failure_rules = failure_rules or FailureRules()

    @property
    def signals(self) -> tuple[str, ...]:
        """Signals computed on the hot path after each draft (only these are computed)."""
        return (*REVALIDATION_SIGNALS, "entropy.first_token")

    def decide_before(self, ctx: StepContext) -> RouteDecision | None:
        """Decide before the SRM drafts; ``None`` lets it draft."""
        return None

    @abstractmethod
    def decide(self, ctx: StepContext) -> RouteDecision:
        """Decide on a drafted step."""

    def _tag(self, ctx: StepContext, flagged: bool) -> FailureMode | None:
        return tag_failure_mode(
            ctx.signals, flagged=flagged, rules=self.failure_rules, notes=ctx.notes
        )

    def _verdict(
        self, ctx: StepContext, escalate: bool, score: float | None, reason: str
    ) -> RouteDecision:
        return RouteDecision(escalate, score, self._tag(ctx, escalate), reason)


class NeverRouter(Router):
    """``srm``: the SRM writes every step (the SRM alone)."""

    name = "srm"

    @property
    def signals(self) -> tuple[str, ...]:
        """None: the SRM alone computes nothing for routing."""
        return ()

    def decide(self, ctx: StepContext) -> RouteDecision:
        """Keep every draft."""
        return RouteDecision(False, None, None, "policy srm")


class AlwaysRouter(Router):
    """``lrm``: the LRM writes every step; the SRM never drafts (the LRM alone)."""

    name = "lrm"

    @property
    def signals(self) -> tuple[str, ...]:
        """None."""
        return ()

    def decide_before(self, ctx: StepContext) -> RouteDecision:
        """Escalate before drafting."""
        return RouteDecision(True, None, None, "policy lrm")

    def decide(self, ctx: StepContext) -> RouteDecision:
        """Escalate (reached only if a caller drafts anyway)."""
        return RouteDecision(True, None, None, "policy lrm")


class RandomRouter(Router):
    """``random``: escalate a fixed fraction of steps, chosen by a seeded draw per step."""

    name = "random"

    def __init__(self, rate: float, seed: int = 0, failure_rules: FailureRules | None = None):
        super().__init__(failure_rules)
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"routing.random_rate must be in [0, 1], got {rate}")
        self.rate = rate
        self.seed = seed

    @property
    def signals(self) -> tuple[str, ...]:
        """None: the draw ignores the step."""
        return ()

    def _draw(self, ctx: StepContext) -> float:
        # Keyed by the run too: a draw keyed by the step index alone would escalate the same
        # step positions in every problem, a position policy rather than a random baseline.
        return random.Random(f"{self.seed}:{ctx.run_key}:{ctx.step_index}").random()

    def decide_before(self, ctx: StepContext) -> RouteDecision:
        """Decide before drafting, so an escalated step costs no SRM time."""
        draw = self._draw(ctx)
        return RouteDecision(draw < self.rate, draw, None, f"draw {draw:.3f} vs rate {self.rate}")

    def decide(self, ctx: StepContext) -> RouteDecision:
        """Draw as :meth:`decide_before` does."""
        return self.decide_before(ctx)


class EntropyRouter(Router):
    """``entropy`` (GlimpRouter): first-token entropy over the top-20 log-probs, before drafting."""

    name = "entropy"
    probe_signals = ("entropy.first_token_top20", "entropy.first_token")

    def __init__(self, threshold: float, failure_rules: FailureRules | None = None):
        super().__init__(failure_rules)
        self.threshold = threshold

    @property
    def signals(self) -> tuple[str, ...]:
        """The first-token signals, so a drafted step is judged by the same rule."""
        return self.probe_signals

    def decide_before(self, ctx: StepContext) -> RouteDecision:
        """Escalate when the top-20 entropy of the step's first token is at/above the threshold."""
        value = ctx.signals.get("entropy.first_token_top20")
        if value is None:
            return RouteDecision(True, None, "numerical_fault", "first-token entropy unavailable")
        escalate = value >= self.threshold
        return self._verdict(
            ctx, escalate, value, f"top-20 entropy {value:.3f} vs {self.threshold}"
        )

    def decide(self, ctx: StepContext) -> RouteDecision:
        """Apply the same rule to the drafted step's first token."""
        return self.decide_before(ctx)


class KeywordRouter(Router):
    """``keyword`` (Speculative Thinking): the LRM takes over where the SRM starts to reflect."""

    name = "keyword"

    @property
    def signals(self) -> tuple[str, ...]:
        """The reflection cue and the revalidation signals."""
        return ("reflection.cue", *REVALIDATION_SIGNALS, "entropy.first_token")

    def decide(self, ctx: StepContext) -> RouteDecision:
        """Escalate a draft that opens with a reflection cue."""
        cue = ctx.signals.get("reflection.cue") == 1.0
        return self._verdict(ctx, cue, 1.0 if cue else 0.0, "reflection cue" if cue else "no cue")


class SpecReasonRouter(Router):
    """``specreason``: the LRM scores the SRM step 0-9 in one token; below ``accept`` it writes."""

    name = "specreason"

    def __init__(self, accept: int = 7, failure_rules: FailureRules | None = None):
        super().__init__(failure_rules)
        self.accept = accept

    def decide(self, ctx: StepContext) -> RouteDecision:
        """Ask the judge; a missing judge or unreadable score escalates."""
        score = ctx.judge(ctx.text) if ctx.judge is not None else None
        if score is None:
            return self._verdict(ctx, True, None, "no LRM score")
        escalate = score < self.accept
        return self._verdict(ctx, escalate, float(9 - score), f"LRM score {score} vs {self.accept}")


class RankRouter(Router):
    """``rank``: one rank signal alone, z-scored with the calibration (the ablation)."""

    name = "rank"

    def __init__(
        self,
        signal: str,
        threshold: float,
        calibration: Calibration | None = None,
        failure_rules: FailureRules | None = None,
    ):
        super().__init__(failure_rules)
        self.signal = signal
        self.threshold = threshold
        self.calibration = calibration

    @property
    def signals(self) -> tuple[str, ...]:
        """The rank signal and what failure tagging reads."""
        return (self.signal, *REVALIDATION_SIGNALS, "entropy.first_token")

    def decide(self, ctx: StepContext) -> RouteDecision:
        """Escalate when the (z-scored, failure-oriented) rank value is at/above the threshold."""
        value = ctx.signals.get(self.signal)
        if value is None:
            note = ctx.notes.get(self.signal, "missing")
            fault = "non-finite" in note
            mode: FailureMode | None = "numerical_fault" if fault else None
            return RouteDecision(fault, None, mode, f"{self.signal} unavailable: {note}")
        score = value
        if self.calibration is not None and self.signal in self.calibration.signals:
            score = self.calibration.zscore(self.signal, value)
        return self._verdict(ctx, score >= self.threshold, score, f"{self.signal} z {score:.2f}")


class RankGuideRouter(Router):
    """``rankguide``: a calibrated score of the drafted step, and a rule that spends the LRM.

    Score = bias + sum of weight x z-score over the model's signals; a signal that could not be
    measured (e.g. a one-token step) counts as z = 0. Steps with non-finite hidden states, a
    revalidation streak or a verbatim repeat always escalate. Then:

    * with an escalation rule (router v2, the shipped default): a step is flagged when its
      score, or the run's running risk, reaches the rule's thresholds; a flag may first withdraw
      the previous SRM step (one rollback per run, enforced by the graph), and a takeover rule
      hands every later step to the LRM too;
    * without one (``rankguide-paper``, the paper's combination of rank and first-token
      entropy): the step escalates alone when its score reaches the threshold.

    Args:
        calibration: the calibration file (signal statistics, the models).
        threshold: overrides the step threshold (the takeover rule's, when there is one).
        revalidation_streak: reflections in a row that escalate.
        variant: a named model of the calibration (``None``: its main router).
    """

    name = "rankguide"

    def __init__(
        self,
        calibration: Calibration,
        threshold: float | None = None,
        revalidation_streak: int = 3,
        failure_rules: FailureRules | None = None,
        variant: str | None = None,
    ):
        super().__init__(failure_rules)
        self.calibration = calibration
        self.model = calibration.variant(variant)
        self.rule = self.model.rule
        if threshold is not None and self.rule is not None:
            self.rule = replace(self.rule, threshold=threshold)
        self.threshold = self.model.threshold if threshold is None else threshold
        self.revalidation_streak = revalidation_streak

    @property
    def signals(self) -> tuple[str, ...]:
        """The model's weighted signals plus revalidation and entropy."""
        names = [*self.model.weights, *REVALIDATION_SIGNALS, "entropy.first_token"]
        return tuple(dict.fromkeys(names))

    def score(self, values: Mapping[str, SignalValue]) -> float:
        """Return the calibrated score, counting unmeasured signals as neutral."""
        total = self.model.bias
        for name, weight in self.model.weights.items():
            value = values.get(name)
            if value is not None:
                total += weight * self.calibration.zscore(name, value)
        return total

    def decide(self, ctx: StepContext) -> RouteDecision:
        """Apply the fault, revalidation and score rules, in that order."""
        hold = TAKEOVER if self.rule is not None and self.rule.takeover else 0
        faults = [n for n, note in ctx.notes.items() if "non-finite" in note]
        if faults:
            why = f"non-finite signals {faults}"
            return RouteDecision(True, None, "numerical_fault", why, hold)
        streak = ctx.signals.get("reflection.streak") or 0.0
        repeat = ctx.signals.get("step.repeat") == 1.0
        score = self.score(ctx.signals)
        if streak >= self.revalidation_streak or repeat:
            why = "repeated step" if repeat else f"reflection streak {int(streak)}"
            return RouteDecision(True, score, "heavy_revalidation", why, hold)
        if self.rule is None:
            escalate = score >= self.threshold
            return self._verdict(ctx, escalate, score, f"score {score:.2f} vs {self.threshold:.2f}")
        return self._rule_verdict(ctx, self.rule, score)

    def _rule_verdict(self, ctx: StepContext, rule: EscalationRule, score: float) -> RouteDecision:
        srm_scores = [s for s in ctx.previous_scores if s is not None]
        risk = running_risk([*srm_scores, score])
        flagged = rule.flags(score, risk)
        why = f"score {score:.2f} vs {rule.threshold:.2f}, risk {risk:.2f}"
        if not flagged:
            return self._verdict(ctx, False, score, why)
        previous = ctx.previous_scores[-1] if ctx.previous_scores else None
        rollback = int(rule.rolls_back(previous))
        if rollback:
            why += f"; withdraws the previous step (score {previous:.2f})"
        if rule.takeover:
            why = f"takeover: {why}"
        decision = self._verdict(ctx, True, score, why)
        return replace(decision, hold=TAKEOVER if rule.takeover else 0, rollback=rollback)


def running_risk(scores: Sequence[float]) -> float:
    """Probability that at least one step so far fails, reading each score as a logit.

    Example:
        >>> round(running_risk([0.0, 0.0]), 2)
        0.75
    """
    keep = 1.0
    for score in scores:
        keep *= 1.0 - 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, score))))
    return 1.0 - keep


@dataclass(frozen=True)
class BudgetState:
    """Budget counters carried in the run state (JSON-native, so resumes keep them)."""

    escalations: int = 0
    hysteresis_left: int = 0


def apply_budget(
    decision: RouteDecision,
    state: BudgetState,
    *,
    max_escalations: int | None,
    hysteresis: int,
) -> tuple[RouteDecision, BudgetState]:
    """Apply the budget rules to a policy's decision.

    Hold: after a fresh escalation the next ``max(hysteresis, decision.hold)`` steps go to the
    LRM too (``hysteresis`` is the configured rule, ``hold`` the router's own, e.g. a takeover).
    Maximum escalations: once reached, no further step escalates (the SRM writes on) and any
    hold ends.
    """
    held = state.hysteresis_left > 0
    fresh = decision.escalate and not decision.held
    escalate = decision.escalate or held
    reason = decision.reason
    if escalate and not fresh:
        reason = f"held by the LRM ({state.hysteresis_left} left); {reason}"
    if escalate and max_escalations is not None and state.escalations >= max_escalations:
        reason = f"escalation budget {max_escalations} spent; {reason}"
        spent = RouteDecision(False, decision.score, decision.failure_mode, reason)
        return spent, BudgetState(state.escalations, 0)
    if not escalate:
        return replace(decision, reason=reason), BudgetState(state.escalations, 0)
    left = max(hysteresis, decision.hold) if fresh else state.hysteresis_left - 1
    routed = replace(decision, escalate=True, reason=reason, held=not fresh)
    return routed, BudgetState(state.escalations + 1, left)


def failure_rules_from(calibration: Calibration | None, revalidation_streak: int) -> FailureRules:
    """Failure-mode thresholds: the calibration's entropy percentiles when it has them."""
    thresholds = calibration.failure_thresholds if calibration is not None else {}
    return FailureRules(
        uncertainty_entropy=thresholds.get("uncertainty_entropy"),
        overconfidence_entropy=thresholds.get("overconfidence_entropy"),
        revalidation_streak=revalidation_streak,
    )


DEFAULT_THRESHOLDS = {"entropy": 1.0, "rank": 1.0}
PAPER_VARIANT = "paper"
"""The calibration variant ``rankguide-paper`` runs: rank + first-token entropy, one step at a
time (a version-1 calibration file's main router is that combination)."""


def build_router(
    policy: str,
    *,
    calibration: Calibration | None = None,
    threshold: float | None = None,
    rank_signal: str = "rank.window.effective",
    random_rate: float = 0.25,
    specreason_accept: int = 7,
    revalidation_streak: int = 3,
    seed: int = 0,
    variant: str | None = None,
) -> Router:
    """Build a router by policy name (see :data:`POLICIES`).

    Thresholds default to the calibration's (``rankguide``; ``entropy`` and ``rank`` read
    ``policy_thresholds`` in the calibration file when present). ``variant`` picks a named
    router of the calibration for ``rankguide`` (the ablation's variants; ``None``: the main
    one); ``rankguide-paper`` always runs the ``paper`` variant (or a version-1 file's router).
    """
    rules = failure_rules_from(calibration, revalidation_streak)
    fitted = calibration.policy_thresholds if calibration is not None else {}
    if policy == "srm":
        return NeverRouter(rules)
    if policy == "lrm":
        return AlwaysRouter(rules)
    if policy == "random":
        return RandomRouter(random_rate, seed, rules)
    if policy == "entropy":
        value = (
            threshold
            if threshold is not None
            else fitted.get("entropy", DEFAULT_THRESHOLDS["entropy"])
        )
        return EntropyRouter(value, rules)
    if policy == "keyword":
        return KeywordRouter(rules)
    if policy == "specreason":
        return SpecReasonRouter(specreason_accept, rules)
    if policy == "rank":
        value = (
            threshold if threshold is not None else fitted.get("rank", DEFAULT_THRESHOLDS["rank"])
        )
        return RankRouter(rank_signal, value, calibration, rules)
    if policy in ("rankguide", "rankguide-paper"):
        if calibration is None:
            raise ConfigError(
                f"routing.policy {policy!r} needs a calibration file (routing.calibration)"
            )
        if policy == "rankguide-paper":
            variant = PAPER_VARIANT if PAPER_VARIANT in calibration.variants else None
            if variant is None and calibration.rule is not None:
                raise ConfigError(
                    "routing.policy 'rankguide-paper' needs a calibration with a 'paper' "
                    "variant (refit it with rankguide calibrate --replay)"
                )
        router = RankGuideRouter(calibration, threshold, revalidation_streak, rules, variant)
        router.name = policy
        return router
    raise ConfigError(
        f"routing.policy: unknown policy {policy!r}; use one of {', '.join(POLICIES)}"
    )
