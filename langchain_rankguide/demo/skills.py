"""What the demo models must do beyond their own canonical traces, measured.

- **Takeover accuracy**: over held-out SRM traces, at every step boundary whose prefix the
  verifier accepts (and that gave no answer yet), the share of LRM continuations that reach
  the right answer -- what a router relies on when it hands a step to the LRM.
- **Wording accuracy**: held-out problems worded as users type them (prose forms, with and
  without "then" or a closing question) and one-operation questions.
- **Tool-call accuracy**: held-out tool dialogues, the share of calls whose name and
  arguments are exactly the expected ones.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from langchain_rankguide.demo.forms import all_forms, render_question
from langchain_rankguide.demo.task import Problem, make_problems, verify_steps
from langchain_rankguide.demo.tools import make_dialogue
from langchain_rankguide.stats import wilson_interval

MAX_STEP_TOKENS = 64
MAX_TRACE_TOKENS = 800


@dataclass(frozen=True)
class Rate:
    """A measured share with its 95% Wilson interval."""

    hits: int
    n: int

    @property
    def value(self) -> float:
        """The share (``nan`` for no trials)."""
        return self.hits / self.n if self.n else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        """The 95% Wilson interval."""
        return wilson_interval(self.hits, self.n)

    def __str__(self) -> str:
        low, high = self.interval
        return f"{self.value:.1%} [{low:.1%}, {high:.1%}] ({self.hits}/{self.n})"


def _engine(loaded: Any, role: str) -> Any:
    from langchain_rankguide.engine import SamplingSettings, StepEngine, StepSettings

    settings = StepSettings(delimiter="\n\n", max_step_tokens=MAX_STEP_TOKENS, end_markers=())
    return StepEngine(loaded, role=role, settings=settings, sampling=SamplingSettings())


def _prompt(loaded: Any, question: str) -> str:
    messages = [{"role": "user", "content": question}]
    return str(
        loaded.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    )


def continue_greedy(engine: Any, text: str, budget: int = MAX_TRACE_TOKENS) -> list[str]:
    """Greedy steps after ``text`` (a rendered prompt, maybe with a prefix) until the end."""
    engine.reset()
    engine.start(text)
    steps: list[str] = []
    tokens = 0
    while tokens < budget and len(steps) < 40:
        draft = engine.draft_step(max_new_tokens=min(MAX_STEP_TOKENS, budget - tokens))
        engine.commit(draft)
        steps.append(draft.text)
        tokens += draft.n_tokens
        if draft.ends_trace:
            break
    return steps


def takeover_accuracy(
    lrm: Any,
    problems: Sequence[Problem],
    srm_traces: Sequence[Sequence[str]],
    *,
    budget: int = MAX_TRACE_TOKENS,
) -> Rate:
    """LRM continuations from every accepted, unanswered prefix of the SRM's traces."""
    engine = _engine(lrm, "lrm")
    hits = n = 0
    for problem, steps in zip(problems, srm_traces, strict=True):
        prompt = _prompt(lrm, problem.question)
        for cut in range(1, len(steps)):
            verdict = verify_steps(problem, steps[:cut])
            if verdict.answer is not None or not verdict.all_steps_correct:
                break
            continuation = continue_greedy(engine, prompt + "".join(steps[:cut]), budget)
            n += 1
            hits += verify_steps(problem, [*steps[:cut], *continuation]).correct
    return Rate(hits, n)


