"""Shared fixtures: one thread for torch, tiny models built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small and a larger tiny model (shared test tokenizer), trained in code for seconds."""
    from tiny_models import build_tiny_pair

    return build_tiny_pair(tmp_path_factory.mktemp("tiny-models"))
