"""Load Hugging Face causal LMs offline, once per process, and share them between runs."""

from __future__ import annotations

import importlib.resources
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from langchain_rankguide.errors import ModelLoadError

DEMO_PREFIX = "demo:"
_DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass
class LoadedModel:
    """A model and its tokenizer, loaded once and shared by every run in the process.

    Attributes:
        model: the ``transformers`` causal LM, in eval mode.
        tokenizer: its tokenizer.
        identity: a stable name used in records, calibration and steering files (the demo
            name, the hub id, or the folder name with its config hash).
        source: the path the weights were loaded from.
        num_layers: number of decoder blocks.
        hidden_size: width of the residual stream.
        context_length: the model's context window in tokens (``max_position_embeddings``),
            ``None`` when its configuration does not say.
        lock: serialises forward passes, so per-request hooks never see another request.
    """

    model: Any
    tokenizer: Any
    identity: str
    source: str
    num_layers: int
    hidden_size: int
    context_length: int | None = None
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters."""
        return next(self.model.parameters()).device

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Every token id that ends generation (tokenizer and generation config)."""
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.model.config):
            eos = getattr(source, "eos_token_id", None) if source is not None else None
            if isinstance(eos, int):
                ids.add(eos)
            elif isinstance(eos, (list, tuple)):
                ids.update(int(i) for i in eos)
        if getattr(self.tokenizer, "eos_token_id", None) is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return frozenset(ids)


def demo_model_dir(name: str) -> Path:
    """Return the folder of an embedded demo model (``"srm"`` or ``"lrm"``)."""
    root = importlib.resources.files("langchain_rankguide") / "demo" / "models" / name
    return Path(str(root))


def resolve_model_source(spec: str) -> tuple[str, str]:
    """Map a model spec to ``(load_from, identity)``; never contacts a hub.

    ``demo:srm`` / ``demo:lrm`` name the embedded models; an existing folder loads from disk;
    anything else is treated as a hub id that must already be in the local cache.

    Raises:
        ModelLoadError: for a missing demo model or a path-like spec that does not exist.
    """
    if spec.startswith(DEMO_PREFIX):
        name = spec[len(DEMO_PREFIX) :]
        folder = demo_model_dir(name)
        if not (folder / "config.json").is_file():
            raise ModelLoadError(
                f"embedded demo model {spec!r} is missing at {folder}; "
                "train it with `rankguide demo train`"
            )
        return str(folder), f"rankguide-demo-{name}"
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model folder {path} has no config.json")
        return str(path), path.resolve().name
    looks_like_path = spec.startswith(("/", "./", "../", "~")) or spec.count("/") > 1
    if looks_like_path:
        raise ModelLoadError(f"model path does not exist: {path}")
    return spec, spec


def device_problem(device: str) -> str | None:
    """Say why ``device`` cannot run a model in this process, or ``None`` when it can.

    Args:
        device: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto`` (always available).
    """
    kind, _, index = device.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            built = "built without CUDA" if torch.version.cuda is None else "sees no CUDA device"
            return f"CUDA is not available (torch {torch.__version__} {built})"
        count = torch.cuda.device_count()
        if index.isdigit() and int(index) >= count:
            return f"there is no {device} (this machine has {count} CUDA device(s))"
    if kind == "mps" and not torch.backends.mps.is_available():
        return "MPS is not available on this machine"
    return None


def load_model(
    spec: str,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    threads: int | None = 1,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer from a local folder, the local cache or the demo.

    Nothing is downloaded: every ``from_pretrained`` call passes ``local_files_only=True``,
    so a local path works with no network and a hub id works only if it is cached.

    Example:
        >>> srm = load_model("demo:srm")  # doctest: +SKIP
        >>> srm.num_layers  # doctest: +SKIP
        2
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # Progress bars for a few-MB local load are noise in a CLI and in logs.
    hf_logging.disable_progress_bar()
    if threads is not None:
        torch.set_num_threads(threads)
    source, identity = resolve_model_source(spec)
    torch_dtype: Any = "auto" if dtype == "auto" else _DTYPES.get(dtype)
    if torch_dtype is None:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(_DTYPES)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    problem = device_problem(device)
    if problem:  # before any weights are read
        raise ModelLoadError(f"cannot load model {spec!r} on device {device!r}: {problem}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, local_files_only=True, trust_remote_code=trust_remote_code
        )
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=torch_dtype,
            local_files_only=True,
            trust_remote_code=trust_remote_code,
        )
    except Exception as exc:
        # Unknown architectures, broken config.json, tokenizer or weight files raise ValueError,
        # TypeError or SafetensorError, not only OSError; all are one clear line.
        raise _load_failure(f"model {spec!r}", source, exc) from None
    _check_chat_template(tokenizer, spec)
    model = model.to(device)  # type: ignore[arg-type]
    model.eval()
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        identity=identity,
        source=source,
        num_layers=int(text_config.num_hidden_layers),
        hidden_size=int(text_config.hidden_size),
        context_length=_context_length(text_config),
    )


