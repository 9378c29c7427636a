"""Demo pair v2 data: question wordings, takeover continuations, tool dialogues, the mixture."""

from __future__ import annotations

import json
import random

import pytest

from langchain_rankguide.demo.forms import (
    CANONICAL,
    QuestionForm,
    all_forms,
    parse_operations,
    render_question,
)
from langchain_rankguide.demo.mixture import IGNORE_INDEX, Mixture, PrefixPool, encode_chat
from langchain_rankguide.demo.takeover import checked_prefix, continue_trace
from langchain_rankguide.demo.task import (
    format_question,
    make_problems,
    operation_text,
    parse_problem,
    render_trace,
    verify_steps,
)
from langchain_rankguide.demo.tools import _NOUNS, _VERBS, make_dialogue


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    from langchain_rankguide.demo.tokenizer import build_tokenizer

    return build_tokenizer()


def test_every_wording_parses_back_to_its_operations() -> None:
    ops = [("subtract", 39), ("add", 14), ("multiply", 2)]
    for form in all_forms():
        for n in (1, 3):
            question = render_question(72, ops[:n], form)
            assert parse_operations(question) == (72, ops[:n]), question
            assert parse_problem(question).answer == {1: 33, 3: 94}[n]  # type: ignore[union-attr]


def test_canonical_form_is_the_task_format() -> None:
    ops = [("subtract", 39), ("multiply", 5)]
    assert render_question(72, ops, CANONICAL) == format_question(72, ops)


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("Start at 72. Subtract 39, then add 14. What is the result?", 47),
        ("Start at 12. Add 5, then multiply by 3. What is the result?", 51),
        ("Start at 9. Add 4.", 13),
        ("Begin with 9. Add 4. What do you get?", 13),
        ("Start at 20. Subtract 5. Then multiply by 2.", 30),
    ],
)
def test_documented_wordings_parse(question: str, answer: int) -> None:
    problem = parse_problem(question)
    assert problem is not None and problem.answer == answer


def test_unreadable_questions_are_refused() -> None:
    assert parse_operations("Start at 5. Add 4 apples and a pear.") is None
    assert parse_operations("What is 2 + 2?") is None
    assert parse_problem("Start at 5. Divide by 2.") is None  # not exact


def test_takeover_from_a_right_prefix_reaches_the_answer() -> None:
    rng = random.Random(0)
    for problem in make_problems(30, seed=4, min_ops=2, max_ops=6):
        steps = [s.text for s in render_trace(problem, rng, error_rate=0.0, keyed_checks=False)]
        for cut in range(len(steps)):
            continuation = continue_trace(problem, steps[:cut], rng)
            assert continuation is not None
            full = [*steps[:cut], *(s.text for s in continuation)]
            verdict = verify_steps(problem, full)
            assert verdict.correct and verdict.all_steps_correct


def test_takeover_repairs_a_wrong_last_step_and_refuses_older_errors() -> None:
    problem = make_problems(1, seed=0, min_ops=3, max_ops=3)[0]
    (name, operand), value = problem.ops[0], problem.start
    right = verify_steps(problem, []).expected  # the problem's answer, for the assertion below
    wrong = operation_text(1, value, name, operand, 0 if value != 0 else 1)
    continuation = continue_trace(problem, [wrong])
    assert continuation is not None and continuation[0].kind == "reflection"
    assert "Wait, check (1)" in continuation[0].text
    assert verify_steps(problem, [wrong, *(s.text for s in continuation)]).answer == right
    rest = [s.text for s in continuation[1:2]]
    assert continue_trace(problem, [wrong, *rest]) is None


def test_tool_schemas_match_langchain_shape() -> None:
    from langchain_core.tools import tool
    from langchain_core.utils.function_calling import convert_to_openai_tool

    @tool
    def get_weather(location: str) -> str:
        """Get the weather."""
        return ""

    reference = convert_to_openai_tool(get_weather)
    for seed in range(50):
        dialogue = make_dialogue(random.Random(seed))
        for schema in dialogue.tools:
            assert list(schema) == list(reference)
            assert list(schema["function"]) == list(reference["function"])
            assert list(schema["function"]["parameters"]) == list(
                reference["function"]["parameters"]
            )


