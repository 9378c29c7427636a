"""Reflection / transition cue rules and verbatim-repeat detection."""

from __future__ import annotations

import pytest
import torch

from langchain_rankguide.errors import SignalError
from langchain_rankguide.signals.text import (
    ReflectionRules,
    is_reflection,
    is_repeat,
    label_thought,
    normalise_whitespace,
    reflection_streak,
)

torch.set_num_threads(1)

RULES = ReflectionRules()


@pytest.mark.parametrize(
    "text",
    [
        "Wait, 12 + 5 is 17, not 18.",
        "  \n\nwait. That is wrong.",
        "**Wait**, let me redo this.",
        "Hmm, that seems off.",
        "But wait, the sign flips.",
        "Let me check: 3 * 4 = 12.",
        "LET ME VERIFY the total.",
        "Check: 12 + 5 = 17.",
        "Let me double-check the units.",
        "Actually, the answer is 4.",
        "On second thought, use 7.",
        "So, wait: is x positive?",
        "Let me  re-check\nthe sum.",
        "Recheck the arithmetic.",
        "To verify, substitute x = 2.",
    ],
)
def test_reflection_cues_match(text: str) -> None:
    assert is_reflection(text, RULES)
    assert label_thought(text, RULES) == "reflection"


@pytest.mark.parametrize(
    "text",
    [
        "The waiter brought 3 plates.",
        "12 + 5 = 17, so the total is 17.",
        "Checkout the result: 17.",
        "We compute the area of the triangle first.",
        "",
        "   \n\n",
        "x" * 45 + " wait, no",  # cue beyond the first 40 characters
    ],
)
def test_non_reflection_steps(text: str) -> None:
    assert not is_reflection(text, RULES)


def test_prefix_chars_is_configurable() -> None:
    late = "x" * 45 + " wait, no"
    assert is_reflection(late, ReflectionRules(prefix_chars=None))
    assert is_reflection(late, ReflectionRules(prefix_chars=60))
    assert not is_reflection("Now, wait.", ReflectionRules(prefix_chars=4))


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Alternatively, factor the quadratic.", "transition"),
        ("Another approach: complete the square.", "transition"),
        ("Instead, use the identity.", "transition"),
        ("Wait, alternatively we could factor.", "reflection"),  # reflection wins
        ("Multiply both sides by 2.", "execution"),
    ],
)
def test_label_thought(text: str, label: str) -> None:
    assert label_thought(text, RULES) == label


def test_custom_rules() -> None:
    rules = ReflectionRules(cues=["Re-examine"], transition_cues=["Switching"])  # type: ignore[arg-type]
    assert isinstance(rules.cues, tuple)
    hash(rules)
    assert is_reflection("re-examine step 2", rules)
    assert not is_reflection("Wait, no.", rules)
    assert label_thought("Switching to algebra.", rules) == "transition"
    assert label_thought("Wait, no.", rules) == "execution"


@pytest.mark.parametrize(
    "kwargs", [{"cues": ("wait", "  ")}, {"transition_cues": ("",)}, {"prefix_chars": 0}]
)
def test_bad_rules_raise(kwargs: dict[str, object]) -> None:
    with pytest.raises(SignalError):
        ReflectionRules(**kwargs)  # type: ignore[arg-type]


def test_reflection_streak() -> None:
    steps = ["12 + 5 = 17.", "Wait, 12 + 5?", "Let me verify: 17.", "Hmm, yes 17."]
    assert reflection_streak(steps, RULES) == 3
    assert reflection_streak(steps[:2], RULES) == 1
    assert reflection_streak(steps[:1], RULES) == 0
    assert reflection_streak([*steps, "So the answer is 17."], RULES) == 0
    assert reflection_streak([], RULES) == 0


def test_is_repeat_previous_only_by_default() -> None:
    previous = ["a = 1.\n\n", "b = 2.\n\n"]
    assert is_repeat("b  =  2.\n", previous)
    assert not is_repeat("a = 1.", previous)
    assert is_repeat("a = 1.", previous, any_previous=True)
    assert not is_repeat("c = 3.", previous, any_previous=True)


def test_empty_step_is_never_a_repeat() -> None:
    assert not is_repeat("", ["", "x"])
    assert not is_repeat("  \n\n", ["\n\n"], any_previous=True)
    assert not is_repeat("x", [])


def test_normalise_whitespace() -> None:
    assert normalise_whitespace("  a\n\n b\tc ") == "a b c"
