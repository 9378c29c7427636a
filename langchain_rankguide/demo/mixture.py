"""Stage-2 training examples: question forms, takeover of SRM prefixes, and tool dialogues.

Each example is ``(input_ids, labels)`` with labels ``-100`` wherever the model is not taught
(prompts, someone else's prefix, injected wrong steps). The kinds, drawn by weight:

- ``own``: a question in any wording (:mod:`~langchain_rankguide.demo.forms`), 1-6 operations,
  and the model's own reference trace;
- ``takeover``: a question, a prefix the SRM actually wrote (from :class:`PrefixPool`), and the
  reference continuation of :func:`~langchain_rankguide.demo.takeover.continue_trace`;
- ``takeover_checks``: a right prefix that ends in a block of checks out of order
  (:func:`~langchain_rankguide.demo.takeover.checked_prefix`, in either check format), and its
  reference continuation -- usually just the answer, which must be the running total;
- ``tools``: a tool dialogue (:mod:`~langchain_rankguide.demo.tools`) with made-up tool and
  parameter names, loss on the assistant's turns; ``tools_listed``: the same with names from
  closed lists (the first generator, kept for the shipped SRM's recipe);
- ``tools_arith``: a tools block offered with an arithmetic question, answered by reasoning
  (a tool is called only when the user asks for one).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langchain_rankguide.demo.forms import random_form, render_question
from langchain_rankguide.demo.takeover import checked_prefix, continue_trace
from langchain_rankguide.demo.task import (
    Problem,
    TraceStep,
    generate_problem,
    render_trace,
    split_of,
    split_steps,
)
from langchain_rankguide.demo.tools import make_dialogue

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

IGNORE_INDEX = -100
Example = tuple[list[int], list[int]]


def train_problem(rng: random.Random, *, min_ops: int = 1, max_ops: int = 6) -> Problem:
    """A training-split problem with ``min_ops``-``max_ops`` operations."""
    while True:
        problem = generate_problem(rng, min_ops=min_ops, max_ops=max_ops)
        if split_of(problem.question) == "train":
            return problem


def _encode(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def encode_chat(
    tokenizer: PreTrainedTokenizerFast,
    messages: Sequence[dict[str, Any]],
    *,
    tools: list[Any] | None = None,
) -> Example:
    """Tokenise a dialogue with the chat template; loss on the assistant turns only."""
    ids: list[int] = []
    labels: list[int] = []
    for end in range(1, len(messages) + 1):
        text = str(tokenizer.apply_chat_template(list(messages[:end]), tools=tools, tokenize=False))
        new = _encode(tokenizer, text)[len(ids) :]
        taught = messages[end - 1]["role"] == "assistant"
        if taught:
            opener = _encode(tokenizer, "<|assistant|>")
            labels.extend([IGNORE_INDEX] * len(opener) + new[len(opener) :])
        else:
            labels.extend([IGNORE_INDEX] * len(new))
        ids.extend(new)
    return ids, labels


def encode_trace(
    tokenizer: PreTrainedTokenizerFast,
    question: str,
    prefix: Sequence[str],
    steps: Sequence[TraceStep],
    *,
    system: str | None = None,
    tools: list[Any] | None = None,
) -> Example:
    """Tokenise prompt, an untaught prefix and taught steps (injected errors untaught), EOS."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question})
    prompt = str(
        tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=True
        )
    )
    ids = _encode(tokenizer, prompt + "".join(prefix))
    labels = [IGNORE_INDEX] * len(ids)
    # Steps end with the delimiter, so no token spans two steps: step-wise encoding is exact.
    for step in steps:
        step_ids = _encode(tokenizer, step.text)
        ids.extend(step_ids)
        labels.extend([IGNORE_INDEX] * len(step_ids) if step.injected_error else step_ids)
    eos = int(tokenizer.eos_token_id)
    return [*ids, eos], [*labels, eos]


@dataclass
class PrefixPool:
    """SRM-written traces of training problems, cut at step boundaries for takeover examples.

    Attributes:
        traces: ``(problem, the SRM's steps)`` pairs (greedy and sampled decodes).
    """

    traces: list[tuple[Problem, list[str]]]

    def draw(self, rng: random.Random) -> tuple[Problem, list[str], list[TraceStep]] | None:
        """A problem, a prefix of its SRM trace and the reference continuation, or ``None``."""
        problem, steps = rng.choice(self.traces)
        cut = rng.randint(1, max(1, len(steps) - 1))
        prefix = steps[:cut]
        continuation = continue_trace(problem, prefix, rng)
        return None if continuation is None else (problem, prefix, continuation)


