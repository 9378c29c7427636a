"""The LRM side of a collaboration: one interface, a local Hugging Face implementation.

Models exchange *text*, so the LRM need not share the SRM's tokenizer: each backend renders
its own prompt with its own chat template and keeps its own context of the committed trace.
The remote (OpenAI-compatible HTTP) backend implements the same :class:`LRMBackend`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from langchain_rankguide.engine import LoadedModel, StepEngine, StepSettings
from langchain_rankguide.engine.grammar import Constraint, draft_constrained
from langchain_rankguide.engine.sampling import SamplingSettings
from langchain_rankguide.engine.templates import TemplateInfo, describe_tools
from langchain_rankguide.engine.text import encode_continuation
from langchain_rankguide.errors import RankGuideError
from langchain_rankguide.schemas import FinishReason, StepRecord, Usage

JUDGE_PROMPT = "\n\nRate the last step from 0 (wrong) to 9 (certainly right). Score: "
"""Appended (never committed) when the LRM scores an SRM step with one token (SpecReason)."""


@dataclass
class WrittenStep:
    """A step the LRM wrote.

    Attributes:
        text: the step text, ending at the delimiter end (or end marker / EOS).
        token_ids: its ids in the LRM's tokenizer (empty when a remote server does not say).
        tokens: number of generated tokens.
        finish_reason: why generation stopped.
        latency_s: wall time, retries included.
    """

    text: str
    token_ids: list[int]
    tokens: int
    finish_reason: FinishReason
    latency_s: float


@dataclass(frozen=True)
class LRMUnavailable:
    """The LRM could not write a step, and its failure policy lets the SRM write it instead.

    What :meth:`RunSession.lrm_write <langchain_rankguide.pipeline.RunSession.lrm_write>`
    returns in place of a :class:`WrittenStep` when the backend signalled a fallback.

    Attributes:
        reason: the text for the step record's ``fallback`` field
            (``"lrm_unavailable: HTTP 503 from <url>: ..."``).
        error: the backend's signal, raised again where the SRM cannot stand in.
    """

    reason: str
    error: Exception


def fallback_reason(error: BaseException) -> str | None:
    """The fallback text of a backend's "let the SRM write" signal; ``None`` for a failure.

    A backend whose failure policy allows a fallback raises a
    :class:`~langchain_rankguide.errors.RankGuideError` carrying a non-empty ``fallback`` text
    (the remote backend's :class:`~langchain_rankguide.remote.errors.LRMFallback`); any other
    error is a failure of the run.
    """
    if not isinstance(error, RankGuideError):
        return None
    fallback = getattr(error, "fallback", None)
    return str(fallback) if fallback else None


@runtime_checkable
class LRMBackend(Protocol):
    """What the collaboration needs from an LRM, local or remote."""

    identity: str

    @property
    def usage(self) -> Usage:
        """Tokens the LRM prefilled and decoded in this run."""
        ...

    def begin(
        self, prompt_messages: list[dict[str, Any]], committed: Sequence[StepRecord] = ()
    ) -> None:
        """Start (or resume) a run from chat messages and the steps committed so far."""
        ...

    def observe(self, text: str) -> None:
        """Add a step the SRM wrote to the LRM's context (it may defer the work)."""
        ...

    def write_step(
        self,
        *,
        max_new_tokens: int,
        answer_phase: bool = False,
        constraint: Constraint | None = None,
    ) -> WrittenStep:
        """Write the next step after the committed trace and commit it to the LRM's context.

        A backend that may fall back to the SRM raises an error with a ``fallback`` text
        (see :func:`fallback_reason`) and leaves its context unchanged. ``constraint``: write
        the final output under this grammar (a backend without local decoding raises).
        """
        ...

    def retract(self) -> None:
        """Take back the step :meth:`write_step` just committed (it is to be written again)."""
        ...

    def judge(self, step_text: str) -> int | None:
        """Score ``step_text`` (not committed) 0-9 with one token; ``None`` if unreadable.

        Under a fallback policy an unavailable LRM raises as :meth:`write_step` does.
        """
        ...

    def close(self) -> None:
        """Release the run's resources (caches, connections)."""
        ...


def render_prompt(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    **template_kwargs: Any,
) -> str:
    """Render chat messages with the tokenizer's chat template, ready for the assistant turn.

    A trailing assistant message is continued rather than closed, so a partial answer can
    be resumed. ``tools`` (OpenAI format) go to a template that reads ``tools``; one that does
    not gets them described in the system message.
    """
    continuing = bool(messages) and messages[-1].get("role") == "assistant"
    if tools:
        info = TemplateInfo.of(tokenizer, template_kwargs.get("chat_template"), with_tools=True)
        if info.tools:
            template_kwargs = {**template_kwargs, "tools": [dict(t) for t in tools]}
        else:
            messages = describe_tools(messages, tools)
    return str(
        tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=not continuing,
            continue_final_message=continuing,
            **template_kwargs,
        )
    )


