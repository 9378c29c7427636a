"""RankGuide: a small and a large reasoning model working together, one step at a time.

Importing the package is cheap: the engine, models and LangChain/LangGraph integrations
load on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY_EXPORTS: dict[str, str] = {
    "StepRecord": "langchain_rankguide.schemas",
    "StepEvent": "langchain_rankguide.schemas",
    "Calibration": "langchain_rankguide.schemas",
    "SIGNALS": "langchain_rankguide.schemas",
    "StepEngine": "langchain_rankguide.engine",
    "load_model": "langchain_rankguide.engine",
    "RankGuideConfig": "langchain_rankguide.config",
    "build_graph": "langchain_rankguide.graph",
    "build_agent_graph": "langchain_rankguide.graphs",
    "ChatRankGuide": "langchain_rankguide.chat_models",
    "ChatSteeredHuggingFace": "langchain_rankguide.chat_models",
    "load_config": "langchain_rankguide.config",
}

__all__ = ["__version__", *sorted(_LAZY_EXPORTS)]


def __getattr__(name: str) -> Any:
    module_name = _LAZY_EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'langchain_rankguide' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
