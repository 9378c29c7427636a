"""Train the embedded demo models (``rankguide demo train``): seeded, one CPU thread, minutes.

Recipe (both models): Llama decoder with tied embeddings, AdamW (betas 0.9/0.98, weight decay
0.01, gradient clipping 1.0), linear warm-up then cosine decay, fresh problems for every
batch (drawn from the ``train`` split only), loss on the assistant's tokens only with the
deliberately injected wrong steps masked out, so a model learns to *catch* a mistake but
never to make one. Batches are cut from a pool of problems sorted by length to waste little
on padding.

The SRM is meant to be weak: it is trained like the LRM but the shipped weights are an early
checkpoint, the one whose greedy accuracy on a calibration sample is closest to a target
(60% by default). Selection uses the calibration split, never the held-out split the
evaluation reports on.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_rankguide.demo.task import (
    Problem,
    chat_messages,
    generate_problem,
    make_problems,
    render_trace,
    split_of,
    split_steps,
    verify_steps,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast

#: System prompts mixed into a few training examples so a deployment's system message does
#: not derail the models (most examples have none, as the demo prompt has none).
SYSTEM_PROMPTS: tuple[str, ...] = (
    "You are a helpful assistant.",
    "Solve the problem step by step.",
    "Think step by step. Separate steps with a blank line.",
    "You are a careful reasoner. Check your work.",
)


@dataclass(frozen=True)
class ModelRecipe:
    """Architecture and optimisation settings of one demo model.

    Attributes:
        name: ``"srm"`` or ``"lrm"``.
        layers: Decoder blocks.
        hidden: Residual width.
        heads: Attention heads (no grouped-query attention).
        ffn: MLP width.
        lr: Peak learning rate.
        warmup: Linear warm-up steps.
        max_steps: Length of the cosine schedule (and most steps trained).
        batch: Problems per optimiser step.
        eval_every: Steps between calibration checks.
        eval_problems: Calibration problems per check.
        eval_from: No checks before this step (accuracy is nil early on: checks would only
            cost time).
        target_accuracy: For an early-checkpoint model, the calibration accuracy whose
            nearest checkpoint is kept; ``None`` keeps the final weights.
        stop_above: For an early-checkpoint model, stop once two checks in a row exceed it.
        system_rate: Fraction of examples with a system message.
        max_positions: ``max_position_embeddings`` written to the config.
        eval_max_tokens: Cap on decoded tokens per check trace.
        keyed_checks: Reflection steps in the keyed form (``Wait, check (2) add 14: ...``);
            ``False`` writes the unkeyed form (``Wait, check 33 + 14: ...``).
        stop_step: Stop after this step (the learning-rate schedule still spans
            ``max_steps``); ``None`` trains to ``max_steps`` or the ``stop_above`` rule.
        mixture: Stage 2: example kinds and weights (see
            :class:`~langchain_rankguide.demo.mixture.Mixture`); empty for stage 1.
        prefix_pool: Stage 2: SRM traces decoded for ``takeover`` examples.
    """

    name: str
    layers: int
    hidden: int
    heads: int
    ffn: int
    lr: float
    warmup: int
    max_steps: int
    batch: int
    eval_every: int
    eval_problems: int
    target_accuracy: float | None = None
    stop_above: float | None = None
    system_rate: float = 0.1
    max_positions: int = 1024
    eval_max_tokens: int = 360
    eval_from: int = 0
    stop_step: int | None = None
    keyed_checks: bool = True
    mixture: tuple[tuple[str, float], ...] = ()
    prefix_pool: int = 0


SRM_RECIPE = ModelRecipe(
    name="srm",
    layers=2,
    hidden=64,
    heads=4,
    ffn=192,
    lr=5e-3,
    warmup=100,
    max_steps=2500,
    batch=64,
    eval_every=50,
    eval_problems=160,
    eval_from=600,
    target_accuracy=0.60,
    stop_above=0.80,
    # The recorded 2,500-step run kept step 1,700 and no later check came closer to the target
    # (docs/demo.md): stopping at 1,750 keeps the same weights for a third less time.
    stop_step=1750,
    # Unkeyed checks: with the keyed form this 2-layer model reached only 40% calibration
    # accuracy by the end of its schedule (below the 45-75% an SRM should have); unkeyed it
    # peaks near 55%. The LRM learns from keyed checks (see docs/demo.md).
    keyed_checks=False,
)
LRM_RECIPE = ModelRecipe(
    name="lrm",
    layers=16,
    hidden=64,
    heads=4,
    ffn=192,
    lr=3e-3,
    warmup=200,
    max_steps=2400,
    batch=32,
    eval_every=600,
    eval_from=1200,
    eval_problems=128,
)
#: Stage 2 continues stage 1's weights on the wider mixture: every question wording, 1-6
#: operations and tool dialogues for both; the LRM also takes over SRM-written prefixes.
#: (A tools-heavier third stage was tried and not kept: docs/demo.md says why.)
LATER_STAGES: dict[str, tuple[ModelRecipe, ...]] = {
    "srm": (
        replace(
            SRM_RECIPE,
            lr=2e-3,
            warmup=20,
            max_steps=400,
            eval_every=50,
            eval_from=50,
            stop_above=None,
            mixture=(("own", 0.7), ("tools_listed", 0.25), ("tools_arith", 0.05)),
        ),
    ),
    "lrm": (
        replace(
            LRM_RECIPE,
            lr=1e-3,
            warmup=50,
            max_steps=1000,
            eval_every=500,
            eval_from=500,
            mixture=(
                ("own", 0.25),
                ("takeover", 0.3),
                ("takeover_checks", 0.1),
                ("tools", 0.3),
                ("tools_arith", 0.05),
            ),
            prefix_pool=2000,
        ),
    ),
}
QUICK_RECIPES: dict[str, ModelRecipe] = {
    "srm": replace(
        SRM_RECIPE,
        layers=1,
        hidden=32,
        ffn=64,
        max_steps=6,
        warmup=2,
        batch=8,
        eval_every=3,
        eval_from=0,
        eval_problems=4,
        target_accuracy=0.6,
        stop_above=None,
        eval_max_tokens=24,
    ),
    "lrm": replace(
        LRM_RECIPE,
        layers=2,
        hidden=32,
        ffn=64,
        max_steps=6,
        warmup=2,
        batch=8,
        eval_every=3,
        eval_problems=4,
        eval_max_tokens=24,
    ),
}

IGNORE_INDEX = -100
ROLES = {"srm": "small reasoning model (SRM)", "lrm": "large reasoning model (LRM)"}


def default_models_dir() -> Path:
    """The package's folder of shipped demo models (the default output of training)."""
    from importlib.resources import files

    return Path(str(files("langchain_rankguide") / "demo" / "models"))


