"""Constrained decoding with llguidance: JSON-schema output and tool calls, as engine hooks.

llguidance (the grammar engine behind vLLM's and SGLang's guided decoding) turns a JSON schema
or a Lark grammar into a token mask for each step, so even a tiny model can only write text the
schema accepts. It is an optional extra (``pip install langchain-rankguide[structured]``);
without it, structured output and forced tool calls raise an ImportError naming the extra, and
free (``auto``) tool calling still works.

Two things are ours:

* **Tokenizers llguidance cannot read natively** (its loader understands byte-level BPE and
  SentencePiece decoders; the demo models' character tokenizer has a ``Fuse`` decoder): each
  token's bytes are then taken from decoding it alone, which is exact for tokenizers whose pieces
  do not depend on their neighbours.
* **Closing within the budget.** A schema may admit arbitrarily long values and a small model
  may never end a string. Before each free choice the matcher is copied and the cheapest way to
  a complete value is simulated (closing quotes and brackets first, separators next, forced
  tokens as the grammar gives them); once the remaining ``max_tokens`` do not exceed that cost,
  decoding switches to closing mode and finishes the value. If the budget is too small even for
  that, closing continues past it (at most :data:`CLOSING_OVERRUN` tokens), since a truncated
  object is of no use.

The grammar reaches the step engine through its two hooks (:func:`grammar_hooks`): a logits
processor (:class:`GrammarProcessor`) and a stopping criterion (:class:`GrammarComplete`);
:func:`draft_constrained` drafts one step of an engine under a grammar. Both chat models, the
server and the RankGuide graph decode structured output through this module.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from langchain_rankguide.engine.processors import LogitsProcessor, only_token
from langchain_rankguide.engine.step_engine import StepDraft, StepEngine
from langchain_rankguide.engine.stopping import StepProgress, Stop, StoppingCriterion
from langchain_rankguide.errors import RankGuideError

CLOSING_OVERRUN = 256
"""Most tokens closing mode may add past ``max_tokens`` to complete a value."""

JSON_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
    "lenient": True,
}
"""llguidance JSON options: compact, canonical separators (no whitespace loops)."""

INSTALL_HINT = "pip install 'langchain-rankguide[structured]'"


class StructuredOutputError(RankGuideError, ValueError):
    """A schema cannot be compiled, or constrained decoding reached an impossible state."""


def llguidance_available() -> bool:
    """``True`` when the optional grammar engine is installed."""
    try:
        import llguidance  # noqa: F401
    except ImportError:
        return False
    return True


def require_llguidance(what: str) -> None:
    """Raise an ImportError naming the extra when llguidance is missing."""
    if not llguidance_available():
        raise ImportError(f"{what} needs constrained decoding with llguidance: {INSTALL_HINT}")


# --------------------------------------------------------------------------- schemas


def strict_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Copy ``schema`` with ``additionalProperties: false`` on every object that does not say.

    Keys the schema does not name would only be noise from a constrained model (and break tools
    whose arguments are validated), as in OpenAI's strict mode.
    """

    def visit(node: Any) -> Any:
        if isinstance(node, list):
            return [visit(item) for item in node]
        if not isinstance(node, Mapping):
            return node
        out = {key: visit(value) for key, value in node.items()}
        if out.get("type") == "object" and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out

    result = visit(dict(schema))
    assert isinstance(result, dict)
    return result


def _with_options(schema: Mapping[str, Any]) -> dict[str, Any]:
    out = strict_schema(schema)
    out["x-guidance"] = {**JSON_OPTIONS, **dict(out.get("x-guidance") or {})}
    return out


@dataclass(frozen=True)
class Constraint:
    """A grammar the output must follow.

    Attributes:
        grammar: the llguidance grammar (from a JSON schema or a Lark text).
        kind: ``json`` (the whole output is one JSON value), ``tool_call`` (one
            ``<tool_call>{...}</tool_call>`` block) or ``tool_call_or_json`` (either).
    """

    grammar: str
    kind: Literal["json", "tool_call", "tool_call_or_json"]

    @property
    def calls_tools(self) -> bool:
        """The output may be a tool call (so it is parsed for one)."""
        return self.kind != "json"


