"""The one entry point the step engine calls: compute exactly the named signals of one step.

Only what is asked is computed (only the signals the router uses belong on the hot path,
docs/signals.md): asking for ``entropy.first_token`` alone performs no SVD; asking for all eight
``rank.*`` statistics performs one. Inputs the engine did not capture give ``None`` with the reason
``"not captured: <field>"``.

==========================  ===============================  =================================
signals                     input (``SignalInputs`` field)   layer
==========================  ===============================  =================================
``rank.*`` (8)              ``step_hidden``                  ``primary_layer``
``rank.window.*`` (8)       ``window_hidden``                ``primary_layer``
``rank.tensor*``            ``step_hidden``                  all layers, stacked by layer index
``rank.cross_step*``        ``opening_states``               ``primary_layer``
``entropy.first_token*``    ``first_token_logprobs``         --
``entropy.mean``/``max``    ``token_entropies``              --
``prob.min``, ``logprob.*`` ``token_logprobs``               --
``step.tokens``             ``n_tokens``                     --
``reflection.*``            ``text``, ``previous_texts``     --
``step.repeat``             ``text``, ``previous_texts``     --
==========================  ===============================  =================================

Example:
    >>> import torch
    >>> values, reasons = compute_signals(
    ...     ["reflection.cue", "rank.window.energy"],
    ...     SignalInputs(text="Wait, let me check.", n_tokens=6))
    >>> values
    {'reflection.cue': 1.0, 'rank.window.energy': None}
    >>> reasons
    {'rank.window.energy': 'not captured: window_hidden'}
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from langchain_rankguide.errors import SignalError
from langchain_rankguide.schemas import SIGNALS
from langchain_rankguide.signals import rank as _rank
from langchain_rankguide.signals.distribution import (
    DEFAULT_TOP_K,
    ENTROPY_SIGNALS,
    FIRST_TOKEN_SIGNALS,
    LOGPROB_SIGNALS,
    first_token_signals,
    step_token_signals,
)
from langchain_rankguide.signals.rank import Measured, split_measured
from langchain_rankguide.signals.text import (
    ReflectionRules,
    is_reflection,
    is_repeat,
    reflection_streak,
)

ALL_SIGNALS: tuple[str, ...] = tuple(SIGNALS)
"""Every signal name in the registry, in registry order."""

STEP_RANK_SIGNALS = _rank.rank_signal_names("rank")
WINDOW_RANK_SIGNALS = _rank.rank_signal_names("rank.window")
TENSOR_RANK_SIGNALS: tuple[str, ...] = ("rank.tensor", "rank.tensor_norm")
CROSS_STEP_SIGNALS: tuple[str, ...] = ("rank.cross_step", "rank.cross_step_norm")
TEXT_SIGNALS: tuple[str, ...] = (
    "step.tokens",
    "reflection.cue",
    "reflection.streak",
    "step.repeat",
    "context.position",
    "context.after_reflection",
    "context.answer",
)


@dataclass(frozen=True)
class SignalSettings:
    """How signals are computed (every choice of docs/signals.md that is ours).

    Attributes:
        eta: energy fraction of the energy ranks.
        eps: relative threshold of the numerical rank.
        centre: centre hidden states before the SVD (normalisers become ``min(n - 1, d)``).
        row_normalise: scale each token's state to unit norm before centring (matrix ranks).
        top_k_entropy: ``k`` of ``entropy.first_token_top20``.
        reflection: the reflection / transition cue rules.
        repeat_any_previous: ``step.repeat`` compares with every earlier step, not only the last.
        balance_layers: scale each layer to unit norm before the tensor rank (see
            :func:`~langchain_rankguide.signals.rank.tensor_rank_signals`).
        answer_markers: the prefixes that open an answer step (``context.answer``).

    Raises:
        SignalError: for out-of-range values.
    """

    eta: float = _rank.DEFAULT_ETA
    eps: float = _rank.DEFAULT_EPS
    centre: bool = True
    row_normalise: bool = False
    top_k_entropy: int = DEFAULT_TOP_K
    reflection: ReflectionRules = field(default_factory=ReflectionRules)
    repeat_any_previous: bool = False
    balance_layers: bool = True
    answer_markers: tuple[str, ...] = ("Answer:",)

    def __post_init__(self) -> None:
        if not 0.0 < self.eta <= 1.0:
            raise SignalError(f"eta must lie in (0, 1], got {self.eta!r}")
        if not 0.0 <= self.eps < 1.0:
            raise SignalError(f"eps must lie in [0, 1), got {self.eps!r}")
        if not isinstance(self.top_k_entropy, int) or self.top_k_entropy < 1:
            raise SignalError(
                f"top_k_entropy must be a positive integer, got {self.top_k_entropy!r}"
            )


DEFAULT_SETTINGS = SignalSettings()
"""The default settings."""


@dataclass
class SignalInputs:
    """What the engine captured for one step; every field is optional.

    Attributes:
        step_hidden: layer -> ``n x d`` hidden states of the step's tokens.
        window_hidden: layer -> ``W x d`` states of the last ``W`` tokens ending at the step's end.
        opening_states: layer -> ``W' x d`` states at the delimiter that opened each of the last
            ``W'`` steps, this one included.
        first_token_logprobs: 1-D full-vocabulary log-probs of the step's first token.
        token_logprobs: 1-D log-probs of the chosen tokens.
        token_entropies: 1-D per-token entropies (nats).
        text: the step's text.
        previous_texts: earlier steps' texts, oldest first.
        n_tokens: number of tokens in the step.
        primary_layer: the layer of the single-layer signals; ``None`` means each dict's first key.
    """

    step_hidden: dict[int, torch.Tensor] = field(default_factory=dict)
    window_hidden: dict[int, torch.Tensor] = field(default_factory=dict)
    opening_states: dict[int, torch.Tensor] = field(default_factory=dict)
    first_token_logprobs: torch.Tensor | None = None
    token_logprobs: torch.Tensor | None = None
    token_entropies: torch.Tensor | None = None
    text: str = ""
    previous_texts: Sequence[str] = ()
    n_tokens: int = 0
    primary_layer: int | None = None


def _as_names(names: Collection[str] | str) -> tuple[str, ...]:
    # A bare string would otherwise be read as a collection of one-letter names.
    listed = (names,) if isinstance(names, str) else tuple(names)
    unknown = [n for n in listed if n not in SIGNALS]
    if unknown:
        raise SignalError(f"unknown signal(s) {unknown}; known: {sorted(SIGNALS)}")
    return tuple(dict.fromkeys(listed))


def required_captures(names: Collection[str] | str) -> set[str]:
    """Return the registry ``needs`` of the named signals, so the engine captures only those.

    Args:
        names: signal names.

    Returns:
        A subset of ``{"step_hidden", "window_hidden", "multi_layer", "opening_states",
        "logprobs", "first_token", "text"}``.

    Raises:
        SignalError: naming any unknown signal.
    """
    return {SIGNALS[name].needs for name in _as_names(names)}


def _pick_layer(
    hidden: Mapping[int, torch.Tensor], capture: str, primary: int | None
) -> torch.Tensor | str:
    """Return the primary layer's tensor, or the reason it is missing."""
    if not hidden:
        return f"not captured: {capture}"
    layer = primary if primary is not None else next(iter(hidden))
    if layer not in hidden:
        return f"not captured: {capture} at layer {layer}"
    return hidden[layer]


