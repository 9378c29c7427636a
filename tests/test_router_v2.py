"""Router v2: escalation rules, holds, rollback (KV state and resume), replay data, selection."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from langchain_rankguide.app import RankGuideApp
from langchain_rankguide.calibration.operating import (
    OperatingPoint,
    choose_operating_point,
    pareto_front,
    replay_rule,
)
from langchain_rankguide.calibration.replay import ReplayPipeline, ReplayProblem, ReplayStep
from langchain_rankguide.cli import main
from langchain_rankguide.config import load_config
from langchain_rankguide.engine import ModelRegistry
from langchain_rankguide.errors import CalibrationError
from langchain_rankguide.graph import add_steps, build_graph
from langchain_rankguide.pipeline import RankGuidePipeline, RunOptions, demo_calibration_path
from langchain_rankguide.routing import (
    BudgetState,
    RouteDecision,
    apply_budget,
    build_router,
    running_risk,
)
from langchain_rankguide.schemas import Calibration, EscalationRule, SignalStats

QUESTION = "Start at 19. Add 5, then multiply by 3. What is the result?"


def position_calibration(rule: EscalationRule) -> Calibration:
    """A router whose score is the step's position: flags are placed exactly where wanted."""
    return Calibration(
        models={},
        signals={"context.position": SignalStats(0.0, 1.0, 1)},
        weights={"context.position": 1.0},
        threshold=rule.threshold,
        rule=rule,
    )


def run_with(rule: EscalationRule, tmp_path: Path, **overrides):
    path = tmp_path / "cal.json"
    position_calibration(rule).save(path)
    config = load_config(None, overrides={"routing": {"calibration": str(path)}, **overrides})
    return config, RankGuideApp(config)


def test_escalation_rule_flags_by_score_or_running_risk_and_rolls_back_on_the_previous_score():
    rule = EscalationRule(threshold=1.0, risk_threshold=0.9, rollback_threshold=0.5)
    assert rule.flags(1.0, 0.0) and rule.flags(-3.0, 0.95) and not rule.flags(0.9, 0.5)
    assert rule.rolls_back(0.5) and not rule.rolls_back(0.4) and not rule.rolls_back(None)
    assert running_risk([]) == 0.0
    assert running_risk([0.0]) == pytest.approx(0.5)
    assert running_risk([0.0, 0.0, 0.0]) == pytest.approx(0.875)


def test_a_hold_sends_the_next_steps_to_the_lrm_and_counts_down():
    flagged = RouteDecision(True, 2.0, None, "flag", hold=2)
    decision, state = apply_budget(flagged, BudgetState(), max_escalations=None, hysteresis=0)
    assert decision.escalate and not decision.held and state == BudgetState(1, 2)
    keep = RouteDecision(False, -1.0, None, "fine")
    decision, state = apply_budget(keep, state, max_escalations=None, hysteresis=0)
    assert decision.escalate and decision.held and state == BudgetState(2, 1)
    decision, state = apply_budget(keep, state, max_escalations=2, hysteresis=0)
    assert not decision.escalate and "budget" in decision.reason and state.hysteresis_left == 0


def test_the_step_reducer_appends_and_a_withdraw_marker_rewinds():
    steps = add_steps([], [{"index": 0}, {"index": 1}])
    assert add_steps(steps, [{"withdraw_from": 1}, {"index": 1, "author": "lrm"}]) == [
        {"index": 0},
        {"index": 1, "author": "lrm"},
    ]


def test_a_takeover_rule_hands_the_rest_of_the_run_to_the_lrm_without_srm_drafts(tmp_path):
    _, app = run_with(EscalationRule(threshold=1.0, takeover=True), tmp_path)
    result = app.invoke(QUESTION, RunOptions(policy="rankguide"))
    authors = [s["author"] for s in result.steps]
    assert authors[0] == "srm" and set(authors[1:]) == {"lrm"}, authors
    later = result.steps[2:]
    assert later and all("held by the LRM" in s["reason"] for s in later)
    assert all(not s["draft_text"] for s in later)  # no SRM draft was made for held steps
    assert result.correct is True


def test_rollback_withdraws_the_previous_srm_step_and_the_lrm_rewrites_it(tmp_path):
    _, app = run_with(EscalationRule(threshold=2.0, rollback_threshold=0.5), tmp_path)
    events = list(app.stream(QUESTION, RunOptions(policy="rankguide")))
    withdrawn = [e for e in events if e.withdrawn]
    assert len(withdrawn) == 1 and withdrawn[0].step["index"] == 1
    assert withdrawn[0].step["author"] == "srm"
    result = app.invoke(QUESTION, RunOptions(policy="rankguide"))
    assert [s["index"] for s in result.steps] == list(range(len(result.steps)))
    assert result.steps[1]["author"] == "lrm"
    assert result.steps[1]["draft_text"] == withdrawn[0].step["text"]
    assert result.state["rollbacks"] == 1 and len(result.state["withdrawn"]) == 1
    assert result.correct is True


