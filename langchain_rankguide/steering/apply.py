r"""Apply a steering vector: add ``scale * v`` to the residual stream entering one decoder block.

Two ways in, one hook underneath:

* :class:`SteeringIntervention` (:mod:`~langchain_rankguide.steering.intervention`) plugs into
  :class:`~langchain_rankguide.engine.StepEngine` (``interventions=[...]``): the hook exists
  only for one forward pass, under the model's lock.
* :func:`steer` (:mod:`~langchain_rankguide.steering.standalone`) is a context manager for
  plain ``model(...)`` / ``model.generate(...)`` calls.

Which rows get the vector is :mod:`~langchain_rankguide.steering.positions`; the hook itself is
:mod:`~langchain_rankguide.steering.hook`. This module re-exports their public names.
"""

from langchain_rankguide.steering.hook import SteeringHandle
from langchain_rankguide.steering.intervention import SteeringIntervention, steering_intervention
from langchain_rankguide.steering.positions import (
    DEFAULT_DELIMITER,
    POSITION_RULES,
    PositionRule,
    PositionSelector,
    delimiter_token_ids,
    delimiter_token_ids_or_fail,
)
from langchain_rankguide.steering.standalone import steer

__all__ = [
    "DEFAULT_DELIMITER",
    "POSITION_RULES",
    "PositionRule",
    "PositionSelector",
    "SteeringHandle",
    "SteeringIntervention",
    "delimiter_token_ids",
    "delimiter_token_ids_or_fail",
    "steer",
    "steering_intervention",
]