def json_constraint(schema: Mapping[str, Any] | None) -> Constraint:
    """The output is one JSON value of ``schema`` (``None``: any JSON object)."""
    import llguidance

    target = _with_options(schema if schema else {"type": "object"})
    return Constraint(llguidance.LLMatcher.grammar_from_json_schema(target), "json")


def tool_call_constraint(
    tools: Sequence[Mapping[str, Any]],
    name: str | None = None,
    *,
    or_json: Mapping[str, Any] | None = None,
    opened: bool = False,
) -> Constraint:
    """The output is one ``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` block.

    Args:
        tools: OpenAI-format tools (``{"type": "function", "function": {...}}``).
        name: the tool that must be called; ``None`` allows any of ``tools``.
        or_json: a JSON schema the output may follow instead of calling a tool (``{}``: any
            JSON object), as OpenAI's ``response_format`` beside ``tool_choice="auto"``.
        opened: the model has written ``<tool_call>`` already: the grammar starts after it
            (see :mod:`langchain_rankguide.engine.triggered_grammar`).

    Raises:
        StructuredOutputError: for an unknown tool name or no tools.
    """
    import llguidance

    functions = [t.get("function", t) for t in tools]
    if name is not None:
        functions = [f for f in functions if f.get("name") == name]
        if not functions:
            known = ", ".join(str(t.get("function", t).get("name")) for t in tools)
            raise StructuredOutputError(f"tool_choice names {name!r}, not a bound tool ({known})")
    if not functions:
        raise StructuredOutputError("a tool call was required but no tools are bound")
    rules = []
    for i, function in enumerate(functions):
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        call = {
            "type": "object",
            "properties": {"name": {"const": function["name"]}, "arguments": parameters},
            "required": ["name", "arguments"],
        }
        rules.append(f"c{i}: %json {json.dumps(_with_options(call))}")
    choice = " | ".join(f"c{i}" for i in range(len(functions)))
    opening = "" if opened else '"<tool_call>" '
    start = f'start: {opening}({choice}) "</tool_call>"'
    if or_json is not None:
        start += " | answer"
        rules.append(f"answer: %json {json.dumps(_with_options(or_json or {'type': 'object'}))}")
    lark = start + "\n" + "\n".join(rules)
    kind: Literal["tool_call", "tool_call_or_json"] = (
        "tool_call" if or_json is None else "tool_call_or_json"
    )
    return Constraint(llguidance.LLMatcher.grammar_from_lark(lark), kind)


# --------------------------------------------------------------------------- tokenizers

_CLOSERS = '"}]'
_BIT_SHIFTS = torch.arange(32, dtype=torch.int32)


class _TokenBytes:
    """A tokenizer seen as llguidance's ``TokenizerWrapper`` expects: bytes of every token."""

    def __init__(self, tokenizer: Any, texts: list[str], eos: int) -> None:
        self._tokenizer = tokenizer
        special = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
        self.eos_token_id = eos
        self.bos_token_id = getattr(tokenizer, "bos_token_id", None)
        # llguidance marks special tokens with a leading 0xFF byte.
        self.tokens = [
            b"\xff" + t.encode() if i in special else t.encode() for i, t in enumerate(texts)
        ]
        self.special_token_ids = sorted(special)

    def __call__(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))


@dataclass(frozen=True)
class JsonStringState:
    """Whether the text so far ends inside a JSON string (and just after a backslash).

    Closing mode needs it: inside a string ``}`` and ``]`` are content, only ``"`` closes.

    Example:
        >>> JsonStringState().after('{"a": "b}').inside
        True
    """

    inside: bool = False
    escaped: bool = False

    def after(self, text: str) -> JsonStringState:
        """The state once ``text`` follows."""
        inside, escaped = self.inside, self.escaped
        for ch in text:
            if escaped:
                escaped = False
            elif inside and ch == "\\":
                escaped = True
            elif ch == '"':
                inside = not inside
        return JsonStringState(inside, escaped)


