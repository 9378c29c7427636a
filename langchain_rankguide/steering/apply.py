r"""Apply a steering vector: add ``scale * v`` to the residual stream entering one decoder block.

Two ways in, one hook underneath:

* :class:`SteeringIntervention` plugs into :class:`~langchain_rankguide.engine.StepEngine`
  (``interventions=[...]``). The engine enters it around every forward pass with the absolute
  positions and ids of the fed tokens, so the hook exists only for that forward pass, under the
  model's lock: two engines sharing one model with different vectors never see each other's.
* :func:`steer` is a context manager for plain ``model(...)`` / ``model.generate(...)`` calls.
  A pre-hook on the model reads each call's ``input_ids`` and cache length, so positions are
  absolute across prefill and KV-cached decode (a hook that counted rows per call would steer
  the wrong tokens once generation feeds one token at a time).

Position rules (which rows get the vector):

* ``"delimiter"`` (default): positions whose *input token's text contains the delimiter*. The
  set of such token ids is computed once from the vocabulary, so fused tokens such as
  ``".\n\n"`` or ``"\n\nWait"`` count.
* ``"generated"``: positions ``>= prompt_length``.
* ``"all"``: every position, the prompt included.

Layer ``l < num_layers`` is written by a forward *pre*-hook on block ``l``; ``l == num_layers``
by a forward hook on the final norm. The hooks are prepended, so any other hook on the same
module (the engine's capture) sees the stream as the block receives it. Hooks are always
removed: on normal exit, on an exception and when a generator holding the context is closed.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
from torch import nn

from langchain_rankguide.engine.hooks import (
    find_decoder_layers,
    find_final_norm,
    residual_input,
)
from langchain_rankguide.steering.vector import SteeringError, SteeringVector

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


# --------------------------------------------------------------------------- position masks


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


# --------------------------------------------------------------------------- the hook


class _Delta:
    """``scale * v``, cast once per (device, dtype) the hook meets."""

    def __init__(self, vector: torch.Tensor, scale: float) -> None:
        # Scale in float32 before any cast, so every dtype gets the same rounded direction.
        self._base = vector * float(scale)
        self._cast: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def to(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.device, like.dtype)
        if key not in self._cast:
            # The first cast may happen under the engine's inference mode; a cached inference
            # tensor would then break a later steer() call that runs with autograd.
            with torch.inference_mode(False):
                self._cast[key] = self._base.to(device=like.device, dtype=like.dtype)
        return self._cast[key]


class _ForwardMask:
    """The rows of one forward pass that get the vector, moved to the model's device lazily."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.cpu = mask
        self.any = bool(mask.any())
        self._on: dict[torch.device, torch.Tensor] = {}

    def on(self, device: torch.device) -> torch.Tensor:
        if device not in self._on:
            self._on[device] = self.cpu.to(device)
        return self._on[device]


def _add(hidden: torch.Tensor, mask: _ForwardMask, delta: _Delta) -> torch.Tensor | None:
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


def _count(mask: _ForwardMask, handle: SteeringHandle | None) -> None:
    if handle is not None:
        handle.forward_passes += 1
        handle.steered_positions += int(mask.cpu.sum())


