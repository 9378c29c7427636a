"""Logits processors: rewrite the next-token scores before a token is chosen.

One call signature, as transformers' ``LogitsProcessor``: ``(input_ids, scores) -> scores``,
where ``input_ids`` are all ids in the cache (prompt, committed steps and this step's tokens so
far) and ``scores`` the 1-D log-probabilities of the next token. Processors run in order; the
token is chosen (greedy or sampled) from the last one's output, while the step's recorded
log-probabilities and entropies stay those of the model. A grammar constraint is one (see
``langchain_rankguide.engine.grammar``).

Example:
    >>> import torch
    >>> ban_zero = lambda ids, scores: scores.index_fill(0, torch.tensor([0]), float("-inf"))
    >>> apply_processors([ban_zero], [5, 6], torch.zeros(3)).tolist()
    [-inf, 0.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch


class LogitsProcessor(Protocol):
    """Rewrite next-token scores; ``-inf`` forbids a token."""

    def __call__(self, input_ids: Sequence[int], scores: torch.Tensor) -> torch.Tensor:
        """Return the scores to choose the next token from (do not modify ``input_ids``)."""
        ...


def apply_processors(
    processors: Sequence[LogitsProcessor], input_ids: Sequence[int], scores: torch.Tensor
) -> torch.Tensor:
    """Run ``processors`` in order over ``scores``."""
    for processor in processors:
        scores = processor(input_ids, scores)
    return scores


def only_token(scores: torch.Tensor, token: int) -> torch.Tensor:
    """Scores that allow ``token`` alone (greedy and sampling both choose it)."""
    forced = torch.full_like(scores, float("-inf"))
    forced[token] = 0.0
    return forced
