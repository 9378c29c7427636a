"""Text rules: reflection (re-check) cues, thought labels for steering, verbatim repeats.

A step is a *reflection* when one of :attr:`ReflectionRules.cues` occurs as a whole phrase in
its first :attr:`ReflectionRules.prefix_chars` characters, compared case-insensitively after
leading/trailing whitespace is stripped (so ``"**Wait**, ..."`` and ``"So, wait: ..."`` count,
``"Waiter"`` does not). *Transition* steps are found the same way with
:attr:`ReflectionRules.transition_cues`; reflection wins when both match. Everything else is
*execution*. These are the keyword labels of docs/steering.md (SEAL).

A step *repeats* when its whitespace-normalised text equals the previous step's (or, with
``any_previous``, any earlier step's); an empty step never repeats.

Example:
    >>> rules = ReflectionRules()
    >>> label_thought("Wait, let me check the sum again.", rules)
    'reflection'
    >>> label_thought("Alternatively, factor the quadratic.", rules)
    'transition'
    >>> reflection_streak(["12 + 5 = 17.", "Wait, 12 + 5?", "Let me verify: 17."], rules)
    2
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from langchain_rankguide.errors import SignalError

ThoughtLabel = Literal["reflection", "transition", "execution"]
"""Steering label of one thought (step)."""

DEFAULT_REFLECTION_CUES: tuple[str, ...] = (
    "wait",
    "but wait",
    "hold on",
    "hmm",
    "actually",
    "on second thought",
    "let me check",
    "let me verify",
    "let me double-check",
    "let me double check",
    "let me re-check",
    "let me recheck",
    "let me confirm",
    "let me make sure",
    "let me reconsider",
    "let me re-examine",
    "let me think again",
    "let's check",
    "let's verify",
    "let's double-check",
    "verify",
    "verifying",
    "verification",
    "double-check",
    "double check",
    "re-check",
    "recheck",
    "check:",
    "checking",
    "to confirm",
    "make sure",
    "think again",
    "is that right",
    "is this correct",
)
"""Cues of reasoning models (DeepSeek-R1 distills, Qwen3: "Wait", "Hmm", "Let me verify") and of
the demo models ("Check:", "Let me check"), plus SEAL's reflection keywords."""

DEFAULT_TRANSITION_CUES: tuple[str, ...] = (
    "alternatively",
    "another way",
    "another approach",
    "another method",
    "another solution",
    "another strategy",
    "a different approach",
    "a different way",
    "instead",
    "on the other hand",
    "think differently",
    "let me try",
    "let's try",
    "try a different",
)
"""Cues that open a change of approach (SEAL's transition keywords and close variants)."""


@dataclass(frozen=True)
class ReflectionRules:
    """Configurable keyword rules for reflection and transition steps.

    Attributes:
        cues: reflection phrases, matched case-insensitively as whole phrases.
        transition_cues: transition phrases, matched the same way.
        prefix_chars: how many leading characters of the stripped step are searched; ``None``
            searches the whole step.

    Raises:
        SignalError: for an empty cue or a non-positive ``prefix_chars``.
    """

    cues: tuple[str, ...] = DEFAULT_REFLECTION_CUES
    transition_cues: tuple[str, ...] = DEFAULT_TRANSITION_CUES
    prefix_chars: int | None = 40

    def __post_init__(self) -> None:
        for cue in (*self.cues, *self.transition_cues):
            if not isinstance(cue, str) or not cue.strip():
                raise SignalError(f"cues must be non-empty strings, got {cue!r}")
        if self.prefix_chars is not None and self.prefix_chars <= 0:
            raise SignalError(f"prefix_chars must be positive or None, got {self.prefix_chars!r}")
        # Lists from YAML/JSON configs arrive as lists; keep the dataclass hashable.
        object.__setattr__(self, "cues", tuple(self.cues))
        object.__setattr__(self, "transition_cues", tuple(self.transition_cues))


DEFAULT_RULES = ReflectionRules()
"""The default rules."""


@functools.lru_cache(maxsize=64)
def _pattern(cues: tuple[str, ...]) -> re.Pattern[str] | None:
    parts = []
    # Longest first so that the alternation reports the most specific phrase.
    for cue in sorted({c.strip().lower() for c in cues}, key=len, reverse=True):
        body = r"\s+".join(re.escape(word) for word in cue.split())
        # Word boundaries only where the cue itself starts/ends with a word character, so that
        # "check:" still matches "check: 17" and "wait" does not match "waiter".
        left = r"(?<!\w)" if cue[0].isalnum() or cue[0] == "_" else ""
        right = r"(?!\w)" if cue[-1].isalnum() or cue[-1] == "_" else ""
        parts.append(f"{left}{body}{right}")
    if not parts:
        return None
    return re.compile("|".join(parts), re.IGNORECASE)


def _head(text: str, rules: ReflectionRules) -> str:
    stripped = text.strip()
    return stripped if rules.prefix_chars is None else stripped[: rules.prefix_chars]


def _matches(text: str, cues: tuple[str, ...], rules: ReflectionRules) -> bool:
    pattern = _pattern(cues)
    return pattern is not None and pattern.search(_head(text, rules)) is not None


def is_reflection(text: str, rules: ReflectionRules = DEFAULT_RULES) -> bool:
    """Return ``True`` when the step opens a re-check under ``rules``.

    Args:
        text: the step's text.
        rules: the cue rules.

    Returns:
        Whether a reflection cue occurs in the step's first ``rules.prefix_chars`` characters.
    """
    return _matches(text, rules.cues, rules)


def label_thought(text: str, rules: ReflectionRules = DEFAULT_RULES) -> ThoughtLabel:
    """Label a thought for steering: reflection, transition, or execution.

    Args:
        text: the thought's text.
        rules: the cue rules.

    Returns:
        ``"reflection"`` if a reflection cue matches (checked first), else ``"transition"`` if a
        transition cue matches, else ``"execution"``.
    """
    if _matches(text, rules.cues, rules):
        return "reflection"
    if _matches(text, rules.transition_cues, rules):
        return "transition"
    return "execution"


def reflection_streak(texts: Sequence[str], rules: ReflectionRules = DEFAULT_RULES) -> int:
    """Count the consecutive reflection steps ending with the last one.

    Args:
        texts: step texts, oldest first; the last is the current step.
        rules: the cue rules.

    Returns:
        0 when the last step is not a reflection (or ``texts`` is empty).
    """
    streak = 0
    for text in reversed(texts):
        if not is_reflection(text, rules):
            break
        streak += 1
    return streak


def normalise_whitespace(text: str) -> str:
    """Collapse every run of whitespace to one space and strip the ends."""
    return " ".join(text.split())


def is_repeat(text: str, previous: Sequence[str], *, any_previous: bool = False) -> bool:
    """Return ``True`` when the step repeats an earlier step verbatim (whitespace-normalised).

    Args:
        text: the current step's text.
        previous: earlier step texts, oldest first.
        any_previous: compare with every earlier step instead of only the previous one
            (docs/signals.md: "repeats the previous one verbatim" is the default).

    Returns:
        Whether it is a repeat; an empty (or all-whitespace) step never is.
    """
    current = normalise_whitespace(text)
    if not current or not previous:
        return False
    if not any_previous:
        return normalise_whitespace(previous[-1]) == current
    return any(normalise_whitespace(p) == current for p in previous)