def test_rollback_crops_the_caches_to_the_kept_trace(tmp_path):
    config, _ = run_with(EscalationRule(threshold=2.0, rollback_threshold=0.5), tmp_path)
    pipeline = RankGuidePipeline(config)
    session = pipeline.session("kv", pipeline.messages(QUESTION), [], RunOptions("rankguide"))
    first = session.draft(0, 48, answer_phase=False)
    session.accept(first)
    kept_ids = list(session.srm_engine.ids)
    from langchain_rankguide.schemas import StepRecord

    record = StepRecord(index=0, author="srm", text=first.text, tokens=first.tokens)
    record.token_ids["srm"] = first.srm_ids
    session.record_committed(record)
    second = session.draft(1, 48, answer_phase=False)
    session.accept(second)
    session.record_committed(StepRecord(index=1, author="srm", text=second.text, tokens=1))
    assert len(session.srm_engine.ids) > len(kept_ids)
    withdrawn = session.withdraw_last()
    assert withdrawn.text == second.text
    assert session.srm_engine.ids == kept_ids  # cropped, not rebuilt
    assert session.committed_count == 1


def test_resume_after_a_rollback_equals_the_uninterrupted_run(tmp_path):
    from langgraph.checkpoint.sqlite import SqliteSaver

    config, app = run_with(EscalationRule(threshold=2.0, rollback_threshold=0.5), tmp_path)
    reference = app.invoke(QUESTION, RunOptions(policy="rankguide"))
    db = tmp_path / "runs.sqlite"
    saver = SqliteSaver(sqlite3.connect(db, check_same_thread=False))
    graph = build_graph(RankGuidePipeline(config), checkpointer=saver)
    thread = {"configurable": {"thread_id": "t1"}}
    for update in graph.stream({"question": QUESTION}, thread, stream_mode="updates"):
        if "withdrawn" in (update.get("guard") or {}):
            break  # killed right after the rollback was checkpointed
    state = graph.get_state(thread)
    assert state.next == ("lrm_step",) and state.values["rollbacks"] == 1
    fresh = RankGuidePipeline(config, registry=ModelRegistry())
    saver2 = SqliteSaver(sqlite3.connect(db, check_same_thread=False))
    resumed = build_graph(fresh, checkpointer=saver2).invoke(None, thread)
    # Signals are compared to 1e-6: a cache cropped and extended and one prefilled in one pass
    # sum in a different order.
    strip = ("latency_s", "draft_latency_s", "signals")
    clean = [{k: v for k, v in s.items() if k not in strip} for s in resumed["steps"]]
    expected = [{k: v for k, v in s.items() if k not in strip} for s in reference.steps]
    assert clean == expected and resumed["answer"] == reference.answer
    for ours, theirs in zip(resumed["steps"], reference.steps, strict=True):
        assert ours["signals"] == pytest.approx(theirs["signals"], abs=1e-6)


def _problem(srm_correct: bool, takeovers: list[bool], cost: float = 1.0) -> ReplayProblem:
    steps = [
        ReplayStep(k, {}, 3, False, "x", False, 0.1, True, ok, cost * (len(takeovers) - k))
        for k, ok in enumerate(takeovers)
    ]
    return ReplayProblem(f"p{len(takeovers)}{srm_correct}", srm_correct, steps)


def test_replay_of_a_takeover_rule_follows_the_first_flag_exactly():
    problem = _problem(False, [True, True, False])
    rule = EscalationRule(threshold=1.0, takeover=True)
    point = replay_rule([problem], [[0.0, 2.0, 3.0]], rule)  # first flag at step 1
    assert point.accuracy == 1.0
    assert point.latency_s == pytest.approx(0.1 + 0.1 + 2.0)
    late = replay_rule([problem], [[0.0, 0.0, 3.0]], rule)  # flagged too late
    assert late.accuracy == 0.0
    back = EscalationRule(threshold=2.5, rollback_threshold=1.5, takeover=True)
    rolled = replay_rule([problem], [[0.0, 2.0, 3.0]], back)  # flag at 2 rolls back to 1
    assert rolled.accuracy == 1.0 and rolled.rollback_rate == 1.0


def test_the_operating_point_is_the_most_accurate_one_at_the_target_speedup():
    def point(label: str, accuracy: float, latency: float) -> OperatingPoint:
        return OperatingPoint(label, 100, accuracy, latency, 1.0, 0.2)

    points = [point("slow", 0.97, 0.8), point("fit", 0.91, 0.45), point("fast", 0.8, 0.3)]
    chosen, _ = choose_operating_point(points, target_speedup=2.0)
    assert chosen is not None and chosen.label == "fit"
    assert [p.label for p in pareto_front(points)] == ["fast", "fit", "slow"]
    assert choose_operating_point(points, target_speedup=5.0)[0] is None


