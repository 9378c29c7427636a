#!/usr/bin/env python
r"""Measure the step engine at real model shapes: decode speed, capture, signals, steering hook.

Runs on a bare torch + transformers install (no pydantic, LangChain, LangGraph, PyYAML, no
network): it imports only torch, transformers and ``langchain_rankguide.engine`` /
``langchain_rankguide.signals``. Models are random-weight models of real shapes built directly
on the device, with a tokenizer built in code -- the text is meaningless, so the delimiter never
appears and every step ends at the step cap; that is what a speed measurement needs.

Measured per shape (medians over ``--repeats`` timed runs after a warm-up):

- ``generate``: ``model.generate`` greedy decode, ms/token ((t(N) - t(1)) / (N - 1), so the
  prompt prefill is excluded);
- ``engine``: the step engine's greedy decode over ``--steps`` steps of ``--step-tokens``,
  ms/token (draft time only, prompt prefilled once before);
- ``+capture``: the same with hidden-state capture at two layers, a 16-token window and 8
  opening states (what RankGuide records for its signals);
- ``+steer``: the same with a steering-like intervention: a forward pre-hook adding a vector to
  the residual stream entering one block (layer 20 of 28 at the 1.5B shape), at every position;
- signal cost per step on the captured states, on the device: every ``rank.*`` signal, and
  every signal of the registry; and the ``rank.*`` signals of one authors'-size step (512 tokens);
- whether the engine's greedy ids equal ``generate``'s from the same prompt.

Usage::

    python scripts/gpu_perf.py --device cuda --shapes 1.5b,7b --dtype bfloat16
    python scripts/gpu_perf.py --device cpu --shapes tiny --steps 2 --check-imports

The table is printed last; ``--json PATH`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import importlib.abc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Run from a checkout without installing the package.
sys.path.insert(0, str(ROOT))

FORBIDDEN_MODULES = ("pydantic", "yaml", "langchain_core", "langgraph", "langchain")
# transformers' own dependency huggingface_hub imports yaml; only our code must not.
ABSENT_ON_GPU_BOX = ("pydantic", "langchain_core", "langgraph", "langchain")


class ImportWatch(importlib.abc.MetaPathFinder):
    """Record which file first imported each forbidden top-level module (finds nothing itself)."""

    def __init__(self) -> None:
        self.importers: dict[str, str] = {}

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname in FORBIDDEN_MODULES and fullname not in self.importers:
            frame = sys._getframe(1)
            while frame is not None and (
                frame.f_code.co_filename.startswith("<frozen")
                or "importlib" in frame.f_code.co_filename
                or frame.f_code.co_filename == __file__
            ):
                frame = frame.f_back
            self.importers[fullname] = frame.f_code.co_filename if frame else "?"
        return None

    def violations(self) -> list[str]:
        """Forbidden imports made by this package or script, or of modules the GPU box lacks."""
        ours = (str(ROOT / "langchain_rankguide"), str(Path(__file__).resolve()))
        problems = [
            f"{name} (imported by {importer})"
            for name, importer in sorted(self.importers.items())
            if importer.startswith(ours) or name in ABSENT_ON_GPU_BOX
        ]
        return problems


# Installed before torch and the package are imported, so every import is seen.
WATCH = ImportWatch()
if "--check-imports" in sys.argv:
    sys.meta_path.insert(0, WATCH)

import torch  # noqa: E402

from langchain_rankguide.engine import (  # noqa: E402
    CaptureSettings,
    LoadedModel,
    StepEngine,
    StepSettings,
    find_decoder_layers,
)
from langchain_rankguide.signals import (  # noqa: E402
    ALL_SIGNALS,
    SignalInputs,
    compute_signals,
)

DELIMITER = "\n\n"


@dataclass(frozen=True)
class Shape:
    """A Qwen2-style decoder shape."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    tie_embeddings: bool
    steer_layer: int
    signal_layers: tuple[int, int]