@dataclass
class Mixture:
    """Draws stage-2 examples by kind weight (see the module docstring).

    Attributes:
        tokenizer: The demo tokenizer.
        weights: Kind -> weight (``own``, ``takeover``, ``takeover_checks``, ``tools``,
            ``tools_listed``, ``tools_arith``).
        keyed_checks: The model's own check format.
        pool: SRM prefixes for ``takeover`` (required when that kind has weight).
        system_prompts: System messages mixed into a few examples.
    """

    tokenizer: PreTrainedTokenizerFast
    weights: dict[str, float]
    keyed_checks: bool
    pool: PrefixPool | None = None
    system_prompts: Sequence[str] = ()

    def __post_init__(self) -> None:
        self._makers: dict[str, Callable[[random.Random], Example | None]] = {
            "own": self._own,
            "takeover": self._takeover,
            "takeover_checks": self._takeover_checks,
            "tools": self._tools,
            "tools_listed": self._tools_listed,
            "tools_arith": self._tools_arith,
        }
        unknown = set(self.weights) - set(self._makers)
        if unknown:
            raise ValueError(f"unknown example kinds: {sorted(unknown)}")
        if self.weights.get("takeover") and self.pool is None:
            raise ValueError("takeover examples need a PrefixPool")

    def __call__(self, rng: random.Random) -> Example:
        """One example (kinds that fail to draw, e.g. an unusable prefix, are drawn again)."""
        kinds, weights = zip(*self.weights.items(), strict=True)
        while True:
            example = self._makers[rng.choices(kinds, weights)[0]](rng)
            if example is not None:
                return example

    def _system(self, rng: random.Random) -> str | None:
        return (
            rng.choice(self.system_prompts) if self.system_prompts and rng.random() < 0.1 else None
        )

    def _question(self, rng: random.Random, problem: Problem) -> str:
        return render_question(problem.start, problem.ops, random_form(rng))

    def _own(self, rng: random.Random) -> Example:
        problem = train_problem(rng)
        steps = render_trace(problem, rng, keyed_checks=self.keyed_checks)
        question = self._question(rng, problem)
        return encode_trace(self.tokenizer, question, [], steps, system=self._system(rng))

    def _takeover(self, rng: random.Random) -> Example | None:
        assert self.pool is not None
        drawn = self.pool.draw(rng)
        if drawn is None:
            return None
        problem, prefix, steps = drawn
        return encode_trace(self.tokenizer, self._question(rng, problem), prefix, steps)

    def _takeover_checks(self, rng: random.Random) -> Example | None:
        problem = train_problem(rng, min_ops=2)
        n_ops = len(problem.ops)
        done = n_ops if rng.random() < 0.7 else rng.randint(2, n_ops)
        prefix = checked_prefix(problem, done, rng, keyed=rng.random() < 0.5)
        steps = continue_trace(problem, prefix, rng, keyed_checks=self.keyed_checks)
        if steps is None:
            return None
        return encode_trace(self.tokenizer, self._question(rng, problem), prefix, steps)

    def _tools(self, rng: random.Random) -> Example:
        dialogue = make_dialogue(rng)
        return encode_chat(self.tokenizer, dialogue.messages, tools=dialogue.tools)

    def _tools_listed(self, rng: random.Random) -> Example:
        dialogue = make_dialogue(rng, listed_names=True)
        return encode_chat(self.tokenizer, dialogue.messages, tools=dialogue.tools)

    def _tools_arith(self, rng: random.Random) -> Example:
        problem = train_problem(rng)
        steps = render_trace(problem, rng, keyed_checks=self.keyed_checks)
        tools = make_dialogue(rng, with_result=False).tools
        return encode_trace(self.tokenizer, self._question(rng, problem), [], steps, tools=tools)


def sample_prefix_pool(
    model: Any,
    tokenizer: PreTrainedTokenizerFast,
    *,
    n: int,
    seed: int,
    temperature: float = 0.7,
    max_new_tokens: int = 360,
) -> PrefixPool:
    """Decode the SRM on ``n`` training problems, half greedy and half sampled."""
    import torch

    from langchain_rankguide.demo.train import greedy_traces

    rng = random.Random(f"rankguide-demo:prefix-pool:{seed}")
    problems = [train_problem(rng, min_ops=2, max_ops=6) for _ in range(n)]
    half = n // 2
    torch.manual_seed(seed)
    texts = greedy_traces(model, tokenizer, problems[:half], max_new_tokens=max_new_tokens)
    texts += greedy_traces(
        model,
        tokenizer,
        problems[half:],
        max_new_tokens=max_new_tokens,
        temperature=temperature,
    )
    traces = [(p, split_steps(t)) for p, t in zip(problems, texts, strict=True)]
    return PrefixPool([(p, steps) for p, steps in traces if len(steps) >= 2])
