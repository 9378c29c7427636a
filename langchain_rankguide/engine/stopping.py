r"""Stopping criteria: what ends a step, checked after every generated token.

One call signature, as transformers' ``StoppingCriteria``: a criterion is called with the step's
:class:`StepProgress` and returns a :class:`Stop` (or ``None`` to go on). The step delimiter, the
end markers and per-call stop strings are all :class:`StopStrings`; a caller adds its own (a
completed grammar, for instance). A criterion that matches text also says how much of the text's
end could still become a match (:meth:`StoppingCriterion.held`), so a streaming consumer never
sees text past the point where the step ends.

Example:
    >>> stops = StopStrings(("\n\n",), "delimiter")
    >>> stops(StepProgress(token_ids=(7, 8), text="We add.\n\nWait", searched=7))
    Stop(reason='delimiter', end=9, marker='\n\n')
    >>> stops.held("We add.\n")
    1
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from langchain_rankguide.engine.text import find_marker
from langchain_rankguide.schemas import FinishReason


@dataclass(frozen=True)
class StepProgress:
    """What a stopping criterion sees after each generated token (EOS excluded).

    Attributes:
        token_ids: the ids generated in this step so far, the newest last.
        text: the step's text decoded so far.
        searched: how much of ``text`` existed before the newest token, so a text criterion
            scans each character a bounded number of times.
    """

    token_ids: Sequence[int]
    text: str
    searched: int


@dataclass(frozen=True)
class Stop:
    """A criterion's verdict that the step ends at the newest token.

    Attributes:
        reason: the step's finish reason.
        end: where the step's text ends (``None``: after all of it). A token that carried text
            past ``end`` is not fed to the model.
        marker: the matched text, for a text criterion.
    """

    reason: FinishReason
    end: int | None = None
    marker: str | None = None


class StoppingCriterion:
    """Decide after each token whether the step ends there; subclasses implement ``__call__``."""

    def __call__(self, progress: StepProgress) -> Stop | None:
        """Return a :class:`Stop` to end the step at the newest token, ``None`` to go on."""
        raise NotImplementedError

    def held(self, text: str) -> int:
        """How many trailing characters of ``text`` could still become a match (held back)."""
        return 0


def partial_marker_length(text: str, markers: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is a proper start of one of ``markers``.

    Example:
        >>> partial_marker_length("total</th", ["</think>", "Wait"])
        4
    """
    longest = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:n]):
                longest = n
                break
    return longest


class StopStrings(StoppingCriterion):
    r"""End the step at the first of some strings, matched on decoded text.

    A token that fuses a string with its neighbours (".\n\nWait") still ends the step, exactly
    at the string's end.

    Args:
        markers: the strings (empty ones are ignored).
        reason: the finish reason reported when one matches.
    """

    def __init__(self, markers: Sequence[str], reason: FinishReason) -> None:
        self.markers = tuple(m for m in markers if m)
        self.reason: FinishReason = reason

    def __call__(self, progress: StepProgress) -> Stop | None:
        """Stop at the earliest-ending marker that the newest token completed."""
        found = find_marker(progress.text, self.markers, progress.searched)
        if found is None:
            return None
        end, marker = found
        return Stop(self.reason, end, marker)

    def held(self, text: str) -> int:
        """The end of ``text`` that is the start of a marker."""
        return partial_marker_length(text, self.markers)


def first_stop(criteria: Sequence[StoppingCriterion], progress: StepProgress) -> Stop | None:
    """The verdict that ends the text earliest (ties: the first criterion), or ``None``."""
    best: Stop | None = None
    best_end = 0
    for criterion in criteria:
        stop = criterion(progress)
        if stop is None:
            continue
        end = len(progress.text) if stop.end is None else stop.end
        if best is None or end < best_end:
            best, best_end = stop, end
    return best


def held_back(criteria: Sequence[StoppingCriterion], text: str) -> int:
    """How many trailing characters of ``text`` no criterion has ruled out yet."""
    return max((criterion.held(text) for criterion in criteria), default=0)