@dataclass
class GrammarVocab:
    """llguidance's view of one tokenizer, plus each token's text and closing class.

    Attributes:
        ll: the llguidance tokenizer.
        size: number of tokens it knows (ids at or past it are never allowed).
        closing_class: per token, outside a string: 0 = only closing characters (``}``,
            ``]``), 1 = starts with one, 2 = starts with ``,``, 3 = anything else (a ``"``
            there opens a string).
        closing_class_in_string: per token, inside a string: 0 = only closing characters and
            starts with ``"``, 1 = starts with ``"``, 3 = anything else (content).
        texts: each token's text.
    """

    ll: Any
    size: int
    closing_class: torch.Tensor
    closing_class_in_string: torch.Tensor
    texts: list[str]


_VOCABS: weakref.WeakKeyDictionary[Any, dict[frozenset[int], GrammarVocab]] = (
    weakref.WeakKeyDictionary()
)
_VOCAB_LOCK = threading.Lock()


def _closing_class(text: str) -> int:
    if text[:1] == '"':
        return 3
    if text and all(ch in _CLOSERS for ch in text):
        return 0
    if text[:1] in tuple(_CLOSERS):
        return 1
    if text.lstrip(" ")[:1] == ",":
        return 2
    return 3


def _closing_class_in_string(text: str) -> int:
    if text[:1] != '"':
        return 3
    return 0 if all(ch in _CLOSERS for ch in text) else 1


def grammar_vocab(tokenizer: Any, eos_ids: Iterable[int]) -> GrammarVocab:
    """Build (once per tokenizer, thread-safely) the llguidance view of ``tokenizer``."""
    import llguidance
    import llguidance.hf

    eos = frozenset(int(i) for i in eos_ids)
    with _VOCAB_LOCK:
        cached = _VOCABS.setdefault(tokenizer, {}).get(eos)
        if cached is not None:
            return cached
        size = len(tokenizer)
        texts = tokenizer.batch_decode(
            [[i] for i in range(size)],
            skip_special_tokens=False,
            clean_up_tokenization_spaces=False,
        )
        eos_list = sorted(eos) or [int(tokenizer.eos_token_id)]
        try:
            ll = llguidance.hf.from_tokenizer(tokenizer, n_vocab=size, eos_token=eos_list)
        except (ValueError, TypeError):
            wrapper = llguidance.TokenizerWrapper(_TokenBytes(tokenizer, texts, eos_list[0]))
            ll = llguidance.LLTokenizer(wrapper, n_vocab=size, eos_token=eos_list)
        vocab = GrammarVocab(
            ll=ll,
            size=int(ll.vocab_size),
            closing_class=torch.tensor([_closing_class(t) for t in texts], dtype=torch.int8),
            closing_class_in_string=torch.tensor(
                [_closing_class_in_string(t) for t in texts], dtype=torch.int8
            ),
            texts=texts,
        )
        _VOCABS[tokenizer][eos] = vocab
        return vocab


# --------------------------------------------------------------------------- matching


