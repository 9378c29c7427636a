"""Documentation stays in step with the code it describes."""

from __future__ import annotations

from pathlib import Path

from langchain_rankguide.schemas import SIGNALS

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_signal_is_documented():
    text = (DOCS / "signals.md").read_text()
    missing = [name for name in SIGNALS if f"`{name}`" not in text]
    assert not missing, f"docs/signals.md lacks {missing}"
