"""A grammar that switches on when the model opens a tool call (llama.cpp's "lazy" grammars).

With ``tool_choice="auto"`` the model decides whether to call a tool, so its reply cannot be
decoded under a grammar from the first token. But once it writes the call's opening markup
(``<tool_call>``) it has decided, and what follows must be ``{"name": ..., "arguments": ...}``
for one of the offered tools, then ``</tool_call>``. :class:`TriggeredGrammar` passes the
scores through untouched until the trigger's tokens end the generated text, then runs the
call's grammar (:class:`~langchain_rankguide.engine.grammar.GrammarProcessor`, closing within
what is left of the budget) until the call is complete, then lets the model write freely
again, so a reply may hold text, several calls, or none. llama.cpp's server does the same for
tool calls in ``auto`` mode; vLLM parses them unconstrained.

Example:
    >>> from transformers import AutoTokenizer
    >>> from langchain_rankguide.engine.loading import demo_model_dir
    >>> from langchain_rankguide.engine.grammar import tool_call_constraint
    >>> tokenizer = AutoTokenizer.from_pretrained(demo_model_dir("lrm"))
    >>> tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
    ...     "type": "object", "properties": {"city": {"type": "string"}}}}}
    >>> processors, criteria = triggered_grammar_hooks(
    ...     tool_call_constraint([tool], opened=True), tokenizer, [tokenizer.eos_token_id], 64)
    >>> processors[0].active
    False
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch

from langchain_rankguide.engine.grammar import (
    Constraint,
    GrammarMatcher,
    GrammarProcessor,
    grammar_hooks,
    grammar_vocab,
)
from langchain_rankguide.engine.processors import LogitsProcessor
from langchain_rankguide.engine.stopping import StepProgress, Stop, StoppingCriterion

if TYPE_CHECKING:
    from langchain_rankguide.answer_format import AnswerFormat

TOOL_CALL_TRIGGER = "<tool_call>"
"""The markup that opens a call in the ``<tool_call>{json}</tool_call>`` convention."""


class TriggeredGrammar:
    """A logits processor that applies ``constraint`` after each trigger, until it completes.

    Args:
        constraint: the grammar of what follows the trigger (for a tool call:
            :func:`~langchain_rankguide.engine.grammar.tool_call_constraint` with
            ``opened=True``).
        tokenizer: the model's tokenizer.
        eos_ids: ids that end generation.
        budget: the tokens the caller asked for; a call opened late closes within what is left.
        trigger: the text that switches the grammar on.
    """

    def __init__(
        self,
        constraint: Constraint,
        tokenizer: object,
        eos_ids: Iterable[int],
        budget: int,
        trigger: str = TOOL_CALL_TRIGGER,
    ) -> None:
        self.constraint = constraint
        self.eos_ids = frozenset(int(i) for i in eos_ids)
        self.vocab = grammar_vocab(tokenizer, self.eos_ids)
        self.budget = budget
        self.trigger = trigger
        self.calls = 0
        """Calls the grammar has completed."""
        self._start: int | None = None
        self._call: GrammarProcessor | None = None
        self._call_start = 0

    @property
    def active(self) -> bool:
        """A call is open: the scores are masked by its grammar."""
        return self._call is not None

    def generated(self, input_ids: Sequence[int]) -> Sequence[int]:
        """The ids generated since the first call."""
        if self._start is None:
            self._start = len(input_ids)
        return input_ids[self._start :]

    def __call__(self, input_ids: Sequence[int], scores: torch.Tensor) -> torch.Tensor:
        """Mask ``scores`` by the call's grammar while a call is open; else leave them."""
        generated = self.generated(input_ids)
        self.sync(generated)
        if self._call is None and self._opens_call(generated):
            left = max(1, self.budget - len(generated))
            matcher = GrammarMatcher(self.constraint, self.vocab, self.eos_ids)
            self._call = GrammarProcessor(matcher, left)
            self._call_start = len(generated)
        if self._call is None:
            return scores
        return self._call(input_ids, scores)

    def _opens_call(self, generated: Sequence[int]) -> bool:
        # By text, not by ids: a BPE model may spell the markup in pieces of its own choosing.
        # (A token that carries text past the markup is missed: that call is parsed as written.)
        texts = self.vocab.texts
        tail = generated[-len(self.trigger) :] if self.trigger else ()
        text = "".join(texts[t] if 0 <= t < len(texts) else "" for t in tail)
        return bool(self.trigger) and text.endswith(self.trigger)

    def sync(self, generated: Sequence[int]) -> None:
        """Let an open call's grammar see ``generated``; close the call once it is complete."""
        if self._call is None:
            return
        self._call.advance(generated[self._call_start :])
        if self._call.matcher.done:
            self._call = None
            self.calls += 1


class FreeTextBudget(StoppingCriterion):
    """End the reply at ``budget`` tokens unless a call is open (which may run past to close)."""

    def __init__(self, grammar: TriggeredGrammar) -> None:
        self.grammar = grammar

    def __call__(self, progress: StepProgress) -> Stop | None:
        """Stop with ``max_tokens`` once the budget is spent outside a call."""
        if len(progress.token_ids) < self.grammar.budget:
            return None
        # The processor has not seen the newest token yet: it may have closed the call.
        self.grammar.sync(progress.token_ids)
        return None if self.grammar.active else Stop("max_tokens")


def triggered_grammar_hooks(
    constraint: Constraint,
    tokenizer: object,
    eos_ids: Iterable[int],
    budget: int,
    trigger: str = TOOL_CALL_TRIGGER,
) -> tuple[list[LogitsProcessor], list[StoppingCriterion]]:
    """The step engine's hooks for a reply whose tool calls follow ``constraint``.

    Pass the engine ``overrun=CLOSING_OVERRUN`` with them: the criterion ends free text at
    ``budget``, and a call open at that point closes past it.
    """
    grammar = TriggeredGrammar(constraint, tokenizer, eos_ids, budget, trigger)
    return [grammar], [FreeTextBudget(grammar)]


def answer_hooks(
    answer: AnswerFormat | None, tokenizer: object, eos_ids: Iterable[int], budget: int
) -> tuple[list[LogitsProcessor], list[StoppingCriterion]]:
    """The hooks a reply of ``answer``'s shape is decoded with (none for free text).

    The reply's own grammar when it has one (a forced call, a ``response_format``); else,
    with tools offered, the call grammar that switches on when the model opens a call. Either
    may run :data:`~langchain_rankguide.engine.grammar.CLOSING_OVERRUN` tokens past
    ``budget`` to complete a value, so give the engine that ``overrun`` when hooks come back.
    """
    if answer is None:
        return [], []
    constraint = answer.constraint()
    if constraint is not None:
        return grammar_hooks(constraint, tokenizer, eos_ids, budget)
    call_grammar = answer.call_grammar()
    if call_grammar is not None:
        return triggered_grammar_hooks(call_grammar, tokenizer, eos_ids, budget)
    return [], []
