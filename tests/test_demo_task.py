"""The demo task (generator, traces, verifier, parser) and the demo tokenizer."""

from __future__ import annotations

import random
import string

import pytest

from langchain_rankguide.demo.task import (
    DELIMITER,
    ERROR_KINDS,
    Problem,
    catch_text,
    chat_messages,
    confirm_text,
    extract_answer,
    format_question,
    generate_problem,
    make_problems,
    operation_text,
    parse_problem,
    render_trace,
    revalidation_flags,
    split_of,
    split_steps,
    trace_text,
    verify_steps,
)

KNOBS = [
    {},
    {"min_ops": 1, "max_ops": 3},
    {"operators": ("add", "subtract", "multiply", "divide"), "max_ops": 6},
    {"digits": 3, "max_operand": 50},
]


@pytest.mark.parametrize("knobs", KNOBS)
def test_every_generated_trace_verifies(knobs: dict[str, object]) -> None:
    rng = random.Random(7)
    problems = [generate_problem(rng, **knobs) for _ in range(150)]  # type: ignore[arg-type]
    digits = int(knobs.get("digits", 2))  # type: ignore[call-overload]
    for problem in problems:
        steps = render_trace(problem, rng, digits=digits)
        assert steps[-1].kind == "answer"
        assert all(step.text.endswith(DELIMITER) for step in steps[:-1])
        assert not steps[-1].text.endswith(DELIMITER)
        verdict = verify_steps(problem, [step.text for step in steps])
        assert verdict.correct and verdict.answer == problem.answer
        for step, label in zip(steps, verdict.labels, strict=True):
            if step.injected_error:
                assert label.correct is False
                assert label.error_kind == step.error_kind
            else:
                assert label.correct, (problem, step, label)
                assert label.kind == step.kind


def test_values_stay_in_range_and_answers_are_exact() -> None:
    for problem in make_problems(300, seed=3, split="train"):
        value = problem.start
        assert 10 <= value <= 99
        for name, operand in problem.ops:
            value = {
                "add": value + operand,
                "subtract": value - operand,
                "multiply": value * operand,
            }[name]
            assert 0 <= value <= 99
        assert value == problem.answer
        assert 2 <= len(problem.ops) <= 5


def test_injected_errors_are_labelled_with_their_kind() -> None:
    rng = random.Random(11)
    kinds: set[str] = set()
    for problem in make_problems(200, seed=1, split="train"):
        steps = render_trace(problem, rng, error_rate=1.0)
        verdict = verify_steps(problem, [s.text for s in steps])
        assert verdict.correct
        for index, (step, label) in enumerate(zip(steps, verdict.labels, strict=True)):
            if step.injected_error:
                kinds.add(str(step.error_kind))
                assert step.kind == "operation"
                assert label.error_kind == step.error_kind
                # the next step catches it and is a correct reflection
                assert steps[index + 1].text.startswith("Wait, check")
                assert verdict.labels[index + 1].kind == "reflection"
                assert verdict.labels[index + 1].correct
    assert kinds == {"arithmetic", "wrong_operand", "wrong_operation"}
    assert kinds <= set(ERROR_KINDS)


def test_reflections_are_labelled_and_heavy_revalidation_occurs() -> None:
    rng = random.Random(5)
    streaks = 0
    reflections = 0
    for problem in make_problems(300, seed=2, split="train"):
        steps = render_trace(problem, rng)
        verdict = verify_steps(problem, [s.text for s in steps])
        for step, label in zip(steps, verdict.labels, strict=True):
            if step.kind == "reflection":
                reflections += 1
                assert label.kind == "reflection" and label.correct
        streaks += any(revalidation_flags(verdict.labels))
    assert reflections > 100
    assert 0 < streaks < 300  # some traces have 3+ consecutive checks, most do not


