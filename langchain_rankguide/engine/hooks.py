"""Locate decoder blocks and capture the residual stream entering them through forward hooks.

Layer ``l`` means the residual stream *entering* decoder block ``l``, counted from 0 -- the
same tensor as Hugging Face ``hidden_states[l]``. ``l == num_layers`` is the output of the
final norm (``hidden_states[-1]``). Steering writes at the same point.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from langchain_rankguide.errors import EngineError

_LAYER_PATHS = ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers")
_NORM_PATHS = (
    "model.norm",
    "model.decoder.final_layer_norm",
    "transformer.ln_f",
    "gpt_neox.final_layer_norm",
)


def _get_path(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """Return the model's list of decoder blocks.

    Known layouts are tried first; otherwise the first ``ModuleList`` whose length equals
    ``config.num_hidden_layers``.
    """
    for path in _LAYER_PATHS:
        layers = _get_path(model, path)
        if isinstance(layers, nn.ModuleList):
            return layers
    depth = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == depth:
            return module
    raise EngineError(f"cannot find the decoder blocks of {type(model).__name__}")


def find_final_norm(model: nn.Module) -> nn.Module:
    """Return the norm applied after the last decoder block."""
    for path in _NORM_PATHS:
        norm = _get_path(model, path)
        if isinstance(norm, nn.Module):
            return norm
    raise EngineError(f"cannot find the final norm of {type(model).__name__}")


def resolve_layer(layer: int, num_layers: int) -> int:
    """Check a layer index against the model's depth (``0..num_layers``)."""
    if not 0 <= layer <= num_layers:
        raise EngineError(
            f"layer {layer} is out of range: the model has {num_layers} decoder blocks, "
            f"so layers 0..{num_layers} exist"
        )
    return layer


def residual_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """Return the residual stream a decoder block was called with (positional or keyword)."""
    if args:
        return args[0]
    hidden = kwargs.get("hidden_states")
    if hidden is None:
        raise EngineError("decoder block called without hidden_states")
    return hidden


def block_output(output: Any) -> torch.Tensor:
    """Return the hidden states a module produced (a bare tensor or the first of a tuple)."""
    return output[0] if isinstance(output, (tuple, list)) else output


@contextmanager
def capture_residual(
    model: nn.Module, layers: Sequence[int], num_layers: int
) -> Iterator[dict[int, list[torch.Tensor]]]:
    """Record the residual stream entering each of ``layers`` for every forward inside the block.

    Yields a dict ``layer -> [tensor(seq, d) per forward call]`` (batch row 0, detached).
    Hooks are removed on exit, also when the block raises.
    """
    captured: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    handles = []
    try:
        blocks = find_decoder_layers(model) if layers else None
        for layer in layers:
            resolve_layer(layer, num_layers)
            store = captured[layer]
            if layer < num_layers:
                assert blocks is not None

                def pre_hook(
                    _module: nn.Module,
                    args: tuple[Any, ...],
                    kwargs: dict[str, Any],
                    store: list[torch.Tensor] = store,
                ) -> None:
                    store.append(residual_input(args, kwargs)[0].detach())

                handles.append(blocks[layer].register_forward_pre_hook(pre_hook, with_kwargs=True))
            else:

                def post_hook(
                    _module: nn.Module,
                    _args: tuple[Any, ...],
                    output: Any,
                    store: list[torch.Tensor] = store,
                ) -> None:
                    store.append(block_output(output)[0].detach())

                handles.append(find_final_norm(model).register_forward_hook(post_hook))
        yield captured
    finally:
        for handle in handles:
            handle.remove()
