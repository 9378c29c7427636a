"""Shared fixtures: one thread for torch, tiny models built once per test session, and a
throwaway PostgreSQL cluster started once per session for the tests that ask for it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


class PostgresServer:
    """The session's throwaway PostgreSQL cluster (see ``tests/postgres_cluster.py``)."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.url: str = cluster.url
        self.password: str = cluster_password()

    def database_url(self, name: str) -> str:
        """A new, empty database on the cluster, as a URL (password included)."""
        return str(self.cluster.database_url(name))


def cluster_password() -> str:
    from postgres_cluster import PASSWORD

    return PASSWORD


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL 15 cluster on a free loopback port, started once per test session.

    ``bash scripts/test.sh`` (which ``.ci/run`` calls) starts it through this fixture the first
    time a test asks for it and stops it when the session ends. Tests that need it are skipped,
    with the reason, only where PostgreSQL's ``initdb`` is not installed.
    """
    from postgres_cluster import PostgresCluster, find_initdb

    initdb = find_initdb()
    if initdb is None:
        pytest.skip("PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql)")
    with PostgresCluster(initdb) as cluster:
        yield PostgresServer(cluster)
