"""The hook underneath every way of steering: add ``scale * v`` at the masked rows of one layer.

Layer ``l < num_layers`` is written by a forward *pre*-hook on block ``l``; ``l == num_layers``
by a forward hook on the final norm. The hooks are prepended, so any other hook on the same
module (the engine's capture) sees the stream as the block receives it. Hooks are always
removed: on normal exit, on an exception and when a generator holding the context is closed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from langchain_rankguide.engine.hooks import (
    find_decoder_layers,
    find_final_norm,
    residual_input,
)
from langchain_rankguide.steering.vector import SteeringError


class Delta:
    """``scale * v``, cast once per (device, dtype) the hook meets."""

    def __init__(self, vector: torch.Tensor, scale: float) -> None:
        # Scale in float32 before any cast, so every dtype gets the same rounded direction.
        self._base = vector * float(scale)
        self._cast: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        if not bool(torch.isfinite(self._base).all()):
            raise SteeringError(f"steering scale {scale!r} times the vector overflows float32")

    def to(self, like: torch.Tensor) -> torch.Tensor:
        """The delta on ``like``'s device and in its dtype.

        Raises:
            SteeringError: the delta does not fit ``like``'s dtype (a large vector or scale
                on a float16 model), which would turn the stream into infinities.
        """
        key = (like.device, like.dtype)
        if key not in self._cast:
            # The first cast may happen under the engine's inference mode; a cached inference
            # tensor would then break a later steer() call that runs with autograd.
            with torch.inference_mode(False):
                cast = self._base.to(device=like.device, dtype=like.dtype)
            if like.dtype.is_floating_point and not bool(torch.isfinite(cast).all()):
                raise SteeringError(
                    f"the steering delta (vector times scale) overflows the model's {like.dtype}"
                )
            self._cast[key] = cast
        return self._cast[key]


class ForwardMask:
    """The rows of one forward pass that get the vector, moved to the model's device lazily."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.cpu = mask
        self.any = bool(mask.any())
        self._on: dict[torch.device, torch.Tensor] = {}

    def on(self, device: torch.device) -> torch.Tensor:
        """The mask on ``device``."""
        if device not in self._on:
            self._on[device] = self.cpu.to(device)
        return self._on[device]


def add_at_mask(hidden: torch.Tensor, mask: ForwardMask, delta: Delta) -> torch.Tensor | None:
    """Return ``hidden`` with ``delta`` added at the masked rows, or ``None`` if none are."""
    if not mask.any:
        return None
    rows = mask.cpu.shape[-1]
    if hidden.shape[-2] != rows:
        raise SteeringError(
            f"steering expected {rows} positions in this forward pass but the block received "
            f"{hidden.shape[-2]}"
        )
    chosen = mask.on(hidden.device)
    if hidden.dim() == 2:
        chosen = chosen[0]
    # ``where`` (not ``hidden + mask * delta``) leaves unchosen rows bit-identical and never
    # writes into a tensor another hook may still hold a view of.
    return torch.where(chosen.unsqueeze(-1), hidden + delta.to(hidden), hidden)


def count_steered(mask: ForwardMask, handle: SteeringHandle | None) -> None:
    """Add one forward pass and its steered positions to ``handle``'s counters."""
    if handle is not None:
        handle.forward_passes += 1
        handle.steered_positions += int(mask.cpu.sum())


@contextmanager
def hook_layer(
    model: nn.Module, layer: int, add: Callable[[torch.Tensor], torch.Tensor | None]
) -> Iterator[None]:
    """Register the adding hook at ``layer`` for the duration of the block; always remove it."""
    blocks = find_decoder_layers(model)
    depth = len(blocks)
    if not 0 <= layer <= depth:
        raise SteeringError(
            f"steering vector is for layer {layer} but the model has {depth} decoder blocks "
            f"(layers 0..{depth})"
        )
    handle: Any
    if layer < depth:

        def pre_hook(
            _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
            new = add(residual_input(args, kwargs))
            if new is None:
                return None
            if args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}

        handle = blocks[layer].register_forward_pre_hook(pre_hook, with_kwargs=True, prepend=True)
    else:

        def post_hook(_module: nn.Module, _args: tuple[Any, ...], output: Any) -> Any:
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            new = add(hidden)
            if new is None:
                return None
            if isinstance(output, (tuple, list)):
                return type(output)((new, *output[1:]))
            return new

        handle = find_final_norm(model).register_forward_hook(post_hook, prepend=True)
    try:
        yield
    finally:
        handle.remove()


@dataclass
class SteeringHandle:
    """What :func:`steer` yields: counters for checking that steering happened.

    Attributes:
        forward_passes: forward passes in which at least one position was steered.
        steered_positions: (batch row, position) pairs that received the vector.
    """

    forward_passes: int = 0
    steered_positions: int = 0