def test_tool_dialogue_copies_values_from_the_user_message() -> None:
    for seed in range(100):
        dialogue = make_dialogue(random.Random(seed))
        user = dialogue.messages[0]["content"]
        arguments = dialogue.call["arguments"]
        first = next(iter(arguments.values()))
        assert str(first) in user
        assert dialogue.call["name"] in {t["function"]["name"] for t in dialogue.tools}


def test_tool_names_are_mostly_made_up_so_they_must_be_copied() -> None:
    listed_parts = set(_VERBS) | set(_NOUNS) | {"function", "tool", "lookup"}
    made_up = listed = 0
    for seed in range(200):
        call = make_dialogue(random.Random(seed)).call
        made_up += not set(call["name"].split("_")) <= listed_parts
        first = make_dialogue(random.Random(seed), listed_names=True).call["name"]
        listed += set(first.split("_")) <= listed_parts
    assert made_up > 120 and listed == 200


def test_the_listed_generator_is_unchanged() -> None:
    """The shipped SRM's recipe draws from it: its dialogues must not move."""
    dialogue = make_dialogue(random.Random(0), listed_names=True)
    assert dialogue.call == {
        "name": "create_price",
        "arguments": {"customer_name": "땧뿙뉒낸섡쨷", "city": "a German bank"},
    }


def test_a_prefix_ending_in_checks_out_of_order_is_answered_with_the_running_total() -> None:
    for seed in range(40):
        rng = random.Random(seed)
        problem = make_problems(1, seed=seed, min_ops=3, max_ops=6)[0]
        prefix = checked_prefix(problem, len(problem.ops), rng, keyed=seed % 2 == 0)
        assert verify_steps(problem, prefix).all_steps_correct
        steps = continue_trace(problem, prefix, rng)
        assert steps is not None
        assert [s.text for s in steps] == [f"Answer: {problem.answer}"]


def test_chat_encoding_teaches_only_the_assistant(tokenizer) -> None:  # type: ignore[no-untyped-def]
    dialogue = make_dialogue(random.Random(3), with_result=True)
    ids, labels = encode_chat(tokenizer, dialogue.messages, tools=dialogue.tools)
    taught = tokenizer.decode([t for t in labels if t != IGNORE_INDEX])
    call = dialogue.messages[1]["tool_calls"][0]["function"]
    assert taught.startswith('<tool_call>{"name": ' + json.dumps(call["name"]))
    assert taught.endswith(dialogue.messages[-1]["content"] + "<|end|>")
    assert "Tools:" not in taught and dialogue.messages[0]["content"] not in taught
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(
        dialogue.messages, tools=dialogue.tools, tokenize=False
    )


def test_takeover_examples_teach_only_the_continuation(tokenizer) -> None:  # type: ignore[no-untyped-def]
    problem = make_problems(1, seed=2, min_ops=4, max_ops=4)[0]
    steps = [s.text for s in render_trace(problem, random.Random(0), keyed_checks=False)]
    pool = PrefixPool([(problem, steps)])
    mixture = Mixture(tokenizer, {"takeover": 1.0}, keyed_checks=True, pool=pool)
    ids, labels = mixture(random.Random(1))
    taught = tokenizer.decode([t for t in labels if t != IGNORE_INDEX])
    text = tokenizer.decode(ids)
    prefix = text[text.index("<|assistant|>") + len("<|assistant|>") : text.index(taught)]
    assert prefix and steps[0] in prefix
    assert taught.endswith(f"Answer: {problem.answer}<|end|>")


def test_mixture_refuses_unknown_kinds(tokenizer) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="unknown example kinds"):
        Mixture(tokenizer, {"poetry": 1.0}, keyed_checks=True)
    with pytest.raises(ValueError, match="PrefixPool"):
        Mixture(tokenizer, {"takeover": 1.0}, keyed_checks=True)


def test_question_form_defaults_are_canonical() -> None:
    assert QuestionForm() == CANONICAL
