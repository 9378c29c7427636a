"""Steering vectors: a direction in one layer's residual stream, stored as safetensors + JSON.

A :class:`SteeringVector` holds one ``(d,)`` float32 tensor, the layer it belongs to (``l`` = the
residual stream *entering* decoder block ``l``, counted from 0; ``l == num_layers`` is the final
norm's output) and metadata saying where it came from. Files are plain safetensors: the tensor
under the key ``"vector"`` and every piece of metadata as one JSON string in the safetensors
header (key ``"rankguide_steering"``). Nothing is pickled, so loading a file never runs code.

Example:
    >>> import torch
    >>> v = SteeringVector(torch.ones(4), layer=1, model_identity="tiny")
    >>> v.hidden_size, round(v.norm, 3)
    (4, 2.0)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from langchain_rankguide.errors import RankGuideError

SteeringMethod = Literal["seal", "rank_filtered", "length_matched", "random"]
"""How a vector was made: plain SEAL mean difference, rank-filtered, length-matched control, or
a random direction of the same norm."""

METHODS: tuple[str, ...] = get_args(SteeringMethod)

SIGN_CONVENTION = "mean(execution) - mean(reflection + transition)"
"""The sign of every vector this package extracts: a positive scale pushes the residual stream
toward execution thoughts and away from reflection / transition thoughts."""

MAX_NORM = 1e5
"""Largest norm a steering vector may have. Residual streams of real models stay far below it
(their largest single activations are in the thousands); a vector beyond it can only overflow
the stream and turn the output into padding, so it is refused as corrupt (docs/steering.md)."""

FORMAT = "rankguide-steering-vector"
FORMAT_VERSION = 1
TENSOR_KEY = "vector"
METADATA_KEY = "rankguide_steering"


class SteeringError(RankGuideError):
    """A steering vector is malformed, incompatible with a model, or applied incorrectly."""


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def _model_shape(model: Any) -> tuple[int | None, int | None]:
    """Return ``(hidden_size, num_layers)`` of a ``LoadedModel`` or a transformers model."""
    if hasattr(model, "hidden_size") and hasattr(model, "num_layers"):
        return int(model.hidden_size), int(model.num_layers)
    config = getattr(model, "config", None)
    if config is None:
        return None, None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(text, "hidden_size", None)
    layers = getattr(text, "num_hidden_layers", None)
    return (
        int(hidden) if hidden is not None else None,
        int(layers) if layers is not None else None,
    )


_METADATA_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "layer": ((int,), "an integer"),
    "model_identity": ((str, type(None)), "a string or null"),
    "num_layers": ((int, type(None)), "an integer or null"),
    "method": ((str,), "a string"),
    "filter": ((dict, type(None)), "an object or null"),
    "samples": ((dict, type(None)), "an object of counts"),
    "sign_convention": ((str,), "a string"),
    "created": ((str,), "a string"),
    "extra": ((dict, type(None)), "an object or null"),
    "norm": ((int, float), "a number"),
}


def _check_metadata_types(meta: dict[str, Any], source: Path) -> None:
    """Refuse metadata fields of the wrong JSON type before they reach the dataclass."""
    if "layer" not in meta:
        raise SteeringError(f"{source}: steering metadata lacks 'layer'")
    for key, (types, wanted) in _METADATA_TYPES.items():
        if key not in meta:
            continue
        value = meta[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise SteeringError(
                f"{source}: steering metadata field {key!r} must be {wanted} "
                f"(got {type(value).__name__})"
            )
    pending: list[Any] = [meta]
    while pending:  # iterative: the header is data from outside, nested as deep as it likes
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, float) and not math.isfinite(value):
            raise SteeringError(f"{source}: steering metadata holds a non-finite number")
    for label, count in (meta.get("samples") or {}).items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise SteeringError(
                f"{source}: steering metadata field 'samples' must map labels to counts "
                f"(got {label!r}: {count!r})"
            )


@dataclass
class SteeringVector:
    """One steering direction for one layer of one model, with its provenance.

    Attributes:
        vector: the direction, a 1-D float32 CPU tensor of the model's hidden size.
        layer: residual-stream layer it is added at (input of block ``layer``, from 0;
            ``layer == num_layers`` is the final norm's output).
        model_identity: the model it was extracted from (``LoadedModel.identity``); ``None``
            disables the identity check.
        num_layers: depth of that model (informative; the layer is checked against the model
            the vector is applied to).
        method: how it was made, one of :data:`METHODS`.
        filter: JSON description of the sample filter (signal, threshold, side kept, ...).
        samples: counts of the thoughts averaged, by label and in total.
        sign_convention: what a positive scale means (:data:`SIGN_CONVENTION`).
        created: ISO-8601 UTC creation time.
        extra: any further JSON metadata (task, delimiter, config, ...).

    Raises:
        SteeringError: for a tensor that is not 1-D, empty or not finite, a negative layer or
            an unknown method.
    """

    vector: torch.Tensor
    layer: int
    model_identity: str | None = None
    num_layers: int | None = None
    method: SteeringMethod = "seal"
    filter: dict[str, Any] | None = None
    samples: dict[str, int] = field(default_factory=dict)
    sign_convention: str = SIGN_CONVENTION
    created: str = field(default_factory=_now)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.vector, torch.Tensor):
            raise SteeringError(f"vector must be a torch.Tensor, got {type(self.vector).__name__}")
        if self.vector.dim() != 1 or self.vector.numel() == 0:
            raise SteeringError(
                f"vector must be 1-D and non-empty, got shape {tuple(self.vector.shape)}"
            )
        # One canonical storage form, so saving, hashing and comparing never depend on the
        # device or dtype the vector happened to be computed in.
        self.vector = self.vector.detach().to(device="cpu", dtype=torch.float32).contiguous()
        if not bool(torch.isfinite(self.vector).all()):
            raise SteeringError("vector contains NaN or infinite values")
        # In float64: the float32 sum of squares overflows long before the entries do.
        norm = float(torch.linalg.vector_norm(self.vector.double()))
        if norm > MAX_NORM:
            raise SteeringError(
                f"vector norm {norm:.3g} is above the bound {MAX_NORM:.0e} for a steering "
                "vector (corrupt or mis-scaled)"
            )
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise SteeringError(f"layer must be a non-negative integer, got {self.layer!r}")
        if self.method not in METHODS:
            raise SteeringError(f"unknown method {self.method!r}; known: {', '.join(METHODS)}")

    # ------------------------------------------------------------------ properties

    @property
    def hidden_size(self) -> int:
        """Width of the residual stream the vector belongs to."""
        return int(self.vector.shape[0])

    @property
    def norm(self) -> float:
        """Euclidean norm of the vector."""
        return float(torch.linalg.vector_norm(self.vector))

    def scaled_to(self, norm: float) -> SteeringVector:
        """Return a copy with the same direction and the given norm (metadata kept)."""
        current = self.norm
        if current == 0.0:
            raise SteeringError("cannot rescale a zero vector")
        return replace(self, vector=self.vector * (norm / current))

    # ------------------------------------------------------------------ metadata

    def metadata(self) -> dict[str, Any]:
        """Return the JSON metadata stored with the tensor."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "layer": self.layer,
            "hidden_size": self.hidden_size,
            "model_identity": self.model_identity,
            "num_layers": self.num_layers,
            "method": self.method,
            "filter": self.filter,
            "samples": dict(self.samples),
            "sign_convention": self.sign_convention,
            "norm": self.norm,
            "dtype": "float32",
            "created": self.created,
            "extra": dict(self.extra),
        }

    # ------------------------------------------------------------------ storage

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the vector as a safetensors file with its metadata in the header.

        Args:
            path: destination; parent folders are created.

        Returns:
            The path written.

        Raises:
            SteeringError: when the metadata is not JSON-serialisable or the file cannot be
                written.
        """
        from safetensors.torch import save_file

        target = Path(path)
        try:
            header = json.dumps(self.metadata(), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise SteeringError(f"steering metadata is not plain JSON: {exc}") from None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            save_file({TENSOR_KEY: self.vector}, str(target), metadata={METADATA_KEY: header})
        except OSError as exc:
            raise SteeringError(f"cannot write steering vector to {target}: {exc}") from None
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SteeringVector:
        """Read a vector written by :meth:`save` (safetensors only: no code is executed).

        Raises:
            SteeringError: for a missing or unreadable file, a file that is not a RankGuide
                steering vector, an unknown format version, or metadata that contradicts the
                tensor.
        """
        from safetensors import SafetensorError, safe_open

        source = Path(path)
        if not source.is_file():
            raise SteeringError(f"steering vector file not found: {source}")
        try:
            with safe_open(str(source), framework="pt", device="cpu") as handle:
                header = handle.metadata() or {}
                keys = list(handle.keys())
                tensor = handle.get_tensor(TENSOR_KEY) if TENSOR_KEY in keys else None
        except (SafetensorError, OSError, ValueError) as exc:
            raise SteeringError(f"{source} is not a readable safetensors file: {exc}") from None
        if METADATA_KEY not in header or tensor is None:
            raise SteeringError(
                f"{source} is not a RankGuide steering vector (no {METADATA_KEY!r} metadata "
                f"or no {TENSOR_KEY!r} tensor)"
            )
        try:
            meta = json.loads(header[METADATA_KEY])
        except json.JSONDecodeError as exc:
            raise SteeringError(f"{source}: steering metadata is not valid JSON: {exc}") from None
        except RecursionError:
            raise SteeringError(f"{source}: steering metadata is nested too deeply") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise SteeringError(f"{source}: unknown steering metadata format")
        if meta.get("format_version") != FORMAT_VERSION:
            raise SteeringError(
                f"{source}: steering file format version {meta.get('format_version')!r} is not "
                f"supported (this release reads version {FORMAT_VERSION})"
            )
        if meta.get("hidden_size") != tensor.numel():
            raise SteeringError(
                f"{source}: metadata says hidden size {meta.get('hidden_size')} but the tensor "
                f"has {tensor.numel()} values"
            )
        _check_metadata_types(meta, source)
        try:
            vector = cls(
                vector=tensor,
                layer=meta["layer"],
                model_identity=meta.get("model_identity"),
                num_layers=meta.get("num_layers"),
                method=meta.get("method", "seal"),
                filter=meta.get("filter"),
                samples=dict(meta.get("samples") or {}),
                sign_convention=meta.get("sign_convention", SIGN_CONVENTION),
                created=meta.get("created", ""),
                extra=dict(meta.get("extra") or {}),
            )
        except SteeringError as exc:
            raise SteeringError(f"{source}: {exc}") from None
        stored_norm = meta.get("norm")
        if isinstance(stored_norm, (int, float)) and not math.isclose(
            stored_norm, vector.norm, rel_tol=1e-4, abs_tol=1e-6
        ):
            raise SteeringError(
                f"{source}: stored norm {stored_norm:.6g} differs from the tensor's norm "
                f"{vector.norm:.6g} (file corrupted or edited)"
            )
        return vector

    # ------------------------------------------------------------------ compatibility

    def check_compatible(self, model: Any, *, check_identity: bool = True) -> None:
        """Refuse a model this vector was not made for.

        Args:
            model: a :class:`~langchain_rankguide.engine.LoadedModel` (identity, hidden size
                and depth are checked) or a bare transformers model (hidden size and depth).
            check_identity: compare ``model_identity`` with the model's identity; turn off
                only for a model known to be the same under another name.

        Raises:
            SteeringError: naming both values, for a different model identity, hidden size,
                or a layer beyond the model's depth.
        """
        identity = getattr(model, "identity", None)
        if (
            check_identity
            and self.model_identity is not None
            and isinstance(identity, str)
            and identity != self.model_identity
        ):
            raise SteeringError(
                f"steering vector was extracted from model {self.model_identity!r} but is being "
                f"applied to model {identity!r}"
            )
        hidden, depth = _model_shape(model)
        if hidden is not None and hidden != self.hidden_size:
            raise SteeringError(
                f"steering vector has hidden size {self.hidden_size} but the model's hidden "
                f"size is {hidden}"
            )
        if depth is not None and self.layer > depth:
            raise SteeringError(
                f"steering vector is for layer {self.layer} but the model has {depth} decoder "
                f"blocks (layers 0..{depth})"
            )
