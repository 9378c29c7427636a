"""Each routing policy's rule on crafted signals, and the budget rules."""

from __future__ import annotations

import pytest

from langchain_rankguide.errors import ConfigError
from langchain_rankguide.routing import (
    POLICIES,
    BudgetState,
    RouteDecision,
    StepContext,
    apply_budget,
    build_router,
)
from langchain_rankguide.schemas import Calibration, SignalStats

CAL = Calibration(
    models={"srm": "s", "lrm": "l"},
    signals={
        "rank.window.effective": SignalStats(mean=10.0, std=2.0, direction=1),
        "entropy.first_token": SignalStats(mean=0.5, std=0.25, direction=1),
    },
    weights={"rank.window.effective": 1.0, "entropy.first_token": 1.0},
    threshold=1.0,
    failure_thresholds={"overconfidence_entropy": 0.1, "uncertainty_entropy": 1.0},
    policy_thresholds={"entropy": 1.2, "rank": 0.5},
)


def ctx(**signals):
    return StepContext(step_index=0, text="x = 1, total 1.\n\n", signals=signals)


def test_every_policy_builds():
    for policy in POLICIES:
        assert build_router(policy, calibration=CAL).name == policy
    with pytest.raises(ConfigError, match="unknown policy"):
        build_router("nope")
    with pytest.raises(ConfigError, match="calibration"):
        build_router("rankguide")


def test_srm_and_lrm_policies():
    assert build_router("srm").decide(ctx()).escalate is False
    lrm = build_router("lrm")
    assert lrm.decide_before(ctx()).escalate is True


def test_entropy_decides_before_the_step_on_top20_entropy():
    router = build_router("entropy", calibration=CAL)
    assert (
        router.probe_signals
        and router.decide_before(ctx(**{"entropy.first_token_top20": 1.3})).escalate
    )
    assert not router.decide_before(ctx(**{"entropy.first_token_top20": 1.1})).escalate
    assert router.decide_before(ctx()).escalate  # unmeasurable: escalate, never crash


def test_rank_policy_zscores_with_the_calibration():
    router = build_router("rank", calibration=CAL)
    assert router.decide(ctx(**{"rank.window.effective": 11.2})).escalate  # z = 0.6 >= 0.5
    assert not router.decide(ctx(**{"rank.window.effective": 10.8})).escalate  # z = 0.4
    fault = StepContext(0, signals={}, notes={"rank.window.effective": "non-finite hidden states"})
    decision = router.decide(fault)
    assert decision.escalate and decision.failure_mode == "numerical_fault"


def test_rankguide_combines_rank_and_entropy_and_tags_failure_modes():
    router = build_router("rankguide", calibration=CAL)
    # z(rank) = 1, z(entropy) = -1.6 -> score -0.6: kept
    assert not router.decide(
        ctx(**{"rank.window.effective": 12.0, "entropy.first_token": 0.1})
    ).escalate
    # high rank and low entropy -> flagged, overconfident
    flagged = router.decide(ctx(**{"rank.window.effective": 16.0, "entropy.first_token": 0.05}))
    assert flagged.escalate and flagged.failure_mode == "overconfidence"
    # high entropy -> uncertainty
    unsure = router.decide(ctx(**{"rank.window.effective": 10.0, "entropy.first_token": 1.5}))
    assert unsure.escalate and unsure.failure_mode == "uncertainty"


def test_rankguide_streak_and_repeat_rule():
    router = build_router("rankguide", calibration=CAL, revalidation_streak=3)
    streak = router.decide(ctx(**{"reflection.streak": 3.0}))
    assert streak.escalate and streak.failure_mode == "heavy_revalidation"
    repeat = router.decide(ctx(**{"step.repeat": 1.0}))
    assert repeat.escalate and repeat.failure_mode == "heavy_revalidation"


def test_keyword_policy_takes_over_at_reflection_cues():
    router = build_router("keyword")
    assert router.decide(ctx(**{"reflection.cue": 1.0})).escalate
    assert not router.decide(ctx(**{"reflection.cue": 0.0})).escalate


def test_specreason_accepts_scores_of_seven_and_up():
    router = build_router("specreason", specreason_accept=7)
    for score, escalate in ((9, False), (7, False), (6, True), (None, True)):
        context = StepContext(0, text="s", judge=lambda _text, score=score: score)
        assert router.decide(context).escalate is escalate


def test_random_policy_is_seeded_per_step_and_near_its_rate():
    router = build_router("random", random_rate=0.3, seed=5)
    draws = [router.decide_before(StepContext(i)).escalate for i in range(2000)]
    assert draws == [router.decide_before(StepContext(i)).escalate for i in range(2000)]
    assert 0.26 < sum(draws) / len(draws) < 0.34


def test_random_policy_draws_differ_between_runs_and_hit_the_rate_at_every_position():
    """Keyed by the run: not the same step positions escalated in every problem."""
    router = build_router("random", random_rate=0.1, seed=0)
    runs = [
        [router.decide_before(StepContext(i, run_key=f"problem-{k}")).escalate for i in range(6)]
        for k in range(400)
    ]
    assert len({tuple(run) for run in runs}) > 20
    for position in range(6):
        share = sum(run[position] for run in runs) / len(runs)
        assert 0.05 < share < 0.16, (position, share)
    again = [router.decide_before(StepContext(i, run_key="problem-0")).escalate for i in range(6)]
    assert again == runs[0]


def test_budget_rules_max_escalations_and_hysteresis():
    yes = RouteDecision(True, 1.0, None, "flagged")
    no = RouteDecision(False, 0.0, None, "fine")
    decision, state = apply_budget(yes, BudgetState(), max_escalations=1, hysteresis=2)
    assert decision.escalate and state == BudgetState(1, 2)
    decision, state = apply_budget(no, state, max_escalations=None, hysteresis=2)
    assert decision.escalate and "held by the LRM" in decision.reason and state.hysteresis_left == 1
    assert decision.held
    decision, state = apply_budget(yes, BudgetState(1, 0), max_escalations=1, hysteresis=0)
    assert not decision.escalate and "budget" in decision.reason