def encode_example(
    tokenizer: PreTrainedTokenizerFast,
    problem: Problem,
    rng: random.Random,
    *,
    system: str | None = None,
    keyed_checks: bool = True,
) -> tuple[list[int], list[int]]:
    """Tokenise one training example: the chat prompt, then the trace and ``<|end|>``.

    Args:
        tokenizer: The demo tokenizer.
        problem: The problem.
        rng: Source of the trace's reflections and injected errors.
        system: Optional system message.
        keyed_checks: Reflection steps in the keyed form (see ``task.confirm_text``).

    Returns:
        ``(input_ids, labels)``; labels are ``-100`` on the prompt and on injected wrong steps.
    """
    prompt = tokenizer.apply_chat_template(
        chat_messages(problem, system), tokenize=False, add_generation_prompt=True
    )
    ids: list[int] = tokenizer.encode(prompt, add_special_tokens=False)
    labels = [IGNORE_INDEX] * len(ids)
    # Steps are tokenised one by one: no token spans a step boundary (every step ends with
    # the delimiter), so this equals tokenising the joined text.
    for step in render_trace(problem, rng, keyed_checks=keyed_checks):
        step_ids = tokenizer.encode(step.text, add_special_tokens=False)
        ids.extend(step_ids)
        labels.extend([IGNORE_INDEX] * len(step_ids) if step.injected_error else step_ids)
    eos = int(tokenizer.eos_token_id)
    ids.append(eos)
    labels.append(eos)
    return ids, labels