def _missing(names: Sequence[str], reason: str) -> dict[str, Measured]:
    return {name: Measured(None, reason) for name in names}


def _stacked_layers(hidden: Mapping[int, torch.Tensor]) -> torch.Tensor | str:
    """All layers stacked by layer index into ``L x n x d``, or the reason they cannot be."""
    if not hidden:
        return "not captured: step_hidden"
    layers = [hidden[k] for k in sorted(hidden)]
    shapes = {tuple(t.shape) for t in layers}
    if len(shapes) != 1:
        return f"step_hidden layers differ in shape: {sorted(shapes)}"
    device = layers[0].device
    return torch.stack([t.to(device) for t in layers])


def compute_signals(
    names: Collection[str] | str,
    inputs: SignalInputs,
    settings: SignalSettings = DEFAULT_SETTINGS,
) -> tuple[dict[str, float | None], dict[str, str]]:
    """Compute exactly the named signals of one step.

    Args:
        names: registry names to compute (duplicates are ignored).
        inputs: what the engine captured.
        settings: computation settings.

    Returns:
        ``(values, reasons)``: name -> finite float or ``None`` for every asked name, in the
        order asked; and name -> reason for each ``None``.

    Raises:
        SignalError: naming any unknown signal, or for a captured tensor of the wrong shape.
    """
    asked = _as_names(names)
    wanted = set(asked)
    found: dict[str, Measured] = {}
    s = settings

    for prefix, family, capture in (
        ("rank", STEP_RANK_SIGNALS, "step_hidden"),
        ("rank.window", WINDOW_RANK_SIGNALS, "window_hidden"),
    ):
        family_names = [n for n in family if n in wanted]
        if not family_names:
            continue
        matrix = _pick_layer(getattr(inputs, capture), capture, inputs.primary_layer)
        if isinstance(matrix, str):
            found.update(_missing(family_names, matrix))
        else:
            found.update(
                _rank.matrix_rank_signals(
                    matrix,
                    eta=s.eta,
                    eps=s.eps,
                    centre=s.centre,
                    row_normalise=s.row_normalise,
                    prefix=prefix,
                    names=wanted,
                )
            )

    if wanted.intersection(TENSOR_RANK_SIGNALS):
        stacked = _stacked_layers(inputs.step_hidden)
        if isinstance(stacked, str):
            found.update(_missing(TENSOR_RANK_SIGNALS, stacked))
        else:
            found.update(
                _rank.tensor_rank_signals(
                    stacked, eta=s.eta, centre=s.centre, balance_layers=s.balance_layers
                )
            )

    if wanted.intersection(CROSS_STEP_SIGNALS):
        opening = _pick_layer(inputs.opening_states, "opening_states", inputs.primary_layer)
        if isinstance(opening, str):
            found.update(_missing(CROSS_STEP_SIGNALS, opening))
        else:
            found.update(_rank.cross_step_rank_signals(opening, eta=s.eta, centre=s.centre))

    if wanted.intersection(FIRST_TOKEN_SIGNALS):
        found.update(
            first_token_signals(inputs.first_token_logprobs, top_k=s.top_k_entropy, names=wanted)
        )

    if wanted.intersection(ENTROPY_SIGNALS) or wanted.intersection(LOGPROB_SIGNALS):
        found.update(
            step_token_signals(inputs.token_logprobs, inputs.token_entropies, names=wanted)
        )

    if "step.tokens" in wanted:
        found["step.tokens"] = _rank.measured_or_none(float(inputs.n_tokens), "not captured")
    if "reflection.cue" in wanted:
        cue = is_reflection(inputs.text, s.reflection)
        found["reflection.cue"] = Measured(1.0 if cue else 0.0)
    if "reflection.streak" in wanted:
        # Count from the current step back without copying a long history.
        streak = (
            1 + reflection_streak(inputs.previous_texts, s.reflection)
            if is_reflection(inputs.text, s.reflection)
            else 0
        )
        found["reflection.streak"] = Measured(float(streak))
    if "step.repeat" in wanted:
        repeat = is_repeat(inputs.text, inputs.previous_texts, any_previous=s.repeat_any_previous)
        found["step.repeat"] = Measured(1.0 if repeat else 0.0)

    found.update(_context_signals(wanted, inputs, s))
    values, reasons = split_measured({name: found[name] for name in asked})
    return values, reasons


def _context_signals(
    wanted: set[str], inputs: SignalInputs, settings: SignalSettings
) -> dict[str, Measured]:
    """Where the step sits: its position, whether it follows a re-check, whether it answers.

    Errors cluster by context (a step right after a re-check fails far more often), which the
    step's own token statistics cannot see.
    """
    out: dict[str, Measured] = {}
    if "context.position" in wanted:
        out["context.position"] = Measured(float(len(inputs.previous_texts)))
    if "context.after_reflection" in wanted:
        previous = inputs.previous_texts[-1] if inputs.previous_texts else ""
        out["context.after_reflection"] = Measured(
            1.0 if previous and is_reflection(previous, settings.reflection) else 0.0
        )
    if "context.answer" in wanted:
        stripped = inputs.text.lstrip()
        answers = any(stripped.startswith(m) for m in settings.answer_markers)
        out["context.answer"] = Measured(1.0 if answers else 0.0)
    return out