class GrammarMatcher:
    """Follow one constrained generation: masks, forced tokens, and closing within a budget.

    Args:
        constraint: the grammar.
        vocab: the tokenizer's llguidance view (:func:`grammar_vocab`).
        eos_ids: ids that end generation.

    Raises:
        StructuredOutputError: the grammar does not compile.
    """

    def __init__(self, constraint: Constraint, vocab: GrammarVocab, eos_ids: Iterable[int]) -> None:
        import llguidance

        self.constraint = constraint
        self.vocab = vocab
        self.eos_ids = frozenset(int(i) for i in eos_ids)
        self._matcher = llguidance.LLMatcher(vocab.ll, constraint.grammar, log_level=1)
        self._string = JsonStringState()
        if self._matcher.is_error():
            raise StructuredOutputError(f"cannot compile the grammar: {self._matcher.get_error()}")

    # ------------------------------------------------------------------ state

    @property
    def done(self) -> bool:
        """The grammar admits nothing more."""
        return bool(self._matcher.is_stopped())

    def forced(self) -> list[int]:
        """Tokens the grammar forces next (may be empty)."""
        return [int(t) for t in self._matcher.compute_ff_tokens()]

    def consume(self, tokens: Sequence[int]) -> None:
        """Advance past generated tokens.

        Raises:
            StructuredOutputError: a token the grammar does not allow.
        """
        for token in tokens:
            if not self._matcher.consume_token(int(token)):
                raise StructuredOutputError(
                    f"token {token} is not allowed here: {self._matcher.get_error()}"
                )
            self._string = self._after(self._string, token)

    def _after(self, state: JsonStringState, token: int) -> JsonStringState:
        texts = self.vocab.texts
        return state.after(texts[token]) if 0 <= token < len(texts) else state

    # ------------------------------------------------------------------ masks

    def _allowed(self, matcher: Any, width: int) -> torch.Tensor:
        # The bitmask is unpacked here rather than with llguidance.torch, whose kernels go
        # through torch.compile (seconds of start-up on a CPU).
        words = torch.frombuffer(bytearray(matcher.compute_bitmask()), dtype=torch.int32)
        bits = (words.unsqueeze(1) >> _BIT_SHIFTS) & 1
        allowed = torch.zeros(width, dtype=torch.bool)
        n = min(width, self.vocab.size)
        allowed[:n] = bits.flatten()[:n].bool()
        return allowed

    def mask(self, logprobs: torch.Tensor) -> torch.Tensor:
        """Return ``logprobs`` with every token the grammar forbids at ``-inf``."""
        allowed = self._allowed(self._matcher, logprobs.shape[-1]).to(logprobs.device)
        if not bool(allowed.any()):
            raise StructuredOutputError(f"the grammar allows no token: {self._matcher.get_error()}")
        return logprobs.masked_fill(~allowed, float("-inf"))

    def _closing_pick(self, matcher: Any, scores: torch.Tensor, string: JsonStringState) -> int:
        allowed = self._allowed(matcher, scores.shape[-1])
        eos = [i for i in self.eos_ids if i < allowed.numel() and bool(allowed[i])]
        if eos and matcher.is_accepting():
            return eos[0]
        table = (
            self.vocab.closing_class_in_string
            if string.inside and not string.escaped
            else self.vocab.closing_class
        )
        classes = torch.full((allowed.numel(),), 4, dtype=torch.int8)
        n = min(allowed.numel(), table.numel())
        classes[:n] = table[:n]
        classes = classes.masked_fill(~allowed, 5)
        best = int(classes.min())
        if best == 5:
            raise StructuredOutputError(f"the grammar allows no token: {matcher.get_error()}")
        candidates = classes == best
        return int(torch.argmax(scores.masked_fill(~candidates, float("-inf"))))

    def closing_choice(self, logprobs: torch.Tensor) -> int:
        """The token closing mode picks: the most closing class, the model's favourite in it."""
        return self._closing_pick(self._matcher, logprobs.float().cpu(), self._string)

    def closing_cost(self, limit: int) -> int:
        """Tokens needed to reach a complete value from here in closing mode (capped at limit)."""
        matcher = self._matcher.deep_copy()
        width = self.vocab.size
        # Without the model, ties inside a closing class go to the lowest id.
        flat = -torch.arange(width, dtype=torch.float32)
        string, cost = self._string, 0
        while cost < limit and not matcher.is_stopped():
            forced = [int(t) for t in matcher.compute_ff_tokens()]
            if forced:
                matcher.consume_tokens(forced)
                for token in forced:
                    string = self._after(string, token)
                cost += len(forced)
                continue
            if matcher.is_accepting():
                break
            token = self._closing_pick(matcher, flat, string)
            if token in self.eos_ids or not matcher.consume_token(token):
                break
            string = self._after(string, token)
            cost += 1
        return cost


# --------------------------------------------------------------------------- step-engine hooks


