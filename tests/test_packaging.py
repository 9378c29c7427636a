"""The built wheel carries the embedded demo models, their tokenizer and the default files."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
        ],
        check=True,
        timeout=300,
    )
    return next(out.glob("langchain_rankguide-*.whl"))


def test_wheel_contains_models_tokenizer_and_defaults(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for model in ("srm", "lrm"):
        for file in (
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
            "chat_template.jinja",
            "README.md",
        ):
            assert f"langchain_rankguide/demo/models/{model}/{file}" in names
    assert "langchain_rankguide/defaults/demo.yaml" in names
    assert "langchain_rankguide/defaults/demo_calibration.json" in names
    assert "langchain_rankguide/py.typed" in names
