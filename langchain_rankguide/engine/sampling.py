"""Token choice: greedy, or sampling with a per-step seed so a resumed run reproduces."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingSettings:
    """How the next token is chosen.

    Attributes:
        temperature: 0 means greedy (argmax); > 0 samples from ``softmax(logits / T)``.
        top_p: nucleus sampling mass (1.0 = off).
        top_k: keep only the k most likely tokens (0 = off).
        seed: the run seed; each step derives its own seed from it (see :func:`step_seed`).
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        """``True`` when tokens are chosen by argmax."""
        return self.temperature <= 0.0


def step_seed(run_seed: int, step_index: int, role: str) -> int:
    """Derive a step's sampling seed from (run seed, step index, model role).

    A hash rather than arithmetic keeps seeds of neighbouring steps and roles unrelated, and
    the value depends on nothing else, so a run resumed at step ``i`` samples as the original.
    """
    digest = hashlib.sha256(f"{run_seed}:{step_index}:{role}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def choose_token(
    logprobs: torch.Tensor, settings: SamplingSettings, generator: torch.Generator | None
) -> int:
    """Pick the next token id from a 1-D log-probability vector."""
    if settings.greedy:
        return int(torch.argmax(logprobs))
    scores = logprobs / settings.temperature
    if settings.top_k > 0:
        k = min(settings.top_k, scores.numel())
        kth = torch.topk(scores, k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if settings.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
        drop = cumulative - torch.softmax(sorted_scores, dim=-1) > settings.top_p
        scores = scores.scatter(0, order[drop], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if not bool(torch.isfinite(probs).all()):
        # NaN/inf logits (a numerical fault in the model) cannot be sampled; choose as greedy
        # does, so the step is still drafted and its signals flag the fault for the router.
        return int(torch.argmax(logprobs))
    return int(torch.multinomial(probs, 1, generator=generator))