def _check_chat_template(tokenizer: Any, spec: str) -> None:
    """Compile the tokenizer's chat template(s) now, so a broken one fails the load, not a run."""
    try:
        from jinja2 import TemplateError
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:  # pragma: no cover - transformers moved its private helper
        return
    templates = getattr(tokenizer, "chat_template", None)
    named = templates if isinstance(templates, dict) else {"": templates}
    for name, template in named.items():
        if not isinstance(template, str):
            continue
        try:
            _compile_jinja_template(template)
        except TemplateError as exc:
            line = getattr(exc, "lineno", None)
            where = f" (line {line})" if line else ""
            which = f"chat template {name!r}" if name else "chat template"
            why = " ".join(str(exc).split())
            raise ModelLoadError(
                f"model {spec!r}: its {which} is not valid Jinja{where}: {why}"
            ) from None


def load_tokenizer(spec: str, *, trust_remote_code: bool = False) -> Any:
    """Load only a model's tokenizer (chat template included): local files only, no weights.

    For what needs the tokenizer but not the model (token counting).

    Raises:
        ModelLoadError: the tokenizer cannot be loaded from local files.
    """
    from transformers import AutoTokenizer

    source, _ = resolve_model_source(spec)
    try:
        return AutoTokenizer.from_pretrained(
            source, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except Exception as exc:
        raise _load_failure(f"the tokenizer of {spec!r}", source, exc) from None


def _load_failure(what: str, source: str, exc: Exception) -> ModelLoadError:
    """One clear line for a failed load: what, where it was looked for, why."""
    hint = "" if os.path.isdir(source) else " (not a local folder, and not in the local cache)"
    why = " ".join(str(exc).split()) or type(exc).__name__
    why = why if len(why) <= 300 else why[:297] + "..."
    return ModelLoadError(f"cannot load {what}{hint}: {why}")


def _context_length(config: Any) -> int | None:
    value = getattr(config, "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None


class ModelRegistry:
    """Process-wide cache of loaded models: each (spec, dtype, device) loads once, thread-safely.

    Example:
        >>> registry = ModelRegistry()
        >>> srm = registry.get("demo:srm")  # doctest: +SKIP
        >>> registry.get("demo:srm") is srm  # doctest: +SKIP
        True
    """

    def __init__(self) -> None:
        self._models: dict[tuple[Any, ...], LoadedModel] = {}
        self._tokenizers: dict[tuple[str, bool], Any] = {}
        self._lock = threading.Lock()
        self._loading: dict[tuple[Any, ...], threading.Lock] = {}

    def __reduce__(self) -> str | tuple[Any, ...]:
        # Pickled, the shared registry stays the receiving process's shared registry; any other
        # pickles as an empty one: loaded models never travel, they load again on first use.
        if self is MODELS:
            return "MODELS"
        return (ModelRegistry, ())

    def get(
        self,
        spec: str,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        threads: int | None = 1,
        trust_remote_code: bool = False,
    ) -> LoadedModel:
        """Return the loaded model for ``spec``, loading it on first use."""
        key = (spec, dtype, device, trust_remote_code)
        with self._lock:
            if key in self._models:
                return self._models[key]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._models:
                    return self._models[key]
            loaded = load_model(
                spec,
                dtype=dtype,
                device=device,
                threads=threads,
                trust_remote_code=trust_remote_code,
            )
            with self._lock:
                self._models[key] = loaded
        return loaded

    def tokenizer(self, spec: str, *, trust_remote_code: bool = False) -> Any:
        """The tokenizer of ``spec``: a loaded model's, else loaded alone once (no weights)."""
        key = (spec, trust_remote_code)
        with self._lock:
            for (model_spec, _, _, remote_code), loaded in self._models.items():
                if model_spec == spec and remote_code == trust_remote_code:
                    return loaded.tokenizer
            if key in self._tokenizers:
                return self._tokenizers[key]
        tokenizer = load_tokenizer(spec, trust_remote_code=trust_remote_code)
        with self._lock:
            return self._tokenizers.setdefault(key, tokenizer)

    def clear(self) -> None:
        """Forget every loaded model (they are freed once no run holds them)."""
        with self._lock:
            self._models.clear()
            self._tokenizers.clear()
            self._loading.clear()


MODELS = ModelRegistry()
"""The shared registry used by the graph, chat models, CLI and server."""
