"""The step engine: one code path that every part of the package runs steps through.

Imports only torch and transformers (lazily), never pydantic configuration or LangChain, so it
also runs on a bare torch + transformers install (e.g. a GPU box used for measurements).
"""

from langchain_rankguide.engine.hooks import capture_residual, find_decoder_layers, resolve_layer
from langchain_rankguide.engine.loading import (
    MODELS,
    LoadedModel,
    ModelRegistry,
    load_model,
    load_tokenizer,
    resolve_model_source,
)
from langchain_rankguide.engine.processors import LogitsProcessor
from langchain_rankguide.engine.sampling import SamplingSettings, step_seed
from langchain_rankguide.engine.step_engine import (
    CaptureSettings,
    Intervention,
    StepDraft,
    StepEngine,
    StepSettings,
    StepToken,
)
from langchain_rankguide.engine.stopping import (
    StepProgress,
    Stop,
    StoppingCriterion,
    StopStrings,
)
from langchain_rankguide.engine.text import IncrementalDetokenizer, encode_continuation

__all__ = [
    "MODELS",
    "CaptureSettings",
    "IncrementalDetokenizer",
    "Intervention",
    "LoadedModel",
    "LogitsProcessor",
    "ModelRegistry",
    "SamplingSettings",
    "StepDraft",
    "StepEngine",
    "StepProgress",
    "StepSettings",
    "StepToken",
    "Stop",
    "StopStrings",
    "StoppingCriterion",
    "capture_residual",
    "encode_continuation",
    "find_decoder_layers",
    "load_model",
    "load_tokenizer",
    "resolve_layer",
    "resolve_model_source",
    "step_seed",
]