def worded_problems(n: int, seed: int) -> list[tuple[Problem, str]]:
    """Held-out problems in non-canonical wordings; a third have one operation."""
    rng = random.Random(f"rankguide-demo:wordings:{seed}")
    forms = [f for f in all_forms() if f.joiner != "numbered"]
    single = make_problems(n // 3, seed=seed, split="heldout", min_ops=1, max_ops=1)
    several = make_problems(n - len(single), seed=seed, split="heldout", min_ops=2, max_ops=6)
    problems = [*single, *several]
    return [(p, render_question(p.start, p.ops, rng.choice(forms))) for p in problems]


def wording_accuracy(
    loaded: Any,
    role: str,
    worded: Sequence[tuple[Problem, str]],
    *,
    budget: int = MAX_TRACE_TOKENS,
) -> Rate:
    """Share of worded questions answered right (greedy, through the step engine)."""
    engine = _engine(loaded, role)
    hits = sum(
        verify_steps(problem, continue_greedy(engine, _prompt(loaded, question), budget)).correct
        for problem, question in worded
    )
    return Rate(hits, len(worded))


_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def parse_call(text: str) -> dict[str, Any] | None:
    """The first ``<tool_call>`` of a reply as ``{"name", "arguments"}``, or ``None``."""
    match = _CALL_RE.search(text)
    if match is None:
        return None
    try:
        call = json.loads(match.group(1))
        return {"name": call["name"], "arguments": dict(call["arguments"])}
    except (ValueError, KeyError, TypeError):
        return None


def tool_call_accuracy(
    loaded: Any, n: int, seed: int, max_new_tokens: int = 160, *, grammar: bool = False
) -> Rate:
    """Share of held-out dialogues whose call has exactly the expected name and arguments."""
    return tool_call_rates(loaded, n, seed, max_new_tokens, grammar=grammar)["exact"]


def tool_call_rates(
    loaded: Any, n: int, seed: int, max_new_tokens: int = 160, *, grammar: bool = False
) -> dict[str, Rate]:
    """On held-out dialogues: exact calls, calls to the right tool, right integer/string values.

    ``grammar=False`` measures the model alone (``generate``); ``grammar=True`` decodes the
    reply as the chat models and the server do with ``tool_choice="auto"``, through the step
    engine with the call grammar that switches on when the model opens a call. A value counts
    as right only in a call to the right tool.
    """
    rng = random.Random(f"rankguide-demo:tool-eval:{seed}")
    counts = dict.fromkeys(("exact", "name", "integer", "string"), 0)
    totals = {"exact": n, "name": n, "integer": 0, "string": 0}
    for _ in range(n):
        dialogue = make_dialogue(rng, with_result=False)
        prompt = loaded.tokenizer.apply_chat_template(
            dialogue.messages[:1], tools=dialogue.tools, tokenize=False, add_generation_prompt=True
        )
        decode = _reply_with_grammar if grammar else _reply_alone
        call = parse_call(decode(loaded, prompt, dialogue.tools, max_new_tokens))
        named = call is not None and call["name"] == dialogue.call["name"]
        counts["exact"] += call == dialogue.call
        counts["name"] += named
        for key, value in dialogue.call["arguments"].items():
            kind = "integer" if isinstance(value, int) else "string"
            totals[kind] += 1
            counts[kind] += named and call is not None and call["arguments"].get(key) == value
    return {key: Rate(counts[key], totals[key]) for key in counts}


def _reply_alone(loaded: Any, prompt: str, tools: Any, max_new_tokens: int) -> str:
    import torch

    tokenizer = loaded.tokenizer
    ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
    with torch.inference_mode():
        out = loaded.model.generate(
            input_ids=ids,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


def _reply_with_grammar(loaded: Any, prompt: str, tools: Any, max_new_tokens: int) -> str:
    from langchain_rankguide.answer_format import AnswerFormat
    from langchain_rankguide.engine import SamplingSettings, StepEngine, StepSettings
    from langchain_rankguide.engine.grammar import CLOSING_OVERRUN
    from langchain_rankguide.engine.triggered_grammar import answer_hooks

    settings = StepSettings(max_step_tokens=max_new_tokens + CLOSING_OVERRUN, end_markers=())
    engine = StepEngine(loaded, role="lrm", settings=settings, sampling=SamplingSettings())
    engine.start(prompt)
    processors, criteria = answer_hooks(
        AnswerFormat.of(tools), loaded.tokenizer, loaded.eos_token_ids, max_new_tokens
    )
    draft = engine.draft_step(
        max_new_tokens=max_new_tokens + CLOSING_OVERRUN,
        stop_at_delimiter=False,
        logits_processors=processors,
        stopping_criteria=criteria,
    )
    return str(draft.text)