def test_reference_trace_example() -> None:
    problem = parse_problem(
        "Start at 72. Subtract 39, subtract 23, then multiply by 5. What is the result?"
    )
    assert problem is not None and problem.answer == 50
    assert problem.question == (
        "Start at 72, then: (1) subtract 39, (2) subtract 23, (3) multiply by 5. "
        "What is the result?"
    )
    steps = render_trace(problem, random.Random(0), error_rate=0.0, reflection_rate=1.0)
    text = trace_text(steps)
    assert text.startswith(
        "(1) subtract 39: 72 - 39 = 33, total 33.\n\n(2) subtract 23: 33 - 23 = 10, total 10.\n\n"
    )
    assert "(3) multiply by 5: 10 * 5 = 50, total 50.\n\n" in text
    assert "Wait, check (3) multiply by 5: 10 * 5 = 50, correct.\n\n" in text
    assert text.endswith("Answer: 50")
    assert split_steps(text) == [s.text for s in steps]


def test_make_problems_is_reproducible_distinct_and_split_disjoint() -> None:
    held = make_problems(400, seed=0)
    assert held == make_problems(400, seed=0)
    assert held != make_problems(400, seed=1)
    assert len({p.question for p in held}) == 400
    calib = make_problems(200, seed=0, split="calibration")
    train = make_problems(400, seed=0, split="train")
    assert not {p.question for p in held} & {p.question for p in train}
    assert not {p.question for p in calib} & {p.question for p in held}
    assert all(split_of(p.question) == "heldout" for p in held)
    assert held[3].id == "heldout-0-3"
    with pytest.raises(ValueError):
        make_problems(3, seed=0, split="test")


def test_parse_problem_round_trips() -> None:
    for problem in make_problems(200, seed=4, operators=("add", "subtract", "multiply", "divide")):
        parsed = parse_problem(f"Please solve: {problem.question} Thanks!")
        assert parsed is not None
        assert (parsed.start, parsed.ops, parsed.answer) == (
            problem.start,
            problem.ops,
            problem.answer,
        )
        assert parsed.question == problem.question
        for variant in (
            format_question(problem.start, problem.ops, numbered=False),
            format_question(problem.start, problem.ops, numbered=False, then_each=True),
        ):
            reparsed = parse_problem(variant)
            assert reparsed is not None and reparsed == parsed
    assert parse_problem("Hello") is None
    assert parse_problem("Start at 7. Juggle 3. What is the result?") is None
    assert parse_problem("Start at 7. Divide by 2. What is the result?") is None


def test_extract_answer() -> None:
    assert extract_answer("33 - 23 = 10, total 10.\n\nAnswer: 50") == 50
    assert extract_answer("Answer: 3\n\nAnswer: -4") == -4
    assert extract_answer("no answer here") is None


def _problem() -> Problem:
    problem = parse_problem(
        "Start at 72. Subtract 39, add 14, then multiply by 2. What is the result?"
    )
    assert problem is not None
    return problem


def test_verifier_accepts_steps_with_or_without_delimiter() -> None:
    problem = _problem()
    steps = [
        "72 - 39 = 33, total 33.",
        "(2) add 14: 33 + 14 = 47, total 47.\n\n",
        "Multiply by 2: 47 * 2 = 94, total 94.  ",
    ]
    verdict = verify_steps(problem, [*steps, "Answer: 94"])
    assert verdict.correct and verdict.all_steps_correct and verdict.wrong_steps == []