def test_calibration_files_of_version_1_still_load_and_bad_rules_name_the_field(tmp_path):
    data = position_calibration(EscalationRule(1.0)).to_dict()
    v1 = {k: v for k, v in data.items() if k not in ("rule", "variants", "replay")}
    v1["version"] = 1
    assert Calibration.from_dict(v1).rule is None
    data["rule"]["risk_threshold"] = 1.5
    with pytest.raises(CalibrationError, match=r"rule.risk_threshold"):
        Calibration.from_dict(data)
    data["rule"] = {"threshold": 0.0, "takeover": "yes"}
    with pytest.raises(CalibrationError, match=r"rule.takeover"):
        Calibration.from_dict(data)
    missing = position_calibration(EscalationRule(1.0))
    with pytest.raises(CalibrationError, match="no router variant 'paper'"):
        missing.variant("paper")
    with pytest.raises(Exception, match="needs a calibration with a 'paper' variant"):
        build_router("rankguide-paper", calibration=missing)


def test_calibrate_fits_the_chain_keeps_replay_data_and_refits_without_rerunning(tmp_path):
    out, keep = tmp_path / "cal.json", tmp_path / "replay.jsonl"
    args = ["calibrate", "--n", "3", "--select-n", "2", "--replay-data", str(keep)]
    assert main([*args, "--out", str(out)]) == 0
    cal = Calibration.load(out)
    assert set(cal.variants) == {"paper", "benefit", "context", "risk", "rollback", "takeover"}
    assert cal.rule is not None and cal.variants["paper"].rule is None
    assert cal.variants["takeover"].rule is not None and cal.variants["takeover"].rule.takeover
    stages = cal.replay["stages"]
    assert stages["rollback"]["chosen"]["measured"] is True
    assert stages["takeover"]["chosen"]["measured"] is False
    lines = keep.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["steps"] for line in lines)
    assert main([*args, "--out", str(tmp_path / "again.json")]) == 0
    assert keep.read_text().splitlines() == lines  # reused, not collected again
    assert build_router("rankguide-paper", calibration=cal).name == "rankguide-paper"


def test_replay_labels_benefit_where_the_lrm_step_fixes_a_failing_srm_step():
    pipeline = ReplayPipeline(load_config(None, overrides={"routing": {"calibration": None}}))
    from langchain_rankguide.calibration import verifier_labels
    from langchain_rankguide.calibration.replay import collect_replay
    from langchain_rankguide.demo import DemoTask

    task = DemoTask()
    problems = task.calibration_problems(1, 0)
    replays = collect_replay(pipeline, task, problems, verifier_labels(task))
    for problem, replay in zip(problems, replays, strict=True):
        lrm = RankGuideApp(pipeline).invoke(problem.question, RunOptions(policy="lrm"))
        assert replay.steps[0].takeover_correct == bool(
            task.check(problem, lrm.answer, [s["text"] for s in lrm.steps])
        )
        for step in replay.steps:
            assert step.benefit == (step.failing and step.lrm_step_passes is True)


def test_reselect_runs_the_shipped_router_at_each_threshold_and_keeps_the_rest(tmp_path, capsys):
    out = tmp_path / "cal.json"
    args = ["calibrate", "--reselect", "demo", "--n", "0", "--select-n", "2"]
    assert main([*args, "--thresholds=9,-9", "--target-speedup", "0.01", "--out", str(out)]) == 0
    shipped, cal = Calibration.load(demo_calibration_path()), Calibration.load(out)
    record = cal.replay["reselected"]
    assert [p["threshold"] for p in record["tried"]] == [9.0, -9.0]
    chosen = record["chosen"]
    # 9 escalates nothing (the SRM alone), -9 every step: each run's accuracy decides.
    assert chosen["accuracy"] == max(p["accuracy"] for p in record["tried"])
    assert cal.threshold == chosen["threshold"] and cal.rule.threshold == cal.threshold
    assert record["previous_threshold"] == shipped.threshold
    assert (cal.weights, cal.signals, cal.variants) == (
        shipped.weights,
        shipped.signals,
        shipped.variants,
    )
    escalated = {p["threshold"]: p["escalation_rate"] for p in record["tried"]}
    assert escalated == {9.0: 0.0, -9.0: 1.0}
    assert "score >= 9.000" in capsys.readouterr().out


def test_reselect_refuses_a_target_no_threshold_reaches_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "cal.json"
    args = ["calibrate", "--reselect", "demo", "--n", "0", "--select-n", "1", "--out", str(out)]
    assert main([*args, "--thresholds=9", "--target-speedup", "1000"]) != 0
    assert "no threshold reached 1000x over the LRM alone" in capsys.readouterr().err
    assert not out.exists()
    assert main([*args, "--thresholds=x"]) != 0
    assert "--thresholds: 'x' is not a comma-separated list" in capsys.readouterr().err
    assert main([*args, "--plot", str(tmp_path / "p.png")]) != 0
    assert "--reselect fits nothing; it takes no --plot" in capsys.readouterr().err
    assert main(["calibrate", "--thresholds=1", "--out", str(out)]) != 0
    assert "--thresholds goes with --reselect FILE" in capsys.readouterr().err