@contextmanager
def _hook_layer(
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


def _resolve_selector(
    positions: PositionRule,
    *,
    tokenizer: Any,
    delimiter: str,
    delimiter_token_ids: Sequence[int] | None,
    prompt_length: int | None,
) -> PositionSelector:
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


def _unwrap(model: Any) -> tuple[nn.Module, Any]:
    """Return ``(module, tokenizer or None)`` for a ``LoadedModel`` or a bare module."""
    module = getattr(model, "model", None)
    if hasattr(model, "identity") and isinstance(module, nn.Module):
        return module, getattr(model, "tokenizer", None)
    if isinstance(model, nn.Module):
        return model, None
    raise SteeringError(f"cannot steer a {type(model).__name__}: expected a torch model")


# --------------------------------------------------------------------------- standalone use


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

    def __init__(self, selector: PositionSelector, delta: _Delta, handle: SteeringHandle) -> None:
        self.selector = selector
        self.handle = handle
        self._delta = delta
        self.current: _ForwardMask | None = None
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
        self.current = _ForwardMask(self.selector.mask(positions, input_ids, prompt_length))

    def after(self, *_args: Any) -> None:
        self.current = None

    def add(self, hidden: torch.Tensor) -> torch.Tensor | None:
        if self.current is None:
            raise SteeringError(
                "a steered decoder block ran outside a call of the model given to steer(); "
                "call that model (or generate on it) so positions can be tracked"
            )
        new = _add(hidden, self.current, self._delta)
        if new is not None:
            _count(self.current, self.handle)
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
    selector = _resolve_selector(
        positions,
        tokenizer=tokenizer if tokenizer is not None else own_tokenizer,
        delimiter=delimiter,
        delimiter_token_ids=delimiter_token_ids,
        prompt_length=prompt_length,
    )
    handle = SteeringHandle()
    tracker = _CallTracker(selector, _Delta(vector.vector, scale), handle)
    removers = []
    try:
        removers.append(
            module.register_forward_pre_hook(tracker.before, with_kwargs=True, prepend=True)
        )
        # always_call: a call that raises must not leave its mask behind for the next one.
        removers.append(module.register_forward_hook(tracker.after, always_call=True))
        with _hook_layer(module, vector.layer, tracker.add):
            yield handle
    finally:
        for remover in removers:
            remover.remove()


# --------------------------------------------------------------------------- engine use


class SteeringIntervention:
    r"""A steering vector as a :class:`~langchain_rankguide.engine.Intervention` of one engine.

    The engine calls it around each forward pass with the absolute positions and ids it is
    about to feed; the returned context manager hooks block ``layer`` for that pass only.
    Passes with no steered position register no hook at all.

    Args:
        vector: the steering vector.
        scale: multiplier of the vector.
        positions: ``"delimiter"`` (default), ``"generated"`` or ``"all"``.
        tokenizer: the model's tokenizer (for the delimiter ids).
        delimiter: the step delimiter text.
        delimiter_token_ids: explicit delimiter ids instead of scanning the vocabulary.
        prompt_length: first generated position (``"generated"`` rule). A plain attribute:
            set it once the prompt is encoded. While ``None``, every forward pass that starts
            at position 0 sets it to its own length -- right for a fresh run, but a resumed
            run prefills its committed steps in that same pass, so set it explicitly there.

    Raises:
        SteeringError: for an unknown rule or a rule that lacks what it needs.

    Example:
        >>> steering = SteeringIntervention.for_model(srm, vector, scale=4.0)  # doctest: +SKIP
        >>> engine = StepEngine(srm, interventions=[steering])  # doctest: +SKIP
    """

    def __init__(
        self,
        vector: SteeringVector,
        *,
        scale: float = 1.0,
        positions: PositionRule = "delimiter",
        tokenizer: Any = None,
        delimiter: str = DEFAULT_DELIMITER,
        delimiter_token_ids: Sequence[int] | None = None,
        prompt_length: int | None = None,
    ) -> None:
        self.vector = vector
        self.scale = float(scale)
        self.selector = _resolve_selector(
            positions,
            tokenizer=tokenizer,
            delimiter=delimiter,
            delimiter_token_ids=delimiter_token_ids,
            prompt_length=prompt_length,
        )
        self._prompt_length = prompt_length
        # Only an inferred length is re-inferred when a new sequence starts at position 0.
        self._inferred_prompt = False
        self.handle = SteeringHandle()
        self._delta = _Delta(vector.vector, self.scale)

    @classmethod
    def for_model(
        cls,
        loaded: Any,
        vector: SteeringVector,
        *,
        scale: float = 1.0,
        positions: PositionRule = "delimiter",
        delimiter: str = DEFAULT_DELIMITER,
        prompt_length: int | None = None,
        check_identity: bool = True,
    ) -> SteeringIntervention:
        """Check ``vector`` against a ``LoadedModel`` and build the intervention for it.

        Raises:
            SteeringError: for an incompatible vector (identity, hidden size, layer).
        """
        vector.check_compatible(loaded, check_identity=check_identity)
        return cls(
            vector,
            scale=scale,
            positions=positions,
            tokenizer=loaded.tokenizer,
            delimiter=delimiter,
            prompt_length=prompt_length,
        )

    @property
    def prompt_length(self) -> int | None:
        """First generated position (``"generated"`` rule); ``None`` until known."""
        return self._prompt_length

    @prompt_length.setter
    def prompt_length(self, value: int | None) -> None:
        if value is not None and value < 0:
            raise SteeringError(f"prompt_length must be >= 0, got {value}")
        self._prompt_length = value
        self._inferred_prompt = False

    @property
    def positions(self) -> PositionRule:
        """The position rule."""
        return self.selector.rule

    def __call__(
        self, model: Any, positions: torch.Tensor, input_ids: Sequence[int]
    ) -> AbstractContextManager[Any]:
        """Return the context manager that steers one forward pass of ``model``."""
        ids = torch.tensor([list(input_ids)], dtype=torch.long)
        if self.selector.rule == "generated" and (
            self.prompt_length is None or self._inferred_prompt
        ):
            if positions.numel() and int(positions.reshape(-1)[0]) == 0:
                self._prompt_length = len(input_ids)
                self._inferred_prompt = True
            elif self.prompt_length is None:
                raise SteeringError(
                    "positions='generated' needs prompt_length: the engine's first forward "
                    "pass did not start at position 0, so the prompt length is unknown"
                )
        mask = _ForwardMask(self.selector.mask(positions, ids, self.prompt_length))
        if not mask.any:
            return nullcontext()
        _count(mask, self.handle)
        delta = self._delta
        return _hook_layer(model, self.vector.layer, lambda hidden: _add(hidden, mask, delta))


def steering_intervention(
    loaded: Any,
    vector: SteeringVector,
    *,
    scale: float = 1.0,
    positions: PositionRule = "delimiter",
    delimiter: str = DEFAULT_DELIMITER,
    prompt_length: int | None = None,
    check_identity: bool = True,
) -> SteeringIntervention:
    """Build the engine intervention for ``loaded`` (see :meth:`SteeringIntervention.for_model`).

    Raises:
        SteeringError: for an incompatible vector or an unusable position rule.
    """
    return SteeringIntervention.for_model(
        loaded,
        vector,
        scale=scale,
        positions=positions,
        delimiter=delimiter,
        prompt_length=prompt_length,
        check_identity=check_identity,
    )