@pytest.mark.parametrize(
    ("steps", "wrong_index", "kind"),
    [
        (["72 - 39 = 34, total 34."], 0, "arithmetic"),
        (["72 - 38 = 34, total 34."], 0, "wrong_operand"),
        (["72 + 39 = 111, total 111."], 0, "wrong_operation"),
        (["70 - 39 = 31, total 31."], 0, "wrong_total"),
        (["72 + 14 = 86, total 86."], 0, "skipped"),
        (["72 - 39 = 33, total 34."], 0, "inconsistent"),
        (["add 39: 72 - 39 = 33, total 33."], 0, "inconsistent"),
        (["(2) subtract 39: 72 - 39 = 33, total 33."], 0, "inconsistent"),
        (["(1) subtract 38: 72 - 38 = 34, total 34."], 0, "wrong_operand"),
        (["72 - 39 = 33, total 33.", "72 - 39 = 33, total 33."], 1, "repeated"),
        (
            ["72 - 39 = 34, total 34.", "Wait, check 72 - 39: 72 - 39 = 34, correct."],
            1,
            "arithmetic",
        ),
        (
            ["72 - 39 = 34, total 34.", "Wait, check 72 - 39: 72 - 39 = 33, correct."],
            1,
            "false_confirm",
        ),
        (
            ["72 - 39 = 34, total 34.", "Wait, check (1) subtract 39: 72 - 39 = 34, correct."],
            1,
            "arithmetic",
        ),
        (
            ["72 - 39 = 33, total 33.", "Wait, check (2) subtract 39: 72 - 39 = 33, correct."],
            1,
            "wrong_reference",
        ),
        (
            ["72 - 39 = 33, total 33.", "Wait, check (1) add 39: 72 - 39 = 33, correct."],
            1,
            "inconsistent",
        ),
        (
            [
                "72 - 39 = 33, total 33.",
                "Wait, check (1) subtract 39: 72 - 39 = 33, not 5. Total 33.",
            ],
            1,
            "false_alarm",
        ),
        (
            ["72 - 39 = 33, total 33.", "Wait, check 50 - 39: 50 - 39 = 11, correct."],
            1,
            "wrong_reference",
        ),
        (
            ["72 - 39 = 33, total 33.", "Wait, check 72 - 39: it is 33, not 35. Total 33."],
            1,
            "false_alarm",
        ),
        (["72 - 39 = 33, total 33.", "Answer: 33"], 1, "premature"),
        (["hello there"], 0, "unparsed"),
    ],
)
def test_verifier_error_kinds(steps: list[str], wrong_index: int, kind: str) -> None:
    verdict = verify_steps(_problem(), steps)
    assert wrong_index in verdict.wrong_steps
    assert verdict.labels[wrong_index].error_kind == kind
    assert kind in ERROR_KINDS


def test_verifier_reads_the_keyed_check_forms() -> None:
    problem = _problem()
    steps = [
        "72 - 39 = 34, total 34.",
        "Wait, check (1) subtract 39: 72 - 39 = 33, not 34. Total 33.",
        "(2) add 14: 33 + 14 = 47, total 47.",
        "Wait, check (2) add 14: 33 + 14 = 47, correct.",
    ]
    labels = verify_steps(problem, steps).labels
    assert [label.kind for label in labels] == [
        "operation",
        "reflection",
        "operation",
        "reflection",
    ]
    assert [label.error_kind for label in labels] == ["arithmetic", None, None, None]


def test_verifier_judges_locally_and_follows_corrections() -> None:
    problem = _problem()
    # A slip at step 0, then correct arithmetic from the wrong total: only step 0 is wrong.
    slipped = ["72 - 39 = 34, total 34.", "34 + 14 = 48, total 48.", "48 * 2 = 96, total 96."]
    verdict = verify_steps(problem, [*slipped, "Answer: 96"])
    assert verdict.wrong_steps == [0, 3]
    assert verdict.labels[3].error_kind == "propagated"
    assert not verdict.correct
    # The same slip caught by a check: the trace recovers and is right.
    caught = [
        "72 - 39 = 34, total 34.",
        "Wait, check (1) subtract 39: 72 - 39 = 33, not 34. Total 33.",
        "33 + 14 = 47, total 47.",
        "47 * 2 = 94, total 94.",
        "Answer: 94",
    ]
    verdict = verify_steps(problem, caught)
    assert verdict.wrong_steps == [0] and verdict.correct
    # Wrong final answer that differs from the trace's own total.
    verdict = verify_steps(problem, [*caught[:4], "Answer: 95"])
    assert verdict.labels[-1].error_kind == "wrong_answer"
    # Steps after the answer are not judged.
    verdict = verify_steps(problem, [*caught, "Wait"])
    assert verdict.labels[-1].correct is None


def test_revalidation_flags() -> None:
    problem = _problem()
    steps = [
        operation_text(1, 72, "subtract", 39, 33),
        confirm_text(1, 72, "subtract", 39, 33),
        operation_text(2, 33, "add", 14, 47),
        operation_text(3, 47, "multiply", 2, 94),
        confirm_text(3, 47, "multiply", 2, 94),
        confirm_text(2, 33, "add", 14, 47),
        catch_text(3, 47, "multiply", 2, 94, 95),
        "Answer: 94",
    ]
    labels = verify_steps(problem, steps).labels
    assert revalidation_flags(labels) == [False, False, False, False, True, True, True, False]
    repeated = verify_steps(problem, [steps[0], steps[0]]).labels
    assert revalidation_flags(repeated) == [False, True]