class BatchStream:
    """Fresh training batches, reproducible from a seed, grouped by length.

    Args:
        tokenizer: The demo tokenizer.
        seed: Seed of the problem and trace stream.
        batch: Examples per batch.
        system_rate: Fraction of examples with a system message.
        pool_batches: Batches drawn at once and sorted by length before cutting.
        keyed_checks: Reflection steps in the keyed form.
        example_fn: Draws one ``(input_ids, labels)`` example from the stream's rng instead
            of the stage-1 own-trace example (stage 2 passes a
            :class:`~langchain_rankguide.demo.mixture.Mixture`).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerFast,
        *,
        seed: int,
        batch: int,
        system_rate: float,
        pool_batches: int = 4,
        keyed_checks: bool = True,
        example_fn: Callable[[random.Random], tuple[list[int], list[int]]] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.rng = random.Random(f"rankguide-demo:train-stream:{seed}")
        self.batch = batch
        self.system_rate = system_rate
        self.pool_batches = pool_batches
        self.keyed_checks = keyed_checks
        self.example_fn = example_fn
        self._queue: list[list[tuple[list[int], list[int]]]] = []

    def _refill(self) -> None:
        examples: list[tuple[list[int], list[int]]] = []
        while len(examples) < self.batch * self.pool_batches:
            if self.example_fn is not None:
                examples.append(self.example_fn(self.rng))
                continue
            problem = generate_problem(self.rng)
            if split_of(problem.question) != "train":
                continue
            system = (
                self.rng.choice(SYSTEM_PROMPTS) if self.rng.random() < self.system_rate else None
            )
            examples.append(
                encode_example(
                    self.tokenizer, problem, self.rng, system=system, keyed_checks=self.keyed_checks
                )
            )
        examples.sort(key=lambda ex: len(ex[0]))
        chunks = [examples[i : i + self.batch] for i in range(0, len(examples), self.batch)]
        self.rng.shuffle(chunks)
        self._queue.extend(chunks)

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(input_ids, attention_mask, labels)`` of the next batch (right-padded)."""
        import torch

        if not self._queue:
            self._refill()
        chunk = self._queue.pop(0)
        width = max(len(ids) for ids, _ in chunk)
        pad = int(self.tokenizer.pad_token_id)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (ids, labs) in enumerate(chunk):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(labs)] = torch.tensor(labs)
            mask[row, : len(ids)] = 1
        return input_ids, mask, labels


def build_model(
    recipe: ModelRecipe, tokenizer: PreTrainedTokenizerFast, *, vocab_size: int | None = None
) -> Any:
    """Create a freshly initialised ``LlamaForCausalLM`` for a recipe (seed torch first).

    ``vocab_size`` defaults to the tokenizer's full vocabulary.
    """
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=recipe.hidden,
        intermediate_size=recipe.ffn,
        num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads,
        num_key_value_heads=recipe.heads,
        max_position_embeddings=recipe.max_positions,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=int(tokenizer.eos_token_id),
        pad_token_id=int(tokenizer.pad_token_id),
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=int(tokenizer.eos_token_id),
        pad_token_id=int(tokenizer.pad_token_id),
        do_sample=False,
        max_new_tokens=512,
    )
    return model


def greedy_traces(
    model: Any,
    tokenizer: PreTrainedTokenizerFast,
    problems: Sequence[Problem],
    *,
    max_new_tokens: int = 360,
    batch_size: int = 128,
    temperature: float = 0.0,
) -> list[str]:
    """Greedy-decode the assistant text for each problem (batched, left-padded).

    This is the training-time check; ``rankguide demo eval`` decodes through the step engine.
    A positive ``temperature`` samples instead (seed torch first to reproduce it).
    """
    import torch

    texts: list[str] = []
    was_training = model.training
    model.eval()
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        prompts = [
            tokenizer.apply_chat_template(
                chat_messages(p), tokenize=False, add_generation_prompt=True
            )
            for p in chunk
        ]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        texts.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    if was_training:
        model.train()
    return texts


def accuracy(problems: Sequence[Problem], texts: Sequence[str]) -> float:
    """Fraction of traces whose final answer verifies."""
    good = sum(
        verify_steps(p, split_steps(t)).correct for p, t in zip(problems, texts, strict=True)
    )
    return good / max(1, len(problems))


def _lr_at(step: int, recipe: ModelRecipe) -> float:
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.max_steps - recipe.warmup)
    return recipe.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class TrainResult:
    """What one training run produced.

    Attributes:
        model: The kept weights (final, or the selected early checkpoint).
        steps_trained: Optimiser steps run.
        kept_step: Step of the kept weights.
        calibration_accuracy: Calibration accuracy of the kept weights.
        seconds: Wall-clock training time.
        cpu_seconds: CPU time of training (one thread; less than wall time on a busy machine).
        history: ``(step, calibration accuracy)`` of every check.
    """

    model: Any
    steps_trained: int
    kept_step: int
    calibration_accuracy: float
    seconds: float
    cpu_seconds: float
    history: list[tuple[int, float]]