SHAPES = {
    # DeepSeek-R1-Distill-Qwen-1.5B (Qwen2.5-Math-1.5B): steering at layer 20 of 28.
    "1.5b": Shape("1.5b", 28, 1536, 12, 2, 8960, 151936, True, 20, (14, 20)),
    # DeepSeek-R1-Distill-Qwen-7B (Qwen2.5-Math-7B).
    "7b": Shape("7b", 28, 3584, 28, 4, 18944, 152064, False, 20, (14, 20)),
    "tiny": Shape("tiny", 4, 64, 4, 2, 128, 512, True, 2, (1, 2)),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_tokenizer(vocab_size: int) -> Any:
    """A word-level fast tokenizer covering every model id, with the delimiter as one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "<eos>", DELIMITER, *(f"w{i} " for i in range(3, vocab_size))]
    tok = Tokenizer(models.WordLevel(vocab={p: i for i, p in enumerate(pieces)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>", pad_token="<unk>"
    )


def build_model(shape: Shape, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """A random-weight Qwen2 causal LM of ``shape``, created directly on ``device``."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.ffn,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=32768,
        tie_word_embeddings=shape.tie_embeddings,
        # No EOS: random weights must not end a trace; every step runs to the cap.
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    with torch.device(device):
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        except TypeError:  # transformers < 4.56 named it torch_dtype
            model = AutoModelForCausalLM.from_config(config, torch_dtype=dtype)
    model = model.to(device=device, dtype=dtype).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return LoadedModel(
        model=model,
        tokenizer=build_tokenizer(shape.vocab),
        identity=f"random-qwen2-{shape.name}",
        source="random",
        num_layers=shape.layers,
        hidden_size=shape.hidden,
    )


class AddVector:
    """A steering-like intervention: add ``vector`` to the residual stream entering ``layer``.

    Follows the engine's ``Intervention`` protocol: called per forward pass, returns a context
    manager that holds a forward pre-hook only for that pass.
    """

    def __init__(self, layer: int, vector: torch.Tensor) -> None:
        self.layer = layer
        self.vector = vector

    def __call__(self, model: Any, positions: torch.Tensor, input_ids: Sequence[int]) -> Any:
        return self._hooked(model)

    @contextmanager
    def _hooked(self, model: Any) -> Iterator[None]:
        block = find_decoder_layers(model)[self.layer]
        vector = self.vector

        def pre_hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if args:
                return (args[0] + vector, *args[1:]), kwargs
            kwargs["hidden_states"] = kwargs["hidden_states"] + vector
            return args, kwargs

        handle = block.register_forward_pre_hook(pre_hook, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()


def short_path(filename: str) -> str:
    """A file name from its package directory on (``huggingface_hub/utils/_fixes.py``)."""
    parts = Path(filename).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            return "/".join(parts[parts.index(marker) + 1 :])
    return filename


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run_engine(
    loaded: LoadedModel,
    prompt: list[int],
    steps: int,
    step_tokens: int,
    *,
    capture: CaptureSettings | None = None,
    interventions: Sequence[Any] = (),
) -> tuple[float, list[int], list[Any]]:
    """Draft and commit ``steps`` capped steps; return (ms/token, ids, drafts)."""
    engine = StepEngine(
        loaded,
        settings=StepSettings(delimiter=DELIMITER, max_step_tokens=step_tokens, stop_at_eos=False),
        capture=capture,
        interventions=interventions,
    )
    engine.start_ids(prompt)
    sync(loaded.device)
    ids: list[int] = []
    drafts = []
    seconds = 0.0
    for _ in range(steps):
        started = time.perf_counter()
        draft = engine.draft_step()
        sync(loaded.device)
        seconds += time.perf_counter() - started
        engine.commit(draft)
        ids.extend(draft.token_ids)
        drafts.append(draft)
    return 1000 * seconds / max(1, len(ids)), ids, drafts


def run_generate(loaded: LoadedModel, prompt: list[int], n: int) -> tuple[float, list[int]]:
    """Greedy ``generate`` of ``n`` tokens; return (seconds, new ids)."""
    device = loaded.device
    ids = torch.tensor([prompt], device=device)
    mask = torch.ones_like(ids)
    sync(device)
    started = time.perf_counter()
    with torch.inference_mode():
        out = loaded.model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False)
    sync(device)
    return time.perf_counter() - started, out[0, len(prompt) :].tolist()


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    sync(device)
    started = time.perf_counter()
    result = fn()
    sync(device)
    return 1000 * (time.perf_counter() - started), result


def signal_inputs(draft: Any, previous: list[str], primary: int) -> SignalInputs:
    return SignalInputs(
        step_hidden=draft.step_hidden,
        window_hidden=draft.window_hidden,
        opening_states=draft.opening_states,
        first_token_logprobs=draft.first_token_logprobs,
        token_logprobs=draft.token_logprobs,
        token_entropies=draft.token_entropies,
        text=draft.text,
        previous_texts=previous,
        n_tokens=draft.n_tokens,
        primary_layer=primary,
    )


def measure_shape(shape: Shape, args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[
        args.dtype
    ]
    started = time.perf_counter()
    loaded = build_model(shape, device, dtype)
    sync(device)
    result: dict[str, Any] = {"shape": shape.name, "build_s": time.perf_counter() - started}
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, shape.vocab, (args.prompt_tokens,), generator=g).tolist()
    n = args.steps * args.step_tokens
    repeats = args.repeats

    # Warm-up: kernels, allocator, tokenizer caches.
    run_generate(loaded, prompt, min(8, n))
    run_engine(loaded, prompt, 1, min(8, args.step_tokens))

    # generate: subtract the one-token call so the prompt prefill is not in the decode figure.
    one = [run_generate(loaded, prompt, 1)[0] for _ in range(repeats)]
    full = []
    gen_ids: list[int] = []
    for _ in range(repeats):
        seconds, gen_ids = run_generate(loaded, prompt, n)
        full.append(seconds)
    result["generate_ms_per_token"] = 1000 * (median(full) - median(one)) / max(1, n - 1)

    engine_ms, engine_ids = [], []
    for _ in range(repeats):
        ms, engine_ids, _ = run_engine(loaded, prompt, args.steps, args.step_tokens)
        engine_ms.append(ms)
    result["engine_ms_per_token"] = median(engine_ms)
    mismatch = next(
        (i for i, (a, b) in enumerate(zip(engine_ids, gen_ids, strict=False)) if a != b), None
    )
    result["same_ids"] = mismatch is None and len(engine_ids) == len(gen_ids)
    result["first_mismatch"] = mismatch

    capture = CaptureSettings(layers=shape.signal_layers, window=16, opening_states=8)
    capture_ms: list[float] = []
    drafts: list[Any] = []
    for _ in range(repeats):
        ms, _, drafts = run_engine(loaded, prompt, args.steps, args.step_tokens, capture=capture)
        capture_ms.append(ms)
    result["capture_ms_per_token"] = median(capture_ms)

    vector = torch.randn(shape.hidden, generator=g).to(device=device, dtype=dtype) * 0.01
    steer = [AddVector(shape.steer_layer, vector)]
    steer_ms = [
        run_engine(loaded, prompt, args.steps, args.step_tokens, interventions=steer)[0]
        for _ in range(repeats)
    ]
    result["steer_ms_per_token"] = median(steer_ms)

    # Signals on the captured states (on the device), per step.
    rank_names = [name for name in ALL_SIGNALS if name.startswith("rank.")]
    primary = shape.signal_layers[-1]
    rank_ms, all_ms, previous = [], [], []
    unmeasured: set[str] = set()
    for draft in drafts:
        inputs = signal_inputs(draft, previous, primary)
        ms, _ = timed(lambda inputs=inputs: compute_signals(rank_names, inputs), device)
        rank_ms.append(ms)
        ms, (values, _) = timed(lambda inputs=inputs: compute_signals(ALL_SIGNALS, inputs), device)
        all_ms.append(ms)
        unmeasured.update(name for name, value in values.items() if value is None)
        previous.append(draft.text)
    result["rank_signals_ms_per_step"] = median(rank_ms)
    result["all_signals_ms_per_step"] = median(all_ms)
    result["signals_none"] = sorted(unmeasured)

    # One step of the authors' size (512 tokens), states at two layers, random.
    big = {
        layer: torch.randn(512, shape.hidden, generator=g).to(device=device, dtype=dtype)
        for layer in shape.signal_layers
    }
    window = {layer: states[-16:] for layer, states in big.items()}
    big_inputs = SignalInputs(step_hidden=big, window_hidden=window, primary_layer=primary)
    step_names = [n for n in rank_names if not n.startswith("rank.cross_step")]
    timed(lambda: compute_signals(step_names, big_inputs), device)  # warm-up
    result["rank_signals_ms_512"] = median(
        [timed(lambda: compute_signals(step_names, big_inputs), device)[0] for _ in range(repeats)]
    )

    del loaded, drafts
    if device.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    result["wall_s"] = time.perf_counter() - started
    return result


ROWS = (
    ("generate (ms/token)", "generate_ms_per_token", "{:.2f}"),
    ("engine (ms/token)", "engine_ms_per_token", "{:.2f}"),
    ("engine + capture (ms/token)", "capture_ms_per_token", "{:.2f}"),
    ("engine + steer hook (ms/token)", "steer_ms_per_token", "{:.2f}"),
    ("rank.* signals (ms/step)", "rank_signals_ms_per_step", "{:.1f}"),
    ("all signals (ms/step)", "all_signals_ms_per_step", "{:.1f}"),
    ("rank.* at 512 tokens (ms/step)", "rank_signals_ms_512", "{:.1f}"),
    ("engine ids == generate ids", "same_ids", "{}"),
    ("wall (s)", "wall_s", "{:.0f}"),
)


def table(results: list[dict[str, Any]], header: str) -> str:
    width = max(len(label) for label, _, _ in ROWS)
    cols = [r["shape"] for r in results]
    lines = [header, f"{'':<{width}}  " + "  ".join(f"{c:>10}" for c in cols)]
    for label, key, fmt in ROWS:
        cells = []
        for r in results:
            value = r.get(key)
            cells.append(f"{'-' if value is None else fmt.format(value):>10}")
        lines.append(f"{label:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default: cuda)")
    parser.add_argument("--shapes", default="1.5b,7b", help="comma list of 1.5b, 7b, tiny")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--steps", type=int, default=4, help="steps per timed run (default 4)")
    parser.add_argument("--step-tokens", type=int, default=64, help="step cap (default 64)")
    parser.add_argument("--prompt-tokens", type=int, default=512, help="prompt length")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--budget-s", type=float, default=240.0, help="skip remaining shapes past this (s)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--check-imports",
        action="store_true",
        help=f"fail if any of {', '.join(FORBIDDEN_MODULES)} was imported",
    )
    args = parser.parse_args(argv)
    unknown = [s for s in args.shapes.split(",") if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shape(s) {unknown}; known: {', '.join(SHAPES)}")
    if args.steps < 1 or args.step_tokens < 2 or args.repeats < 1 or args.prompt_tokens < 1:
        parser.error("--steps, --repeats and --prompt-tokens must be >= 1, --step-tokens >= 2")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch sees no CUDA device")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    header = (
        f"gpu_perf: {name or device.type}, {args.dtype}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, python {platform.python_version()}; "
        f"prompt {args.prompt_tokens} tokens, {args.steps} steps x {args.step_tokens} tokens, "
        f"median of {args.repeats}"
    )
    print(header, flush=True)
    started = time.perf_counter()
    results = []
    for shape_name in args.shapes.split(","):
        if time.perf_counter() - started > args.budget_s:
            print(f"skipping {shape_name}: past the {args.budget_s:.0f} s budget", flush=True)
            continue
        result = measure_shape(SHAPES[shape_name], args)
        print(json.dumps(result), flush=True)
        results.append(result)
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "results": results}, indent=2))
    status = 0
    if args.check_imports:
        problems = WATCH.violations() + [
            f"{name} (imported before the watch started)"
            for name in ABSENT_ON_GPU_BOX
            if name in sys.modules and name not in WATCH.importers
        ]
        if problems:
            print(f"check-imports: FAILED: {'; '.join(problems)}", flush=True)
            status = 1
        else:
            others = ", ".join(
                f"{n} by {short_path(f)}" for n, f in sorted(WATCH.importers.items())
            )
            print(
                "check-imports: ok: the engine and signals imported none of "
                f"{', '.join(FORBIDDEN_MODULES)}" + (f" (third-party: {others})" if others else "")
            )
    print(table(results, header))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