def test_chat_messages() -> None:
    problem = _problem()
    assert chat_messages(problem) == [{"role": "user", "content": problem.question}]
    assert chat_messages(problem, "Be brief.")[0] == {"role": "system", "content": "Be brief."}


# ----------------------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    from langchain_rankguide.demo.tokenizer import build_tokenizer

    return build_tokenizer()


def test_tokenizer_round_trips_any_text(tokenizer) -> None:  # type: ignore[no-untyped-def]
    texts = [
        "Hello",
        string.printable.replace("\x0b", "").replace("\x0c", ""),
        "Start at 72. Subtract 39, then multiply by 5. What is the result?",
        "a=\n\nb\n\n\nc\t~ totally checked Waiting",
    ]
    rng = random.Random(0)
    for problem in make_problems(50, seed=9):
        texts.append(trace_text(render_trace(problem, rng)))
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
    assert len(tokenizer.encode("Hello", add_special_tokens=False)) == 5
    # Any other character is written as its UTF-8 bytes and decodes back.
    for text in ("¿Qué?", "你好啊集团", "こんにちは株式会社 😀", "Ünïcödé\u2028end"):
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text
    assert len(tokenizer.encode("¿", add_special_tokens=False)) == 2  # two UTF-8 bytes


def test_tokenizer_keeps_the_first_version_ids(tokenizer) -> None:  # type: ignore[no-untyped-def]
    from langchain_rankguide.demo.tokenizer import V1_VOCAB_SIZE

    vocab = tokenizer.get_vocab()
    assert vocab["<|pad|>"] == 0 and vocab["<|end|>"] == 2
    assert vocab["<tool_call>"] >= V1_VOCAB_SIZE and vocab["<0x00>"] >= V1_VOCAB_SIZE
    # Task text never uses an id past the first version's vocabulary.
    text = trace_text(render_trace(make_problems(1, seed=3)[0], random.Random(1)))
    assert max(tokenizer.encode(text, add_special_tokens=False)) < V1_VOCAB_SIZE


def test_tokenizer_fuses_the_delimiter(tokenizer) -> None:  # type: ignore[no-untyped-def]
    vocab = tokenizer.get_vocab()
    for token in (".\n\n", "=\n\n", "\n\n", "\n", "total", "Wait", "check", "Answer", "correct"):
        assert token in vocab
    ids = tokenizer.encode("(3) add 5: 10 + 5 = 15, total 15.\n\n", add_special_tokens=False)
    assert ids[-1] == vocab[".\n\n"]
    assert tokenizer.encode("x =\n\n", add_special_tokens=False)[-1] == vocab["=\n\n"]
    assert len(ids) <= 30


def test_step_tokens_never_cross_step_boundaries(tokenizer) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(1)
    for problem in make_problems(100, seed=5):
        steps = render_trace(problem, rng)
        joined = tokenizer.encode(trace_text(steps), add_special_tokens=False)
        pieces = [i for s in steps for i in tokenizer.encode(s.text, add_special_tokens=False)]
        assert joined == pieces


def test_special_tokens(tokenizer) -> None:  # type: ignore[no-untyped-def]
    assert tokenizer.eos_token == "<|end|>"
    assert tokenizer.pad_token == "<|pad|>"
    assert tokenizer.unk_token == "<|unk|>"
    for token in ("<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"):
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1


