"""The task interface: grading runs through the configured task, and calibration labels."""

from __future__ import annotations

import pytest

from langchain_rankguide.calibration import verifier_labels
from langchain_rankguide.config import load_config
from langchain_rankguide.demo import DemoTask
from langchain_rankguide.errors import ConfigError
from langchain_rankguide.graph import verify_answer
from langchain_rankguide.pipeline import RankGuidePipeline
from langchain_rankguide.tasks import JsonlTask, resolve_task

QUESTION = "Start at 72, then: (1) subtract 39, (2) add 14. What is the result?"


def test_demo_task_judges_demo_questions_only():
    task = DemoTask()
    assert task.judge_answer(QUESTION, "Answer: 47") is True
    assert task.judge_answer(QUESTION, "Answer: 046") is False
    assert task.judge_answer(QUESTION, "047") is True, "compared as integers, as before"
    assert task.judge_answer(QUESTION, None) is False
    assert task.judge_answer("What is 2 + 2?", "4") is None
    assert verify_answer(QUESTION, "47", None) is None


def test_jsonl_task_judges_its_own_questions(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"question": "Half of one?", "answer": "\\\\frac{1}{2}"}\n')
    task = JsonlTask(path)
    assert task.judge_answer("Half of one?", "so \\boxed{0.5}") is True
    assert task.judge_answer("Half of one?", "1") is False
    assert task.judge_answer("Something else?", "1") is None


def test_config_names_the_grading_task():
    config = load_config(None)
    assert config.task == "langchain_rankguide.demo:DemoTask"
    assert isinstance(RankGuidePipeline(config).grading_task, DemoTask)
    assert RankGuidePipeline(load_config(None, overrides={"task": None})).grading_task is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("DemoTask", "module:attribute"),
        ("no_such_module:Task", "no module named 'no_such_module'"),
    ],
)
def test_a_wrong_task_is_a_config_error_naming_the_field(spec, message):
    with pytest.raises(ConfigError, match=rf"task: .*{message}"):
        load_config(None, overrides={"task": spec})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("langchain_rankguide.demo:NoSuchTask", "has no attribute"),
        ("langchain_rankguide.demo:DEMO_SRM_DIR", "not a Task"),
        ("langchain_rankguide.tasks:JsonlTask", "without arguments"),
    ],
)
def test_resolving_a_wrong_task_names_the_field(spec, message):
    with pytest.raises(ConfigError, match=rf"^task: .*{message}"):
        resolve_task(spec)


def test_verifier_labels_count_heavy_revalidation_as_failing():
    from langchain_rankguide.demo.task import render_trace, split_steps, trace_text

    task = DemoTask()
    problem = task.calibration_problems(1, 0)[0]
    texts = split_steps(trace_text(render_trace(problem.payload, error_rate=0.0)))
    records = [{"text": t} for t in [texts[0], texts[0], *texts[1:]]]
    flags = verifier_labels(task)(problem, records)
    assert len(flags) == len(records)
    assert flags[1], "a verbatim repeat is heavy revalidation"
    assert task.revalidation_flags(problem, [r["text"] for r in records])[1]
