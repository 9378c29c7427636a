r"""Steer plain ``model(...)`` / ``model.generate(...)`` calls: the :func:`steer` context manager.

A pre-hook on the model reads each call's ``input_ids`` and cache length, so positions are
absolute across prefill and KV-cached decode (a hook that counted rows per call would steer
the wrong tokens once generation feeds one token at a time).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from langchain_rankguide.steering.hook import (
    Delta,
    ForwardMask,
    SteeringHandle,
    add_at_mask,
    count_steered,
    hook_layer,
)
from langchain_rankguide.steering.positions import (
    DEFAULT_DELIMITER,
    PositionRule,
    PositionSelector,
    resolve_selector,
)
from langchain_rankguide.steering.vector import SteeringError, SteeringVector


def _unwrap(model: Any) -> tuple[nn.Module, Any]:
    """Return ``(module, tokenizer or None)`` for a ``LoadedModel`` or a bare module."""
    module = getattr(model, "model", None)
    if hasattr(model, "identity") and isinstance(module, nn.Module):
        return module, getattr(model, "tokenizer", None)
    if isinstance(model, nn.Module):
        return model, None
    raise SteeringError(f"cannot steer a {type(model).__name__}: expected a torch model")


def _cache_length(cache: Any) -> int:
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    # Legacy tuple-of-tuples caches: (layers, (key, value)), keys shaped (batch, heads, seq, d).
    try:
        return int(cache[0][0].shape[-2])
    except (IndexError, TypeError, AttributeError):
        return 0


class _CallTracker:
    """Reads each top-level call's ids and absolute positions; the block hook asks it for a mask."""

    def __init__(self, selector: PositionSelector, delta: Delta, handle: SteeringHandle) -> None:
        self.selector = selector
        self.handle = handle
        self._delta = delta
        self.current: ForwardMask | None = None
        self.prompt_length = selector.prompt_length

    def before(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        input_ids = kwargs.get("input_ids")
        if input_ids is None and args and isinstance(args[0], torch.Tensor):
            input_ids = args[0]
        embeds = kwargs.get("inputs_embeds")
        if input_ids is not None:
            length = int(input_ids.shape[-1])
        elif embeds is not None:
            length = int(embeds.shape[-2])
        else:
            raise SteeringError("steering cannot find input_ids or inputs_embeds in the call")
        cache_position = kwargs.get("cache_position")
        if isinstance(cache_position, torch.Tensor):
            positions = cache_position.reshape(-1)
        else:
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            start = _cache_length(cache)
            positions = torch.arange(start, start + length)
        start_position = int(positions[0]) if positions.numel() else 0
        if self.selector.prompt_length is None and start_position == 0:
            # A call that starts at position 0 begins a new sequence (each generate() call's
            # prefill): its length is the prompt length.
            self.prompt_length = length
        prompt_length = self.prompt_length
        if self.selector.rule == "generated" and prompt_length is None:
            raise SteeringError(
                "positions='generated' needs prompt_length: the first call inside steer() did "
                "not start at position 0, so the prompt length cannot be inferred"
            )
        self.current = ForwardMask(self.selector.mask(positions, input_ids, prompt_length))

    def after(self, *_args: Any) -> None:
        self.current = None

    def add(self, hidden: torch.Tensor) -> torch.Tensor | None:
        if self.current is None:
            raise SteeringError(
                "a steered decoder block ran outside a call of the model given to steer(); "
                "call that model (or generate on it) so positions can be tracked"
            )
        new = add_at_mask(hidden, self.current, self._delta)
        if new is not None:
            count_steered(self.current, self.handle)
        return new


@contextmanager
def steer(
    model: Any,
    vector: SteeringVector,
    *,
    scale: float = 1.0,
    positions: PositionRule = "delimiter",
    delimiter: str = DEFAULT_DELIMITER,
    delimiter_token_ids: Sequence[int] | None = None,
    tokenizer: Any = None,
    prompt_length: int | None = None,
    check_identity: bool = True,
) -> Iterator[SteeringHandle]:
    r"""Steer every call of ``model`` inside the block (plain forward or ``generate``).

    Positions are absolute: each call's start is read from its ``cache_position`` argument or
    the length of the KV cache it is given (0 without one), so prefill and cached decode agree.

    The hooks live on the shared model for the whole block: every thread calling the model
    meanwhile is steered too. For per-request steering of a shared model use
    :class:`SteeringIntervention` with the step engine (hooks live one locked forward pass).

    Args:
        model: a :class:`~langchain_rankguide.engine.LoadedModel` (checked with
            :meth:`SteeringVector.check_compatible`; its tokenizer gives the delimiter ids) or a
            transformers causal LM.
        vector: the steering vector; its ``layer`` says where it is added.
        scale: multiplier of the vector; 0 leaves every output unchanged.
        positions: ``"delimiter"``, ``"generated"`` or ``"all"`` (see the module docstring).
        delimiter: the step delimiter text (``"delimiter"`` rule).
        delimiter_token_ids: explicit delimiter token ids instead of scanning the vocabulary.
        tokenizer: the tokenizer, when ``model`` is a bare transformers model.
        prompt_length: first generated position (``"generated"`` rule); by default the length
            of each call that starts at position 0 (a ``generate`` prefill).
        check_identity: compare the vector's model identity with a ``LoadedModel``'s.

    Yields:
        A :class:`SteeringHandle` counting the steered positions.

    Raises:
        SteeringError: for an incompatible vector, an unknown rule, or a rule that lacks what
            it needs (ids for ``"delimiter"``).

    Example:
        >>> with steer(srm, vector, scale=4.0) as handle:  # doctest: +SKIP
        ...     out = srm.model.generate(ids, max_new_tokens=64, do_sample=False)
        >>> handle.steered_positions  # doctest: +SKIP
        7
    """
    module, own_tokenizer = _unwrap(model)
    vector.check_compatible(model, check_identity=check_identity)
    selector = resolve_selector(
        positions,
        tokenizer=tokenizer if tokenizer is not None else own_tokenizer,
        delimiter=delimiter,
        delimiter_token_ids=delimiter_token_ids,
        prompt_length=prompt_length,
    )
    handle = SteeringHandle()
    tracker = _CallTracker(selector, Delta(vector.vector, scale), handle)
    removers = []
    try:
        removers.append(
            module.register_forward_pre_hook(tracker.before, with_kwargs=True, prepend=True)
        )
        # always_call: a call that raises must not leave its mask behind for the next one.
        removers.append(module.register_forward_hook(tracker.after, always_call=True))
        with hook_layer(module, vector.layer, tracker.add):
            yield handle
    finally:
        for remover in removers:
            remover.remove()