def test_chat_template_renders_every_role(tokenizer) -> None:  # type: ignore[no-untyped-def]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Start at 72. Add 1. What is the result?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "calc", "arguments": {"x": 1}}}
            ],
        },
        {"role": "tool", "content": "73"},
        {"role": "assistant", "content": "72 + 1 = 73, total 73.\n\nAnswer: 73"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|system|>Be brief.<|end|>"
        "<|user|>Start at 72. Add 1. What is the result?<|end|>"
        '<|assistant|><tool_call>{"name": "calc", "arguments": {"x": 1}}</tool_call><|end|>'
        "<|tool|>73<|end|>"
        "<|assistant|>72 + 1 = 73, total 73.\n\nAnswer: 73<|end|>"
    )
    prompt = tokenizer.apply_chat_template(
        messages[1:2], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|user|>Start at 72. Add 1. What is the result?<|end|><|assistant|>"
    tools = [{"type": "function", "function": {"name": "calc", "parameters": {}}}]
    with_tools = tokenizer.apply_chat_template(messages[1:2], tools=tools, tokenize=False)
    assert with_tools.startswith('<|system|>Tools: [{"type": "function"')
    with_both = tokenizer.apply_chat_template(messages[:2], tools=tools, tokenize=False)
    assert with_both.startswith("<|system|>Be brief.\nTools: [")
    assert with_both.count("<|system|>") == 1
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    assert tokenizer.apply_chat_template(parts, tokenize=False) == "<|user|>Hi<|end|>"


def test_chat_template_continue_final_message(tokenizer) -> None:  # type: ignore[no-untyped-def]
    messages = [
        {"role": "user", "content": "Start at 72. Add 1. What is the result?"},
        {"role": "assistant", "content": "72 + 1 = 73, total 73.\n\n"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    assert text.endswith("<|assistant|>72 + 1 = 73, total 73.\n\n")
    ids = tokenizer.apply_chat_template(messages, continue_final_message=True, return_dict=False)
    assert ids[-1] == tokenizer.get_vocab()[".\n\n"]


def test_tokenizer_saves_and_loads(tmp_path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    text = "Start at 72. Subtract 39.<|end|>\n\nWait, check 1 + 1: 1 + 1 = 2, correct."
    assert loaded.encode(text, add_special_tokens=False) == tokenizer.encode(
        text, add_special_tokens=False
    )
    messages = [{"role": "user", "content": "Hi"}]
    assert loaded.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    ) == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert loaded.eos_token == "<|end|>" and loaded.pad_token == "<|pad|>"


def test_built_tokenizer_is_the_shipped_one_in_every_process(tmp_path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    """The saved pre-tokenizer pattern does not depend on the process's hash seed."""
    import json
    import os
    import subprocess
    import sys

    from langchain_rankguide.demo import DEMO_LRM_DIR, DEMO_SRM_DIR

    tokenizer.save_pretrained(tmp_path)
    built = json.loads((tmp_path / "tokenizer.json").read_text())["pre_tokenizer"]
    for folder in (DEMO_SRM_DIR, DEMO_LRM_DIR):
        shipped = json.loads((folder / "tokenizer.json").read_text())["pre_tokenizer"]
        assert shipped == built, folder
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json; from langchain_rankguide.demo.tokenizer import build_tokenizer; "
            "print(json.loads(build_tokenizer().backend_tokenizer.to_str())['pre_tokenizer']"
            "['pattern']['Regex'])",
        ],
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert other.stdout.strip() == built["pattern"]["Regex"]


def test_task_module_re_exports_the_split_modules() -> None:
    from langchain_rankguide.demo import parsing, problems, task, traces, verify

    for name in task.__all__:
        homes = [m for m in (problems, traces, parsing, verify) if hasattr(m, name)]
        assert homes and getattr(task, name) is getattr(homes[0], name), name


def test_step_parsers_read_what_the_step_writers_write() -> None:
    from langchain_rankguide.demo.parsing import (
        parse_answer_step,
        parse_check_step,
        parse_operation_step,
    )

    op = parse_operation_step(operation_text(2, 33, "multiply", 3, 99).strip())
    assert op is not None and op.phrase_agrees
    assert (op.number, op.a, op.sym, op.b, op.result, op.total) == (2, 33, "*", 3, 99, 99)
    for keyed in (True, False):
        confirm = parse_check_step(confirm_text(1, 72, "subtract", 39, 33, keyed=keyed).strip())
        assert confirm is not None and not confirm.caught and confirm.agrees
        assert confirm.number == (1 if keyed else None) and confirm.value == 33
        catch = parse_check_step(catch_text(1, 72, "subtract", 39, 33, 34, keyed=keyed).strip())
        assert catch is not None and catch.caught and (catch.wrong, catch.total) == (34, 33)
    assert parse_answer_step("Answer: 50") == 50
    assert parse_operation_step("Answer: 50") is None and parse_check_step("Answer: 50") is None
