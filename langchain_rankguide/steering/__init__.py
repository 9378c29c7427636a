"""Steering the SRM: rank-filtered SEAL vectors, extracted, stored and applied with scoped hooks.

* :mod:`~langchain_rankguide.steering.vector`: :class:`SteeringVector` (safetensors + JSON
  metadata, compatibility checks).
* :mod:`~langchain_rankguide.steering.standalone`: :func:`steer` (context manager for plain
  calls and ``generate``).
* :mod:`~langchain_rankguide.steering.intervention`: :class:`SteeringIntervention` (per-forward
  hook for the step engine).
* :mod:`~langchain_rankguide.steering.positions`: which positions get the vector (position
  rules, delimiter token ids); :mod:`~langchain_rankguide.steering.hook`: the adding hook both
  use. :mod:`~langchain_rankguide.steering.apply` re-exports the public names of all four.
* :mod:`~langchain_rankguide.steering.extract`: thoughts -> SEAL / rank-filtered vectors and the
  length-matched and random controls.

Sign convention: ``v = mean(execution) - mean(reflection + transition)``; a positive scale pushes
the SRM toward execution and away from reflection. See ``docs/steering.md``.
"""

from langchain_rankguide.steering.extract import (
    DEFAULT_RANK_SIGNAL,
    ExtractionResult,
    RankFilter,
    ThoughtRecord,
    build_vectors,
    collect_thoughts,
    label_thoughts,
    length_matched_indices,
    mean_difference,
    random_direction,
    rank_filter_indices,
)
from langchain_rankguide.steering.hook import SteeringHandle
from langchain_rankguide.steering.intervention import SteeringIntervention, steering_intervention
from langchain_rankguide.steering.positions import (
    POSITION_RULES,
    PositionRule,
    PositionSelector,
    delimiter_token_ids,
)
from langchain_rankguide.steering.standalone import steer
from langchain_rankguide.steering.vector import (
    METHODS,
    SIGN_CONVENTION,
    SteeringError,
    SteeringMethod,
    SteeringVector,
)

__all__ = [
    "DEFAULT_RANK_SIGNAL",
    "METHODS",
    "POSITION_RULES",
    "SIGN_CONVENTION",
    "ExtractionResult",
    "PositionRule",
    "PositionSelector",
    "RankFilter",
    "SteeringError",
    "SteeringHandle",
    "SteeringIntervention",
    "SteeringMethod",
    "SteeringVector",
    "ThoughtRecord",
    "build_vectors",
    "collect_thoughts",
    "delimiter_token_ids",
    "label_thoughts",
    "length_matched_indices",
    "mean_difference",
    "random_direction",
    "rank_filter_indices",
    "steer",
    "steering_intervention",
]
