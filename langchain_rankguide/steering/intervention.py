"""Steer through the step engine: a vector as one engine's per-forward-pass intervention.

The engine enters a :class:`SteeringIntervention` around every forward pass with the absolute
positions and ids of the fed tokens, so the hook exists only for that forward pass, under the
model's lock: two engines sharing one model with different vectors never see each other's.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

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
    resolve_selector,
)
from langchain_rankguide.steering.vector import SteeringError, SteeringVector


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
        self.selector = resolve_selector(
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
        self._delta = Delta(vector.vector, self.scale)

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
        mask = ForwardMask(self.selector.mask(positions, ids, self.prompt_length))
        if not mask.any:
            return nullcontext()
        count_steered(mask, self.handle)
        delta = self._delta
        return hook_layer(model, self.vector.layer, lambda hidden: add_at_mask(hidden, mask, delta))


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
