"""Benchmarks: statistics, tasks, the oracle, and a small bench run checking files and schema."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from langchain_rankguide.bench.report import summarise
from langchain_rankguide.bench.runner import OracleRouter, parse_policies, read_records
from langchain_rankguide.bench.stats import (
    bootstrap_ci,
    curve_at_rate,
    interpolate,
    paired_difference,
    paired_ratio,
    pareto_front,
    wilson_interval,
)
from langchain_rankguide.bench.tasks import (
    DemoTask,
    JsonlTask,
    answers_match,
    boxed,
    load_task,
    normalise_answer,
)
from langchain_rankguide.cli import main
from langchain_rankguide.errors import RankGuideError
from langchain_rankguide.routing import StepContext
from langchain_rankguide.schemas import CALIBRATION_VERSION

# --------------------------------------------------------------------------- statistics


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(80, 100)
    assert lo == pytest.approx(0.7112, abs=1e-3) and hi == pytest.approx(0.8666, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_bootstrap_ci_brackets_the_mean():
    values = [0.0, 1.0] * 50
    lo, hi = bootstrap_ci(values, resamples=500)
    assert lo < 0.5 < hi and hi - lo < 0.3


def test_paired_difference_sees_what_unpaired_intervals_miss():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2, 400).astype(float)
    better = base.copy()
    better[np.flatnonzero(base == 0)[:20]] = 1.0  # 20 more problems right, none fewer
    result = paired_difference(better, base, resamples=500)
    assert result.estimate == pytest.approx(20 / 400)
    assert result.ci95[0] > 0, "a strictly better policy must have a CI above zero"
    same = paired_difference(base, base, resamples=200)
    assert same.ci95 == (0.0, 0.0)
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0, 0.0])


def test_paired_ratio_of_latencies():
    slow = [2.0, 4.0, 6.0]
    fast = [1.0, 2.0, 3.0]
    result = paired_ratio(slow, fast, resamples=200)
    assert result.estimate == pytest.approx(2.0)
    assert result.ci95 == pytest.approx((2.0, 2.0))


def test_interpolate_inside_and_never_outside():
    curve = [(0.3, 0.7), (0.1, 0.5), (0.1, 0.7)]  # unsorted; two points share x = 0.1
    assert interpolate(curve, 0.2) == pytest.approx(0.65)
    assert interpolate(curve, 0.1) == pytest.approx(0.6)
    assert interpolate(curve, 0.05) is None and interpolate(curve, 0.5) is None
    assert interpolate([], 0.1) is None


def test_pareto_front():
    points = [(1.0, 0.5), (2.0, 0.4), (3.0, 0.9), (0.5, 0.2), (3.5, 0.9)]
    assert pareto_front(points) == [3, 0, 2]


def test_curve_at_rate_reads_the_resampled_curve():
    correct = [np.array([0.0, 0.0, 1.0, 1.0]), np.array([1.0, 1.0, 1.0, 1.0])]
    escalated = [np.array([0.0, 0.0, 0.0, 0.0]), np.array([2.0, 2.0, 2.0, 2.0])]
    steps = [np.array([4.0] * 4), np.array([4.0] * 4)]
    idx = np.arange(4)
    assert curve_at_rate(correct, escalated, steps, 0.25, idx) == pytest.approx(0.75)
    assert math.isnan(curve_at_rate(correct, escalated, steps, 0.9, idx))


# --------------------------------------------------------------------------- tasks


def test_boxed_answers_and_normalisation():
    assert boxed(r"so \boxed{\frac{5}{6}} and \boxed{7}") == "7"
    assert boxed(r"x = \boxed{\frac{1}{\sqrt{2}}}.") == r"\frac{1}{\sqrt{2}}"
    assert boxed(r"\boxed 5$") == "5"
    assert boxed("no box") is None
    assert normalise_answer(r"\left( 1, 2 \right)") == "(1,2)"
    assert normalise_answer(r"\text{5 cm}.") == "5cm"
    assert answers_match(r"\dfrac{1}{2}", "0.5")
    assert answers_match(r"\frac12", r"\frac{1}{2}")
    assert answers_match("x = 5", "5")
    assert answers_match("1,000", "1000")
    assert not answers_match("3", "4")
    assert not answers_match("", "")


def test_jsonl_task(tmp_path):
    path = tmp_path / "task.jsonl"
    lines = [
        {"id": "a", "question": "What is 2+2?", "answer": "4"},
        {"problem": "Half of one?", "solution": r"It is $\boxed{\frac{1}{2}}$."},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    task = load_task(f"jsonl:{path}")
    assert isinstance(task, JsonlTask) and not task.has_step_verifier
    problems = task.problems(10, seed=0)
    assert [p.id for p in problems] == ["a", "2"]
    assert problems[1].reference == r"\frac{1}{2}"
    assert task.check(problems[1], r"\boxed{0.5}", [])
    assert task.check(problems[1], None, ["so ", r"\boxed{1/2}"])
    assert not task.check(problems[0], "5", [])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "no answer"}\n')
    with pytest.raises(RankGuideError, match=r"bad\.jsonl:1"):
        JsonlTask(bad)
    with pytest.raises(RankGuideError):
        load_task("nope")


def test_demo_task_checks_answers_and_steps():
    task = DemoTask()
    problem = task.problems(1, seed=0)[0]
    assert task.check(problem, problem.reference, [])
    assert not task.check(problem, str(int(problem.reference) + 1), [])
    assert {p.id for p in task.problems(5, 0)}.isdisjoint(
        {p.id for p in task.calibration_problems(5, 0)}
    )


def test_oracle_escalates_exactly_the_wrong_steps():
    import re

    from langchain_rankguide.demo.task import render_trace

    task = DemoTask()
    problem = task.problems(1, seed=3)[0]
    trace = render_trace(problem.payload, error_rate=0.0)
    good = next(step.text for step in trace if step.kind == "operation")
    last = list(re.finditer(r"-?\d+", good))[-1]
    bad = good[: last.start()] + str(int(last.group()) + 1) + good[last.end() :]
    router = OracleRouter(task)
    router.bind(problem)
    assert not router.decide(StepContext(0, text=good)).escalate
    assert router.decide(StepContext(0, text=bad)).escalate
    assert router.decide(StepContext(1, text="gibberish", previous_texts=[good])).escalate


def test_parse_policies():
    assert parse_policies(None)[0] == "srm" and "oracle" in parse_policies("all")
    assert parse_policies("lrm, srm,lrm") == ["lrm", "srm"]
    with pytest.raises(RankGuideError, match="unknown policy"):
        parse_policies("srm,magic")


# --------------------------------------------------------------------------- summary


def _record(policy, point, pid, correct, latency, esc, steps, default=True):
    return {
        "policy": policy,
        "point": point,
        "threshold": None,
        "default_point": default,
        "problem_id": pid,
        "correct": correct,
        "latency_s": latency,
        "wall_s": latency,
        "usage": {
            "srm": {"prefill_tokens": 10, "decode_tokens": 5},
            "lrm": {"prefill_tokens": 1, "decode_tokens": 1},
        },
        "n_steps": steps,
        "escalations": esc,
        "failure_modes": {},
        "wrong_steps": 0,
        "stop_reason": "answer",
        "answer_author": "srm",
    }


def test_summary_comparisons_on_synthetic_records():
    records = []
    for i in range(40):
        pid = f"p{i}"
        records.append(_record("srm", "srm", pid, i % 2 == 0, 1.0, 0, 4))
        records.append(_record("lrm", "lrm", pid, True, 4.0, 4, 4))
        records.append(_record("oracle", "oracle", pid, True, 2.0, 1, 4))
        records.append(_record("rankguide", "rankguide", pid, i % 4 != 1, 1.5, 1, 4))
        records.append(_record("entropy", "entropy", pid, i % 2 == 0, 1.2, 0, 4))
        if i < 20:  # a shorter sweep merged with the full default run
            records.append(_record("entropy", "entropy@0.5", pid, i % 4 != 1, 2.0, 2, 4, False))
    summary = summarise(records, resamples=200)
    assert summary["policies"]["lrm"]["escalation_rate"] == 1.0
    assert summary["speedup_vs_lrm"]["srm"] == pytest.approx(4.0)
    cmp = summary["comparisons"]
    assert cmp["vs_lrm"]["srm"]["accuracy_diff"]["estimate"] == pytest.approx(-0.5)
    eq = cmp["equal_escalation_rate"]["rankguide_vs_entropy"]
    assert eq["escalation_rate"] == pytest.approx(0.25)
    assert eq["n"] == 20 and cmp["vs_lrm"]["srm"]["accuracy_diff"]["n"] == 40
    # The entropy curve runs from (0, 50%) to (0.5, 75%): at 0.25 it reads 62.5%.
    assert eq["other_accuracy_interpolated"] == pytest.approx(0.625)
    assert cmp["oracle_gain_fraction"]["rankguide"]["estimate"] == pytest.approx(0.5)
    assert len(summary["sweep"]["entropy"]) == 2
    met = {t["target"].split(" (")[0]: t["met"] for t in summary["targets"]}
    assert met["rankguide >= 2x lower mean latency than lrm"] is True
    assert met["rankguide >= 90% of the oracle's accuracy gain over srm"] is False
    assert met["rankguide more accurate than random at equal escalation rate"] is None
    json.dumps(summary, allow_nan=False)


# --------------------------------------------------------------------------- a small bench run

RECORD_KEYS = {
    "policy",
    "question",
    "reference",
    "answer",
    "answer_author",
    "correct",
    "latency_s",
    "usage",
    "steps",
    "escalations",
    "failure_modes",
    "problem_id",
    "seed",
    "point",
    "n_steps",
    "stop_reason",
}
POLICY_KEYS = {
    "n",
    "accuracy",
    "accuracy_ci95",
    "latency_s_mean",
    "latency_s_median",
    "escalation_rate",
    "usage",
}


@pytest.fixture(scope="module")
def tiny_config_file(tiny_pair, tmp_path_factory):
    path = tmp_path_factory.mktemp("bench-config") / "tiny.yaml"
    data = {
        "version": 1,
        "srm": {"model": str(tiny_pair[0])},
        "lrm": {"model": str(tiny_pair[1])},
        "routing": {"calibration": None},
        "steps": {"max_steps": 4, "max_step_tokens": 16, "thinking_budget": 64},
    }
    path.write_text(yaml.safe_dump(data))
    return path


def test_small_bench_run_writes_the_documented_files(tiny_config_file, tmp_path):
    out = tmp_path / "bench"
    args = ["bench", "--config", str(tiny_config_file), "--n", "2", "--out", str(out)]
    assert main([*args, "--policies", "srm,random,rankguide", "--warmup", "0"]) == 0
    records = read_records(out / "results.jsonl")
    assert len(records) == 4, "two problems x two runnable policies (rankguide has no calibration)"
    for record in records:
        assert RECORD_KEYS <= set(record)
        assert set(record["usage"]) == {"srm", "lrm"}
        assert set(record["usage"]["srm"]) == {"prefill_tokens", "decode_tokens"}
        assert record["n_steps"] == len(record["steps"]) > 0
        assert {"author", "text", "escalated", "latency_s"} <= set(record["steps"][0])
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["policies"]) == {"srm", "random"}
    for stats in summary["policies"].values():
        assert POLICY_KEYS <= set(stats)
        assert len(stats["accuracy_ci95"]) == 2
        assert set(stats["usage"]) == {"srm", "lrm"}
    assert isinstance(summary["speedup_vs_lrm"], dict)
    assert {"cpu_count", "torch", "python"} <= set(summary["machine"])
    assert json.loads((out / "machine.json").read_text())["torch_threads"] == 1
    assert any("rankguide skipped" in note for note in summary["notes"])
    report = (out / "report.md").read_text()
    assert "| srm |" in report and "| random |" in report
    pytest.importorskip("matplotlib")
    assert (out / "pareto.png").stat().st_size > 1000

    # Resuming with an extra policy runs only what is missing.
    assert main([*args, "--policies", "srm,random,lrm", "--resume", "--warmup", "0"]) == 0
    records = read_records(out / "results.jsonl")
    assert sorted(r["point"] for r in records) == ["lrm", "lrm", "random", "random", "srm", "srm"]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["speedup_vs_lrm"]) == {"srm", "random", "lrm"}
    assert set(summary["comparisons"]["vs_lrm"]) == {"srm", "random"}

    # A report rebuilt without --seed names the seed the records were run with.
    assert main([*args, "--seed", "5", "--report-only"]) == 0
    assert json.loads((out / "summary.json").read_text())["seed"] == 0
    assert {r["seed"] for r in read_records(out / "results.jsonl")} == {0}


def test_bench_thresholds_add_points_by_value(tiny_config_file, tmp_path):
    out = tmp_path / "bench"
    args = ["bench", "--config", str(tiny_config_file), "--n", "1", "--warmup", "0"]
    spec = ["--policies", "random", "--thresholds", "random=0,1", "--thresholds", "random=1"]
    assert main([*args, *spec, "--out", str(out)]) == 0
    records = read_records(out / "results.jsonl")
    by_point = {r["point"]: r for r in records}
    assert sorted(by_point) == ["random", "random@t=0.0", "random@t=1.0"]  # 1 given twice: once
    never, always = by_point["random@t=0.0"], by_point["random@t=1.0"]
    assert never["escalations"] == 0 and never["default_point"] is False
    assert always["escalations"] == always["n_steps"] > 0 and always["threshold"] == 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["policies"]) == {"random"}, "extra points are not the policy's row"
    assert {e["point"] for e in summary["sweep"]["random"]} == set(by_point)
    assert "--thresholds random=0,1 --thresholds random=1" in summary["command"]
    assert "| random@t=1.0 |" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("lrm=1", "lrm takes no threshold"),
        ("entropy=0.5", "entropy is not among the policies run"),
        ("random=high", "is not a comma-separated list of numbers"),
        ("random=nan", "is not a comma-separated list of numbers"),
        ("random", "must look like POLICY=T"),
    ],
)
def test_bench_thresholds_errors_name_the_problem(tmp_path, capsys, spec, message):
    out = tmp_path / "bench"
    args = ["bench", "--policies", "random,lrm", "--thresholds", spec, "--out", str(out)]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (out / "results.jsonl").exists()


def test_perf_reports_overhead_signals_prefill_and_memory(tiny_config_file, tmp_path):
    from langchain_rankguide.bench.perf import PerfSettings, run_perf
    from langchain_rankguide.config import load_config

    result = run_perf(
        load_config(tiny_config_file), PerfSettings(repeats=1, warmup=0, n_problems=1)
    )
    assert result["overhead"]["engine_same_text"] is True
    rows = {r["variant"]: r for r in result["overhead"]["rows"]}
    assert rows["raw model loop"]["overhead_ms_per_step"] == 0.0
    assert rows["graph, no checkpointer"]["forwards"] == rows["raw model loop"]["forwards"]
    assert result["signals"]["signals"] and result["signals"]["compute_ms_per_step"] > 0
    assert result["prefill"]["steps"] > 0 and result["memory"]["peak_rss_mb"] > 0
    json.dumps(result, allow_nan=False)


# --------------------------------------------------------------------------- calibration extras


def test_lrm_agreement_rule():
    from langchain_rankguide.calibration import steps_agree

    assert steps_agree("12 + 5 = 17, total 17.\n\n", "12 + 5 = 17,  Total 17.")
    assert steps_agree("So 12 plus 5 is 17.", "12 + 5 = 17")
    assert not steps_agree("12 + 5 = 18", "12 + 5 = 17")
    assert not steps_agree("Let me think.", "Now we add.")


def test_calibration_stores_sweep_thresholds_and_policy_aurocs(tmp_path):
    import random

    from langchain_rankguide.calibration import (
        SWEEP_RATES,
        LabelledStep,
        fit_calibration,
        plot_distributions,
    )

    rng = random.Random(1)
    steps = []
    for _ in range(300):
        failing = rng.random() < 0.3
        entropy = rng.gauss(2.0 if failing else 1.0, 0.5)
        steps.append(
            LabelledStep(
                {
                    "entropy.first_token": entropy,
                    "entropy.first_token_top20": entropy,
                    "rank.window.effective": rng.gauss(5.0, 1.0),
                },
                failing,
                rng.choice([6, 8]),
            )
        )
    report = fit_calibration(steps, models={"srm": "a", "lrm": "b"}, target_rate=0.25)
    fitted = report.calibration.policy_thresholds
    for policy in ("entropy", "rank", "rankguide"):
        keys = [f"{policy}@{r:g}" for r in SWEEP_RATES]
        assert all(k in fitted for k in keys)
        values = [fitted[k] for k in keys]
        assert values == sorted(values, reverse=True), "higher rates need lower thresholds"
    assert report.policy_aurocs["entropy"] > 0.8 > 0.65 > report.policy_aurocs["rank"]
    assert report.policy_aurocs["rankguide"] > 0.8
    pytest.importorskip("matplotlib")
    assert plot_distributions(steps, report.signals, tmp_path / "dist.png")
    assert (tmp_path / "dist.png").stat().st_size > 1000


def test_calibrate_command_with_lrm_agreement_labels(tiny_config_file, tmp_path):
    task = tmp_path / "task.jsonl"
    task.write_text('{"question": "go", "answer": "19"}\n{"question": "we add", "answer": "3"}\n')
    out = tmp_path / "cal.json"
    report = tmp_path / "report.json"
    args = ["calibrate", "--config", str(tiny_config_file), "--task", f"jsonl:{task}"]
    assert main([*args, "--n", "2", "--out", str(out), "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["labels"] == "lrm" and data["n_steps"] > 0
    assert json.loads(out.read_text())["version"] == CALIBRATION_VERSION
    with pytest.raises(SystemExit):
        main([*args, "--labels", "nope", "--out", str(out)])
    assert main([*args, "--labels", "verifier", "--out", str(out)]) == 2
    assert main([*args, "--combine", "entropy.avg", "--out", str(out)]) == 2  # before any run
    assert main([*args, "--n", "2", "--combine", "entropy.mean", "--out", str(out)]) == 0
    assert "entropy.mean" in json.loads(out.read_text())["weights"]