class LocalLRM:
    """An LRM on a local Hugging Face model, running steps through the same step engine.

    Steps the SRM wrote are queued and prefilled in one forward pass just before the LRM next
    writes, so a run in which the LRM never writes never runs it.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        settings: StepSettings,
        sampling: SamplingSettings | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        self.loaded = loaded
        self.identity = loaded.identity
        self.engine = StepEngine(loaded, role="lrm", settings=settings, sampling=sampling)
        self.template_kwargs = dict(chat_template_kwargs or {})
        self.tools = [dict(t) for t in tools] if tools else None
        self._pending: list[list[int]] = []
        self._started = False
        self._prompt_ids: list[int] = []
        self._last_start: int | None = None

    @property
    def usage(self) -> Usage:
        """Tokens this LRM prefilled and decoded in the run."""
        return self.engine.usage

    def begin(
        self, prompt_messages: list[dict[str, Any]], committed: Sequence[StepRecord] = ()
    ) -> None:
        """Remember the prompt; the model runs only when the LRM first writes or judges.

        Steps of a resumed run are restored from the ids the LRM's cache held (its own steps
        as it generated them), so the resumed run continues exactly as the original.
        """
        prompt = render_prompt(
            self.loaded.tokenizer, prompt_messages, tools=self.tools, **self.template_kwargs
        )
        self._prompt_ids = list(self.loaded.tokenizer.encode(prompt, add_special_tokens=False))
        self._pending = [
            list(rec.token_ids.get("lrm") or self._encode(rec.text)) for rec in committed
        ]
        self._started = False

    def _encode(self, text: str) -> list[int]:
        return encode_continuation(self.loaded.tokenizer, text)

    def observe(self, text: str) -> None:
        """Queue a committed SRM step."""
        self._pending.append(self._encode(text))

    def _catch_up(self) -> None:
        if not self._started:
            # Prompt and steps in one sync: a cache that already holds a common prefix (a
            # rollback's restart) keeps it.
            self.engine.start_ids(self._prompt_ids, self._pending)
            self._pending.clear()
            self._started = True
        if self._pending:
            self.engine.append_steps(self._pending)
            self._pending.clear()

    def write_step(
        self,
        *,
        max_new_tokens: int,
        answer_phase: bool = False,
        constraint: Constraint | None = None,
    ) -> WrittenStep:
        """Draft and commit one step on the LRM (the final output, under ``constraint``)."""
        started = time.perf_counter()
        self._catch_up()
        self._last_start = len(self.engine.ids)
        if constraint is not None:
            draft = draft_constrained(self.engine, constraint, max_new_tokens=max_new_tokens)
        else:
            draft = self.engine.draft_step(
                max_new_tokens=max_new_tokens, stop_at_delimiter=not answer_phase
            )
        ids = self.engine.commit(draft)
        return WrittenStep(
            text=draft.text,
            token_ids=ids,
            tokens=draft.n_tokens,
            finish_reason=draft.finish_reason,
            latency_s=time.perf_counter() - started,
        )

    def retract(self) -> None:
        """Take back the step just written: the cache ends where it began again."""
        if self._last_start is None:
            raise RankGuideError("the LRM has written no step to take back")
        self.engine.uncommit(self._last_start)
        self._last_start = None

    def judge(self, step_text: str) -> int | None:
        """Read the LRM's most likely digit after the step and a scoring question."""
        self._catch_up()
        logprobs = self.engine.peek_logprobs(step_text + JUDGE_PROMPT)
        best: tuple[float, int] | None = None
        for digit in range(10):
            ids = encode_continuation(self.loaded.tokenizer, str(digit))
            if len(ids) != 1:
                continue
            value = float(logprobs[ids[0]])
            if math.isfinite(value) and (best is None or value > best[0]):
                best = (value, digit)
        return None if best is None else best[1]

    def close(self) -> None:
        """Drop the KV cache."""
        self.engine.reset()