class GrammarProcessor:
    """The grammar as a logits processor of the step engine.

    Before each token it lets the matcher consume the tokens generated since its last call,
    then allows only what the grammar does: a forced token alone (so forced text keeps the
    grammar's own tokenization), the closing choice once the remaining budget is no more than
    the cost of completing the value, else every token the grammar allows.

    Args:
        matcher: the grammar's matcher for this generation.
        budget: the tokens the caller asked for (closing mode aims to finish within it).
    """

    def __init__(self, matcher: GrammarMatcher, budget: int) -> None:
        self.matcher = matcher
        self.budget = budget
        self.closing = False
        """Closing mode: every free choice heads for the nearest complete value."""
        self._start: int | None = None
        self._consumed = 0
        self._choices = 0
        self._cost: int | None = None

    def advance(self, generated: Sequence[int]) -> None:
        """Let the matcher consume the generated tokens it has not seen yet."""
        if len(generated) > self._consumed:
            self.matcher.consume(generated[self._consumed :])
            self._consumed = len(generated)

    def __call__(self, input_ids: Sequence[int], scores: torch.Tensor) -> torch.Tensor:
        """Return ``scores`` with every token the grammar forbids (now) at ``-inf``."""
        if self._start is None:
            self._start = len(input_ids)
        self.advance(input_ids[self._start :])
        forced = self.matcher.forced()
        if forced:
            return only_token(scores, forced[0])
        self._update_closing()
        self._choices += 1
        if self.closing:
            return only_token(scores, self.matcher.closing_choice(scores))
        return self.matcher.mask(scores)

    def _update_closing(self) -> None:
        if self.closing:
            return
        remaining = self.budget - self._consumed
        # The simulation costs a mask per simulated token: rerun it only near the end of the
        # budget, and now and then in case a nested value raised the cost.
        cost = self._cost
        if cost is None or remaining <= 2 * cost + 16 or self._choices % 16 == 0:
            cost = self._cost = self.matcher.closing_cost(remaining + 1)
        self.closing = cost >= remaining


class GrammarComplete(StoppingCriterion):
    """End generation once the grammar admits nothing more (finish reason ``stop``)."""

    def __init__(self, processor: GrammarProcessor) -> None:
        self.processor = processor

    def __call__(self, progress: StepProgress) -> Stop | None:
        """Stop when the newest token completed the value."""
        self.processor.advance(progress.token_ids)
        return Stop("stop") if self.processor.matcher.done else None


def grammar_hooks(
    constraint: Constraint, tokenizer: Any, eos_ids: Iterable[int], budget: int
) -> tuple[list[LogitsProcessor], list[StoppingCriterion]]:
    """The step engine's hooks for one constrained generation: its processor and criterion.

    Args:
        constraint: the grammar.
        tokenizer: the model's tokenizer.
        eos_ids: ids that end generation.
        budget: the tokens asked for (closing mode finishes the value within it if it can).
    """
    eos = frozenset(int(i) for i in eos_ids)
    matcher = GrammarMatcher(constraint, grammar_vocab(tokenizer, eos), eos)
    processor = GrammarProcessor(matcher, budget)
    return [processor], [GrammarComplete(processor)]


def draft_constrained(
    engine: StepEngine,
    constraint: Constraint,
    *,
    max_new_tokens: int,
    step_index: int | None = None,
) -> StepDraft:
    """Draft one step of ``engine`` under ``constraint``: a whole final output (no delimiter).

    Closing mode aims to finish the value within ``max_new_tokens`` (never past the engine's
    ``max_step_tokens``) and may run :data:`CLOSING_OVERRUN` tokens past it to complete it.
    """
    budget = max(1, min(max_new_tokens, engine.settings.max_step_tokens))
    processors, criteria = grammar_hooks(
        constraint, engine.tokenizer, engine.loaded.eos_token_ids, budget
    )
    return engine.draft_step(
        max_new_tokens=budget,
        step_index=step_index,
        stop_at_delimiter=False,
        logits_processors=processors,
        stopping_criteria=criteria,
        overrun=CLOSING_OVERRUN,
    )