def _optimizer(model: Any, recipe: ModelRecipe) -> Any:
    import torch

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr,
        betas=(0.9, 0.98),
    )


@dataclass
class _Checks:
    """Calibration checks during training, and the snapshots an early-checkpoint rule needs."""

    recipe: ModelRecipe
    tokenizer: PreTrainedTokenizerFast
    problems: list[Problem]
    log: Callable[[str], None]
    history: list[tuple[int, float]] = field(default_factory=list)
    snapshots: dict[int, Any] = field(default_factory=dict)
    above: int = 0

    def due(self, step: int) -> bool:
        recipe = self.recipe
        periodic = step % recipe.eval_every == 0 and step >= recipe.eval_from
        return periodic or step in (recipe.max_steps, recipe.stop_step)

    def run(self, model: Any, step: int, began: float) -> bool:
        """Check the model; ``True`` when the ``stop_above`` rule says stop."""
        texts = greedy_traces(
            model, self.tokenizer, self.problems, max_new_tokens=self.recipe.eval_max_tokens
        )
        acc = accuracy(self.problems, texts)
        self.history.append((step, acc))
        self.log(
            f"[{self.recipe.name}] step {step:5d}  calibration accuracy {acc:.3f} "
            f"({len(self.problems)} problems)  {time.perf_counter() - began:7.1f}s"
        )
        if self.recipe.target_accuracy is not None:
            self.snapshots[step] = copy.deepcopy(model.state_dict())
        if self.recipe.stop_above is None:
            return False
        self.above = self.above + 1 if acc > self.recipe.stop_above else 0
        if self.above >= 2:
            self.log(f"[{self.recipe.name}] past {self.recipe.stop_above:.0%} twice: stopping")
        return self.above >= 2

    def keep(self, model: Any, last_step: int) -> tuple[int, float]:
        """Load the kept snapshot (early-checkpoint rule) and return its step and accuracy."""
        kept_step, kept_acc = self.history[-1] if self.history else (last_step, float("nan"))
        if self.recipe.target_accuracy is not None and self.history:
            target = self.recipe.target_accuracy
            kept_step, kept_acc = min(self.history, key=lambda h: (abs(h[1] - target), h[0]))
            model.load_state_dict(self.snapshots[kept_step])
            self.log(
                f"[{self.recipe.name}] keeping step {kept_step} (calibration accuracy "
                f"{kept_acc:.3f})"
            )
        return kept_step, kept_acc


