"""Every demo question quoted in README.md and docs/ gets the right answer from the shipped pair.

The docs show these questions being run (`rankguide run`, the chat models, the graphs); a
user who copies one must get its result. Questions are found by their wording (any form that
``parse_problem`` reads), so a new example is covered as soon as it is written. Examples marked
``<!-- example: NAME -->`` (a Python block, then a ``text`` block of its output) are run, and
what they print must be what the doc shows.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from langchain_rankguide.demo.task import parse_problem

ROOT = Path(__file__).resolve().parents[1]
_QUOTED = re.compile(r"\"((?:Start at|Begin with|Start with) \d+[^\"\n]*)\"")
_EXAMPLE = re.compile(
    r"<!-- example: (?P<name>[\w-]+) -->\s*```python\n(?P<code>.*?)```\s*```text\n(?P<out>.*?)```",
    re.S,
)


def documented_questions() -> list[str]:
    """Every quoted demo question in README.md and docs/*.md, in order, without repeats."""
    found: dict[str, None] = {}
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for match in _QUOTED.finditer(path.read_text(encoding="utf-8")):
            question = match.group(1)
            if parse_problem(question) is not None:
                found[question] = None
    return list(found)


QUESTIONS = documented_questions()


def test_the_docs_quote_demo_questions() -> None:
    assert len(QUESTIONS) >= 5
    assert "Start at 72. Subtract 39, then add 14. What is the result?" in QUESTIONS


@pytest.fixture(scope="module")
def lrm_engine():  # type: ignore[no-untyped-def]
    from langchain_rankguide.demo.skills import _engine
    from langchain_rankguide.engine import load_model

    loaded = load_model("demo:lrm", dtype="float32", device="cpu", threads=1)
    return loaded, _engine(loaded, "lrm")


@pytest.mark.parametrize("question", QUESTIONS)
def test_the_lrm_answers_each_documented_question(lrm_engine, question: str) -> None:  # type: ignore[no-untyped-def]
    from langchain_rankguide.demo.skills import _prompt, continue_greedy
    from langchain_rankguide.demo.task import verify_steps

    loaded, engine = lrm_engine
    problem = parse_problem(question)
    assert problem is not None
    steps = continue_greedy(engine, _prompt(loaded, question))
    verdict = verify_steps(problem, steps)
    assert verdict.correct, (question, steps)


@pytest.fixture(scope="module")
def graph():  # type: ignore[no-untyped-def]
    from langchain_rankguide.config import load_config
    from langchain_rankguide.graph import build_graph

    return build_graph(load_config())


@pytest.mark.parametrize("question", QUESTIONS)
def test_rankguide_run_answers_each_documented_question(graph, question: str) -> None:  # type: ignore[no-untyped-def]
    """What ``rankguide run --json QUESTION`` prints: the default collaboration's answer."""
    state = graph.invoke({"question": question})
    problem = parse_problem(question)
    assert problem is not None
    assert state["answer"] == str(problem.answer), (question, [s["text"] for s in state["steps"]])
    assert state["correct"] is True


def documented_examples() -> list[tuple[str, str, str]]:
    """Every ``<!-- example: NAME -->`` of docs/*.md: its name, its code, the output shown."""
    return [
        (match["name"], match["code"], match["out"])
        for path in sorted((ROOT / "docs").glob("*.md"))
        for match in _EXAMPLE.finditer(path.read_text(encoding="utf-8"))
    ]


EXAMPLES = documented_examples()


def test_the_docs_hold_examples_with_their_output() -> None:
    assert "agent-loop" in [name for name, _, _ in EXAMPLES]


@pytest.mark.parametrize(("name", "code", "output"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_each_documented_example_prints_what_the_doc_shows(
    name: str, code: str, output: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from langchain_rankguide.engine.grammar import llguidance_available

    pytest.importorskip("langchain.agents", reason="langchain (the [agents] extra)")
    if not llguidance_available():
        pytest.skip("llguidance (the [structured] extra) is not installed")
    exec(compile(code, f"<docs example {name}>", "exec"), {"__name__": f"docs_example_{name}"})
    assert capsys.readouterr().out == output
