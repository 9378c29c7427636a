r"""Which positions of a forward pass receive the steering vector.

Position rules:

* ``"delimiter"`` (default): positions whose *input token's text contains the delimiter*. The
  set of such token ids is computed once from the vocabulary, so fused tokens such as
  ``".\n\n"`` or ``"\n\nWait"`` count.
* ``"generated"``: positions ``>= prompt_length``.
* ``"all"``: every position, the prompt included.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch

from langchain_rankguide.steering.vector import SteeringError

PositionRule = Literal["delimiter", "generated", "all"]
"""Which positions receive the vector."""

POSITION_RULES: tuple[str, ...] = get_args(PositionRule)

DEFAULT_DELIMITER = "\n\n"

_DELIMITER_CACHE: weakref.WeakKeyDictionary[Any, dict[str, frozenset[int]]] = (
    weakref.WeakKeyDictionary()
)


def delimiter_token_ids(tokenizer: Any, delimiter: str = DEFAULT_DELIMITER) -> frozenset[int]:
    r"""Return every token id whose decoded text contains ``delimiter``.

    Decoding each id on its own catches fused tokens (``".\n\n"``, ``"\n\nW"``) that a lookup
    of the delimiter's own id would miss. The result is cached per tokenizer and delimiter.

    Args:
        tokenizer: a transformers tokenizer.
        delimiter: the step delimiter text.

    Returns:
        The ids; empty when the tokenizer always splits the delimiter across several tokens.

    Raises:
        SteeringError: for an empty delimiter.
    """
    if not delimiter:
        raise SteeringError("the delimiter must not be empty")
    try:
        per_tokenizer = _DELIMITER_CACHE.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable: compute without caching
        per_tokenizer = {}
    if delimiter not in per_tokenizer:
        size = len(tokenizer)
        texts = tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=False)
        per_tokenizer[delimiter] = frozenset(i for i, t in enumerate(texts) if delimiter in t)
    return per_tokenizer[delimiter]


@dataclass(frozen=True)
class PositionSelector:
    """Turn (absolute positions, input ids) of one forward pass into a boolean mask.

    Attributes:
        rule: one of :data:`POSITION_RULES`.
        delimiter_ids: token ids that count as delimiter positions (``"delimiter"`` rule).
        prompt_length: first generated position (``"generated"`` rule).
    """

    rule: PositionRule = "delimiter"
    delimiter_ids: frozenset[int] = frozenset()
    prompt_length: int | None = None
    _wanted: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.rule not in POSITION_RULES:
            raise SteeringError(
                f"unknown position rule {self.rule!r}; use one of {', '.join(POSITION_RULES)}"
            )
        if self.rule == "delimiter" and not self.delimiter_ids:
            raise SteeringError(
                "positions='delimiter' needs the delimiter's token ids, but none were given "
                "(no token of the tokenizer contains the delimiter?); pass delimiter_token_ids "
                "or use positions='generated'"
            )
        if self.prompt_length is not None and self.prompt_length < 0:
            raise SteeringError(f"prompt_length must be >= 0, got {self.prompt_length}")
        # Built once: the engine asks for a mask on every decoded token.
        wanted = torch.tensor(sorted(self.delimiter_ids), dtype=torch.long)
        object.__setattr__(self, "_wanted", wanted)

    def mask(
        self,
        positions: torch.Tensor,
        input_ids: torch.Tensor | None,
        prompt_length: int | None = None,
    ) -> torch.Tensor:
        """Return a CPU bool mask ``(batch, seq)`` (batch 1 when it does not depend on ids).

        Args:
            positions: absolute positions of the fed tokens, 1-D.
            input_ids: the fed ids, ``(batch, seq)`` or 1-D; needed by ``"delimiter"``.
            prompt_length: overrides :attr:`prompt_length` for this call.
        """
        positions = positions.detach().reshape(-1).cpu()
        if self.rule == "all":
            return torch.ones(1, positions.numel(), dtype=torch.bool)
        if self.rule == "generated":
            start = self.prompt_length if prompt_length is None else prompt_length
            if start is None:
                raise SteeringError("positions='generated' needs the prompt length")
            return (positions >= start).unsqueeze(0)
        if input_ids is None:
            raise SteeringError(
                "positions='delimiter' needs the input ids of every forward pass; the model "
                "was called with inputs_embeds only"
            )
        ids = input_ids.detach().cpu().long()
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        return torch.isin(ids, self._wanted)


def resolve_selector(
    positions: PositionRule,
    *,
    tokenizer: Any,
    delimiter: str,
    delimiter_token_ids: Sequence[int] | None,
    prompt_length: int | None,
) -> PositionSelector:
    """The selector for a rule, scanning ``tokenizer`` for delimiter ids unless they are given.

    Raises:
        SteeringError: ``"delimiter"`` with neither ids nor a tokenizer, or no token holding
            the delimiter.
    """
    ids: frozenset[int] = frozenset()
    if positions == "delimiter":
        if delimiter_token_ids is not None:
            ids = frozenset(int(i) for i in delimiter_token_ids)
        elif tokenizer is not None:
            ids = delimiter_token_ids_or_fail(tokenizer, delimiter)
        else:
            raise SteeringError(
                "positions='delimiter' needs a tokenizer (or delimiter_token_ids) to know which "
                "tokens contain the delimiter"
            )
    return PositionSelector(rule=positions, delimiter_ids=ids, prompt_length=prompt_length)


def delimiter_token_ids_or_fail(tokenizer: Any, delimiter: str) -> frozenset[int]:
    """Like :func:`delimiter_token_ids`, but refuse a tokenizer with no such token.

    Raises:
        SteeringError: naming the delimiter when no token contains it.
    """
    ids = delimiter_token_ids(tokenizer, delimiter)
    if not ids:
        raise SteeringError(
            f"no token of the tokenizer contains the delimiter {delimiter!r} (it is always "
            "split across tokens), so positions='delimiter' would never steer; pass "
            "delimiter_token_ids explicitly or use positions='generated'"
        )
    return ids