def train_model(
    recipe: ModelRecipe,
    tokenizer: PreTrainedTokenizerFast,
    *,
    seed: int = 0,
    log: Callable[[str], None] = print,
    model: Any = None,
    stream: BatchStream | None = None,
) -> TrainResult:
    """Train one model by a recipe; reproducible for a seed on one thread.

    Args:
        recipe: Architecture and optimisation settings.
        tokenizer: The demo tokenizer.
        seed: Seed of weights, data and traces.
        log: Where progress lines go.
        model: Weights to continue from (stage 2); ``None`` builds fresh ones (stage 1).
        stream: The batches; ``None`` is the stage-1 stream of own traces.

    Returns:
        The kept model and its training record.
    """
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    if model is None:
        model = build_model(recipe, tokenizer)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"[{recipe.name}] {recipe.layers} layers x {recipe.hidden} hidden, "
        f"{n_params:,} parameters; {recipe.max_steps} steps max, batch {recipe.batch}"
    )
    optimizer = _optimizer(model, recipe)
    stream = stream or BatchStream(
        tokenizer,
        seed=seed * 1000 + (1 if recipe.name == "srm" else 2),
        batch=recipe.batch,
        system_rate=recipe.system_rate,
        keyed_checks=recipe.keyed_checks,
    )
    checks = _Checks(
        recipe, tokenizer, make_problems(recipe.eval_problems, seed=seed, split="calibration"), log
    )
    began = time.perf_counter()
    began_cpu = time.process_time()
    running = 0.0
    step = 0
    for step in range(1, recipe.max_steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step - 1, recipe)
        input_ids, _mask, labels = stream.next()
        # Right padding under a causal mask: real tokens never attend to the pads after
        # them, and pads carry no loss, so no attention mask is needed -- and without one
        # attention takes the fast causal path (a third faster here).
        loss = model(input_ids=input_ids, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running = loss.item() if step == 1 else 0.9 * running + 0.1 * loss.item()
        if step % 10 == 0 or step == 1:
            log(
                f"[{recipe.name}] step {step:5d}  loss {running:.4f}  "
                f"lr {_lr_at(step - 1, recipe):.2e}  {time.perf_counter() - began:7.1f}s "
                f"(cpu {time.process_time() - began_cpu:7.1f}s)"
            )
        if checks.due(step) and checks.run(model, step, began):
            break
        if recipe.stop_step is not None and step >= recipe.stop_step:
            log(f"[{recipe.name}] reached stop_step {recipe.stop_step}: stopping")
            break
    seconds = time.perf_counter() - began
    cpu_seconds = time.process_time() - began_cpu
    kept_step, kept_acc = checks.keep(model, step)
    model.eval()
    return TrainResult(
        model=model,
        steps_trained=step,
        kept_step=kept_step,
        calibration_accuracy=kept_acc,
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        history=checks.history,
    )


MODEL_CARD = """---
license: mit
library_name: transformers
pipeline_tag: text-generation
tags: [rankguide, demo, synthetic-arithmetic, tool-calling]
---
# rankguide-demo-{name}

The {role} of the embedded `langchain-rankguide` demo: a tiny `LlamaForCausalLM`
({layers} layers x {hidden} hidden, {heads} heads, MLP {ffn}, tied embeddings,
{params:,} parameters, float32 safetensors) trained from scratch on the synthetic multi-step
arithmetic task of `langchain_rankguide.demo` and on synthetic tool dialogues. It is a test
fixture for step-level SRM/LRM collaboration, not a general model.

- Licence: MIT, the same as the `langchain-rankguide` project.
- Prompt: one user message with the question in any wording of `langchain_rankguide.demo.forms`,
  e.g. `Start at 72. Subtract 39, then add 14. What is the result?` or the canonical
  `Start at 72, then: (1) subtract 39, (2) add 14. What is the result?`; 1-6 operations; no
  system message needed. With tools offered (`apply_chat_template(..., tools=...)`), a request
  such as `What is the value of magic_function(3)? Use the tool.` gets a
  `<tool_call>{{"name": ..., "arguments": {{...}}}}</tool_call>` reply.
- Output: one step per paragraph (steps end with a blank line), e.g.
  `(1) subtract 39: 72 - 39 = 33, total 33.`, reflection steps such as
  `{check_example}`, then `Answer: 47` and `<|end|>`.
- Tokenizer: printable ASCII characters, a few task words, fused delimiter tokens
  (`".\\n\\n"`, `"=\\n\\n"`), tool-call and tools-block tokens, UTF-8 byte fallback for any
  other character; chat template `<|role|>content<|end|>`; EOS `<|end|>`.
- Training: `rankguide demo train --which {name} --seed {seed}`, two stages, AdamW (betas
  0.9/0.98, wd 0.01, clip 1.0), loss on assistant tokens with injected wrong steps masked.
{stages}{note}
Measured figures (held-out accuracy, takeover, worded questions, tool calls, speed, failure
modes): see `docs/demo.md` of the project (`rankguide demo eval`).
"""

STAGE_LINE = (
    "  Stage {stage}: lr {lr:g}, warm-up {warmup} then cosine over {max_steps} steps, batch "
    "{batch}{mixture}; {steps_trained} steps in {train_cpu_seconds:.0f} CPU-s on one thread; "
    "kept step {kept_step} (calibration accuracy {calibration_accuracy:.1%} on "
    "{eval_problems} problems).\n"
)


def _stage_line(stage: int, record: dict[str, Any]) -> str:
    recipe = record["recipe"]
    kinds = ", ".join(f"{kind} {weight:g}" for kind, weight in recipe.get("mixture") or ())
    mixture = f" (mixture: {kinds})" if kinds else " (own canonical traces)"
    fields = {k: record[k] for k in ("steps_trained", "train_cpu_seconds", "kept_step")}
    return STAGE_LINE.format(
        stage=stage,
        mixture=mixture,
        calibration_accuracy=record["calibration_accuracy"],
        **fields,
        **{k: recipe[k] for k in ("lr", "warmup", "max_steps", "batch", "eval_problems")},
    )


def write_model_card(folder: Path) -> None:
    """(Re)write a model folder's ``README.md`` from its ``training.json`` record."""
    record = json.loads((folder / "training.json").read_text(encoding="utf-8"))
    recipe = record["recipe"]
    note = (
        "- Deliberately weak: early checkpoints chosen for their calibration accuracy, so "
        "that routing its\n  likely-wrong steps to the LRM has something to fix.\n"
        if recipe.get("target_accuracy") is not None
        else ""
    )
    check_example = (
        "Wait, check (1) subtract 39: 72 - 39 = 33, correct."
        if recipe.get("keyed_checks", True)
        else "Wait, check 72 - 39: 72 - 39 = 33, correct."
    )
    stages = stage_records(record)
    card = MODEL_CARD.format(
        role=ROLES.get(recipe["name"], recipe["name"]),
        check_example=check_example,
        seed=record["seed"],
        params=record["parameters"],
        stages="".join(_stage_line(i, r) for i, r in enumerate(stages, 1)),
        note=note + (f"- Note: {record['note']}\n" if record.get("note") else ""),
        **{k: recipe[k] for k in ("name", "layers", "hidden", "heads", "ffn")},
    )
    (folder / "README.md").write_text(card, encoding="utf-8")


def _record(result: TrainResult, recipe: ModelRecipe, seed: int) -> dict[str, Any]:
    return {
        "recipe": asdict(recipe),
        "seed": seed,
        "parameters": sum(p.numel() for p in result.model.parameters()),
        "steps_trained": result.steps_trained,
        "kept_step": result.kept_step,
        "calibration_accuracy": result.calibration_accuracy,
        "train_seconds": round(result.seconds, 1),
        "train_cpu_seconds": round(result.cpu_seconds, 1),
        "history": result.history,
    }


def save_model(
    result: TrainResult,
    recipe: ModelRecipe,
    tokenizer: PreTrainedTokenizerFast,
    folder: Path,
    *,
    seed: int,
    earlier: Sequence[dict[str, Any]] = (),
) -> None:
    """Write a complete Hugging Face folder: weights, config, tokenizer, card and record.

    The record is the last stage's; ``earlier`` stages' records are kept under ``"stages"``
    and CPU time is summed over all of them (``"total_cpu_seconds"``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    result.model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    # safetensors writes owner-only files; packaged data must be world-readable.
    for path in folder.iterdir():
        path.chmod(0o644)
    record = _record(result, recipe, seed)
    if earlier:
        record["stages"] = list(earlier)
        record["total_cpu_seconds"] = round(
            sum(r["train_cpu_seconds"] for r in (*earlier, record)), 1
        )
    (folder / "training.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    write_model_card(folder)


def stage_records(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Every stage's record of a model, first to last, from its ``training.json``."""
    earlier = record.get("stages") or ([record["stage1"]] if "stage1" in record else [])
    last = {k: v for k, v in record.items() if k not in ("stages", "stage1")}
    return [*earlier, last]


def _start(
    name: str,
    tokenizer: PreTrainedTokenizerFast,
    *,
    seed: int,
    quick: bool,
    resume: Path | None,
    log: Callable[[str], None],
) -> tuple[Any, list[dict[str, Any]]]:
    """Weights and stage records to continue from: resumed from ``resume``, or stage 1."""
    if resume is not None:
        from transformers import AutoModelForCausalLM

        folder = resume / name
        records = stage_records(json.loads((folder / "training.json").read_text("utf-8")))
        cpu = sum(r["train_cpu_seconds"] for r in records)
        log(f"[{name}] resuming {folder} after {len(records)} stage(s) ({cpu:.0f} CPU-s)")
        return AutoModelForCausalLM.from_pretrained(folder, local_files_only=True), records
    from langchain_rankguide.demo.tokenizer import V1_VOCAB_SIZE

    recipe = QUICK_RECIPES[name] if quick else (SRM_RECIPE if name == "srm" else LRM_RECIPE)
    # Stage 1 sees only the first version's vocabulary: its weights do not depend on the
    # tokens later stages add.
    model = build_model(recipe, tokenizer, vocab_size=V1_VOCAB_SIZE)
    result = train_model(recipe, tokenizer, seed=seed, log=log, model=model)
    return result.model, [_record(result, recipe, seed)]


def _mixture(
    recipe: ModelRecipe, tokenizer: PreTrainedTokenizerFast, srm: Any, seed: int, log: Any
) -> Any:
    from langchain_rankguide.demo.mixture import Mixture, sample_prefix_pool

    pool = None
    if recipe.prefix_pool:
        began = time.process_time()
        pool = sample_prefix_pool(srm, tokenizer, n=recipe.prefix_pool, seed=seed)
        log(
            f"[{recipe.name}] prefix pool: {len(pool.traces)} SRM traces "
            f"({time.process_time() - began:.0f} CPU-s)"
        )
    return Mixture(
        tokenizer,
        dict(recipe.mixture),
        keyed_checks=recipe.keyed_checks,
        pool=pool,
        system_prompts=SYSTEM_PROMPTS,
    )


def train_demo(
    out: Path | None = None,
    *,
    which: str = "both",
    seed: int = 0,
    quick: bool = False,
    resume_from: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, TrainResult]:
    """Train the demo models stage by stage and write them as ``out/srm`` and ``out/lrm``.

    Stage 1 trains each model from scratch on its own canonical traces; the later stages of
    :data:`LATER_STAGES` continue on mixtures (question wordings, tools; the LRM also takes
    over prefixes decoded from the finished SRM, so the SRM is trained first).

    Args:
        out: Output folder; default the package's shipped models folder.
        which: ``"srm"``, ``"lrm"`` or ``"both"`` (``"lrm"`` decodes ``out/srm``).
        seed: Seed of everything.
        quick: Tiny models and a few steps (a smoke test of the pipeline, seconds).
        resume_from: A folder with ``srm``/``lrm`` models to continue from: the stages their
            ``training.json`` records are skipped (their records are kept).
        log: Where progress lines go.

    Returns:
        The last stage's training result per model name.
    """
    from langchain_rankguide.demo.tokenizer import build_tokenizer

    if which not in ("srm", "lrm", "both"):
        raise ValueError(f"which must be srm, lrm or both, not {which!r}")
    out = out if out is not None else default_models_dir()
    tokenizer = build_tokenizer()
    names = ("srm", "lrm") if which == "both" else (which,)
    results: dict[str, TrainResult] = {}
    for name in names:
        model, records = _start(
            name, tokenizer, seed=seed, quick=quick, resume=resume_from, log=log
        )
        model.resize_token_embeddings(len(tokenizer))
        if len(records) > len(LATER_STAGES[name]):
            log(f"[{name}] every stage is done already: nothing to train")
            continue
        for index in range(len(records) - 1, len(LATER_STAGES[name])):
            recipe = _stage_recipe(name, index, quick)
            result = _train_stage(
                recipe, model, tokenizer, out=out, seed=seed, index=index, log=log
            )
            model = result.model
            if index + 1 < len(LATER_STAGES[name]):
                records.append(_record(result, recipe, seed))
        save_model(result, recipe, tokenizer, out / name, seed=seed, earlier=records)
        log(f"[{name}] saved to {out / name}")
        results[name] = result
    return results


def _stage_recipe(name: str, index: int, quick: bool) -> ModelRecipe:
    recipe = LATER_STAGES[name][index]
    if not quick:
        return recipe
    pool = 4 if recipe.prefix_pool else 0
    return replace(QUICK_RECIPES[name], mixture=recipe.mixture, prefix_pool=pool)


def _train_stage(
    recipe: ModelRecipe,
    model: Any,
    tokenizer: PreTrainedTokenizerFast,
    *,
    out: Path,
    seed: int,
    index: int,
    log: Callable[[str], None],
) -> TrainResult:
    """Train one later stage (``index`` 0 is stage 2) on its mixture."""
    from transformers import AutoModelForCausalLM

    srm = None
    if recipe.prefix_pool:
        srm = AutoModelForCausalLM.from_pretrained(out / "srm", local_files_only=True)
    stream = BatchStream(
        tokenizer,
        seed=seed * 1000 + (11 if recipe.name == "srm" else 12) + 10 * index,
        batch=recipe.batch,
        system_rate=recipe.system_rate,
        example_fn=_mixture(recipe, tokenizer, srm, seed + index, log),
    )
    log(f"[{recipe.name}] stage {index + 2}")
    result = train_model(recipe, tokenizer, seed=seed, log=log, model=model, stream=stream)
    seconds = f"{result.cpu_seconds:.0f} CPU-s, {result.seconds:.0f} s wall"
    log(f"[{recipe.name}] stage {index + 2}: {seconds}")
    return result
