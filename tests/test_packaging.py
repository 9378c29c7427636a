"""The built wheel carries the embedded demo models, their tokenizer and the default files."""

from __future__ import annotations

import json
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


def test_installed_wheel_runs_the_demo_offline(wheel: Path, tmp_path: Path) -> None:
    """Installed (not editable) and with the hub switched off: both models, the tokenizer's
    chat template and a whole collaboration run from the package's own files."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), wheel],
        check=True,
        timeout=300,
    )
    script = (
        "import langchain_rankguide, json\n"
        "from langchain_rankguide.config import load_config\n"
        "from langchain_rankguide.engine import load_model\n"
        "from langchain_rankguide.graph import build_graph\n"
        f"assert langchain_rankguide.__file__.startswith({str(target)!r}), "
        "langchain_rankguide.__file__\n"
        "for spec in ('demo:srm', 'demo:lrm'):\n"
        "    loaded = load_model(spec)\n"
        "    prompt = loaded.tokenizer.apply_chat_template(\n"
        "        [{'role': 'system', 'content': 's'}, {'role': 'user', 'content': 'u'},\n"
        "         {'role': 'assistant', 'content': 'a'}, {'role': 'tool', 'content': 't'}],\n"
        "        tokenize=False)\n"
        "    assert all(f'<|{r}|>' in prompt for r in ('system', 'user', 'assistant', 'tool'))\n"
        "state = build_graph(load_config(None, overrides={'routing': {'policy': 'random',\n"
        "    'random_rate': 0.5}})).invoke({'question': "
        "'Start at 72, then: (1) subtract 39, (2) add 14. What is the result?'})\n"
        "print(json.dumps({'answer': state['answer'],\n"
        "    'authors': sorted({s['author'] for s in state['steps']})}))\n"
    )
    env = {
        "PYTHONPATH": str(target),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["answer"] and result["authors"] == ["lrm", "srm"]
