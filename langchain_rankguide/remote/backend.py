"""The LRM on an OpenAI-compatible server: :class:`RemoteLRM` implements ``LRMBackend``.

The backend keeps the run's context as text: the prompt and the committed steps. Each step the
LRM writes is one request that continues that text, stopped at the step delimiter; nothing is
cached client-side between requests (servers with prefix caching, such as vLLM and SGLang,
reuse the shared prefix themselves).

Two modes (``lrm.mode``):

* ``completions`` (default, exact): the prompt is rendered here -- with the LRM tokenizer's
  chat template when ``lrm.tokenizer`` / ``lrm.chat_template`` are configured (or a tokenizer
  is passed in), else with :func:`render_plain_prompt` -- and the raw text ``prompt + steps`` is
  continued with ``/completions``. The model sees exactly the trace a local LRM would.
* ``chat``: ``/chat/completions`` with the prompt messages plus the trace as a partial
  assistant message, sent with ``continue_final_message: true`` and
  ``add_generation_prompt: false`` (vLLM and SGLang honour these). A server that ignores them
  closes the assistant message and answers in a new turn: the request still works, but the
  model sees the trace as a finished message and may restart or summarise rather than continue.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from langchain_rankguide.config.models import OpenAICompatibleLRMConfig
from langchain_rankguide.engine.sampling import SamplingSettings, step_seed
from langchain_rankguide.engine.templates import describe_tools
from langchain_rankguide.engine.text import find_marker
from langchain_rankguide.errors import ModelLoadError, RankGuideError
from langchain_rankguide.lrm import JUDGE_PROMPT, WrittenStep, render_prompt
from langchain_rankguide.remote.client import CompletionResult, OpenAICompatibleClient
from langchain_rankguide.remote.errors import LRMFallback, LRMUnavailableError
from langchain_rankguide.schemas import FinishReason, StepRecord, Usage, empty_usage

if TYPE_CHECKING:
    from langchain_rankguide.engine.grammar import Constraint

_CHARS_PER_TOKEN = 4
"""Rough token estimate when neither the server nor a tokenizer gives a count."""


def render_plain_prompt(messages: Sequence[Mapping[str, Any]]) -> str:
    r"""Render chat messages without a chat template (``completions`` mode, no tokenizer).

    Each message becomes ``"<Role>: <content>"`` (``System``, ``User``, ``Assistant``, ...),
    messages are separated by a blank line, and the text ends with ``"Assistant: "`` ready for
    the reply -- or, when the last message is the assistant's, with that message's content
    left open so it is continued.

    Example:
        >>> render_plain_prompt([{"role": "user", "content": "12 + 5?"}])
        'User: 12 + 5?\n\nAssistant: '
    """
    parts: list[str] = []
    continuing = bool(messages) and messages[-1].get("role") == "assistant"
    for message in messages:
        role = str(message.get("role", "user")).capitalize()
        parts.append(f"{role}: {message.get('content') or ''}")
    if continuing:
        return "\n\n".join(parts)
    return "\n\n".join([*parts, "Assistant: "])


def render_template(
    template: str, messages: Sequence[Mapping[str, Any]], **template_kwargs: Any
) -> str:
    """Render chat messages with a Jinja chat template text, as transformers does.

    Used when ``lrm.chat_template`` is configured without ``lrm.tokenizer``. The template sees
    ``messages``, ``add_generation_prompt``, empty ``bos_token``/``eos_token`` (override them in
    ``template_kwargs``) and ``raise_exception``. A trailing assistant message is continued:
    the text is cut right after its content, as ``continue_final_message`` does.
    """
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(f"chat template error: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    continuing = bool(messages) and messages[-1].get("role") == "assistant"
    context: dict[str, Any] = {"bos_token": "", "eos_token": "", **template_kwargs}
    rendered = env.from_string(template).render(
        messages=[dict(m) for m in messages], add_generation_prompt=not continuing, **context
    )
    if continuing:
        final = str(messages[-1].get("content") or "").strip()
        if final:
            cut = rendered.rfind(final)
            if cut < 0:
                raise ValueError("the chat template does not reproduce the final message")
            rendered = rendered[: cut + len(final)]
    return rendered


class RemoteLRM:
    """An LRM behind an OpenAI-compatible HTTP server (vLLM, SGLang, Ollama, hosted APIs).

    Implements :class:`~langchain_rankguide.lrm.LRMBackend`. Steps are text: ``write_step``
    returns the step ending exactly at the end of the delimiter (servers strip the stop
    string; it is put back), at an end marker, or where the server stopped (EOS or the cap).

    Failure policy (``lrm.on_failure``) once a request has failed after its retries:

    * ``fail``: ``write_step``/``judge`` raise
      :class:`~langchain_rankguide.remote.errors.LRMUnavailableError` (URL and status named).
    * ``fallback_srm``: they raise :class:`~langchain_rankguide.remote.errors.LRMFallback`, a
      signal whose ``fallback`` text (``"lrm_unavailable: ..."``) goes on the step record while
      the SRM draft is kept.

    Either way the committed context is unchanged by a failed call: no step is lost, and the
    next call sends the same trace again.

    Args:
        config: the ``lrm`` section with ``provider: openai_compatible``.
        delimiter: the step delimiter, sent as stop string.
        max_step_tokens: most tokens of one step.
        end_markers: texts that end the thinking (e.g. ``"</think>"``), also stop strings.
        tokenizer: the LRM's tokenizer (an object with ``apply_chat_template``) for client-side
            templating and token counts; default: loaded from ``config.tokenizer`` on
            :meth:`begin` (local files only), or none.
        sampling: temperature/top-p/top-k/seed (default greedy). With sampling, each request
            carries a seed derived from the run seed and the step index, as local steps do.
        chat_template_kwargs: extra variables for the client-side chat template.
        client: a shared :class:`OpenAICompatibleClient` (its pool is then not closed by
            :meth:`close`); default: one built from ``config``.
        judge_logprobs: ask for this many top log-probs on ``judge`` requests and take the
            most likely digit among them (as the local LRM does); ``None`` reads the single
            generated token instead (works on servers without log-probs).
        tools: tools (OpenAI format) the prompt shows: through the client-side chat template
            when it reads ``tools``, else described in the system message (never sent as the
            request's ``tools``, which would make the server parse the step as a call).
    """

    def __init__(
        self,
        config: OpenAICompatibleLRMConfig,
        *,
        delimiter: str,
        max_step_tokens: int,
        end_markers: Sequence[str] = (),
        tokenizer: Any | None = None,
        sampling: SamplingSettings | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        client: OpenAICompatibleClient | None = None,
        judge_logprobs: int | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        if not delimiter:
            raise ValueError("delimiter must not be empty")
        if max_step_tokens < 1:
            raise ValueError("max_step_tokens must be >= 1")
        self.config = config
        self.identity = config.model
        self.usage: Usage = empty_usage()
        self.delimiter = delimiter
        self.max_step_tokens = max_step_tokens
        self.end_markers = tuple(m for m in end_markers if m)
        self.sampling = sampling or SamplingSettings()
        self.template_kwargs = dict(chat_template_kwargs or {})
        self.judge_logprobs = judge_logprobs
        self.tools = [dict(t) for t in tools] if tools else None
        self._tokenizer = tokenizer
        self._tokenizer_loaded = tokenizer is not None
        self._owns_client = client is None
        self._client = client or OpenAICompatibleClient.from_config(config)
        self._messages: list[dict[str, Any]] = []
        self._prompt = ""
        self._steps: list[str] = []
        self._started = False

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={self.config.model!r}, mode={self.config.mode!r}, "
            f"client={self._client!r})"
        )

    # ------------------------------------------------------------------ context

    @property
    def client(self) -> OpenAICompatibleClient:
        """The HTTP client."""
        return self._client

    @property
    def steps(self) -> tuple[str, ...]:
        """The committed step texts, in order."""
        return tuple(self._steps)

    @property
    def prompt(self) -> str:
        """The rendered prompt (``completions`` mode; empty in ``chat`` mode)."""
        return self._prompt

    @property
    def tokenizer(self) -> Any | None:
        """The LRM tokenizer, loaded from ``config.tokenizer`` on first use (or ``None``)."""
        if not self._tokenizer_loaded:
            self._tokenizer_loaded = True
            if self.config.tokenizer is not None:
                self._tokenizer = _load_tokenizer(self.config.tokenizer)
        return self._tokenizer

    def render(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """Render prompt messages to the text the ``completions`` mode continues."""
        kwargs = dict(self.template_kwargs)
        tokenizer = self.tokenizer
        if tokenizer is not None:
            if self.config.chat_template is not None:
                kwargs["chat_template"] = self.config.chat_template
            return render_prompt(tokenizer, [dict(m) for m in messages], tools=self.tools, **kwargs)
        if self.tools:
            messages = describe_tools([dict(m) for m in messages], self.tools)
        if self.config.chat_template is not None:
            return render_template(self.config.chat_template, messages, **kwargs)
        return render_plain_prompt(messages)

    def begin(
        self, prompt_messages: list[dict[str, Any]], committed: Sequence[StepRecord] = ()
    ) -> None:
        """Keep the prompt and the committed step texts; nothing is sent yet."""
        self._messages = [dict(m) for m in prompt_messages]
        if self.config.mode == "completions":
            self._prompt = self.render(self._messages)
        else:
            self._prompt = ""
            if self.tools:
                self._messages = describe_tools(self._messages, self.tools)
        self._steps = [rec.text for rec in committed]
        self._started = True

    def observe(self, text: str) -> None:
        """Append a step the SRM wrote (no request is made)."""
        self._steps.append(text)

    def _trace(self, extra: str = "") -> str:
        return "".join(self._steps) + extra

    def _chat_messages(self, extra: str = "") -> list[dict[str, Any]]:
        messages = [dict(m) for m in self._messages]
        trace = self._trace(extra)
        if not trace:
            return messages
        if messages and messages[-1].get("role") == "assistant":
            # The prompt already opens the answer (e.g. with "<think>\n"): extend it.
            messages[-1]["content"] = str(messages[-1].get("content") or "") + trace
        else:
            messages.append({"role": "assistant", "content": trace})
        return messages

    # ------------------------------------------------------------------ requests

    def _request(
        self,
        *,
        extra: str,
        max_tokens: int,
        stop: Sequence[str],
        temperature: float,
        seed: int | None,
        logprobs: int | None,
    ) -> tuple[CompletionResult, str]:
        """Send one generation request; return the result and the prompt text sent."""
        body_extras: dict[str, Any] = {}
        if temperature > 0:
            body_extras["top_p"] = self.sampling.top_p
            if self.sampling.top_k > 0:
                body_extras["top_k"] = self.sampling.top_k
            if seed is not None:
                body_extras["seed"] = seed
        extra_body = {**body_extras, **self.config.extra_body}
        try:
            if self.config.mode == "completions":
                prompt = self._prompt + self._trace(extra)
                result = self._client.completions(
                    prompt,
                    model=self.config.model,
                    max_tokens=max_tokens,
                    stop=list(stop),
                    temperature=temperature,
                    logprobs=logprobs,
                    extra_body=extra_body,
                )
                return result, prompt
            messages = self._chat_messages(extra)
            result = self._client.chat(
                messages,
                model=self.config.model,
                max_tokens=max_tokens,
                stop=list(stop),
                temperature=temperature,
                top_logprobs=logprobs,
                extra_body=extra_body,
            )
            return result, "".join(str(m.get("content") or "") for m in messages)
        except LRMUnavailableError as exc:
            if self.config.on_failure == "fallback_srm":
                raise LRMFallback(exc) from exc
            raise

    def _count(self, text: str) -> int:
        tokenizer = self.tokenizer
        if tokenizer is not None:
            return len(tokenizer.encode(text, add_special_tokens=False))
        return math.ceil(len(text) / _CHARS_PER_TOKEN)

    def _account(self, result: CompletionResult, prompt: str, text: str) -> int:
        """Add the request's usage; return the generated token count."""
        usage = result.usage
        if "prompt_tokens" in usage:
            prefill = usage["prompt_tokens"] - usage.get("cached_tokens", 0)
        else:
            prefill = self._count(prompt)
        decode = usage["completion_tokens"] if "completion_tokens" in usage else self._count(text)
        self.usage["prefill_tokens"] += max(0, prefill)
        self.usage["decode_tokens"] += decode
        return decode

    def _require_started(self) -> None:
        if not self._started:
            raise RuntimeError("call begin() before asking the LRM to write or judge")

    def _ending(self, marker: str) -> FinishReason:
        return "delimiter" if marker == self.delimiter else "end_marker"

    def _generated_text(self, result: CompletionResult) -> str:
        if not result.reasoning:
            return result.text
        if not result.text:
            return result.reasoning
        # The server split the thinking off at the end-of-thinking marker and dropped it.
        marker = self.end_markers[0] if self.end_markers else ""
        return result.reasoning + marker + result.text

    def _step_text(
        self, result: CompletionResult, stops: Sequence[str], answer_phase: bool
    ) -> tuple[str, FinishReason]:
        text = self._generated_text(result)
        found = find_marker(text, stops)
        if found is not None:
            # The server kept the stop string (``include_stop_str_in_output``) or ignored stop.
            end, marker = found
            return text[:end], self._ending(marker)
        if result.finish_reason == "length":
            return text, "max_tokens"
        if result.finish_reason != "stop":
            return text, "eos"
        if result.matched_stop_reported:
            matched = result.matched_stop
            if isinstance(matched, str) and matched in stops:
                return text + matched, self._ending(matched)
            return text, "eos"
        # The server does not say which stop ended generation (OpenAI, Ollama): while steps
        # are delimited the delimiter is by far the likeliest, in the answer phase EOS is.
        if not answer_phase:
            return text + self.delimiter, "delimiter"
        return text, "eos"

    # ------------------------------------------------------------------ LRMBackend

    def write_step(
        self,
        *,
        max_new_tokens: int,
        answer_phase: bool = False,
        constraint: Constraint | None = None,
    ) -> WrittenStep:
        """Write and commit the next step with one request.

        Args:
            max_new_tokens: the cap for this step (bounded by ``max_step_tokens``).
            answer_phase: ``True`` for the final answer after the end of thinking: the
                delimiter is then not a stop string (only the end markers are).
            constraint: not supported (a grammar is decoded locally): raises.

        Raises:
            LRMUnavailableError: the server failed after the retries (``on_failure: fail``).
            LRMFallback: the same with ``on_failure: fallback_srm``.
            RankGuideError: a ``constraint`` was given.
        """
        if constraint is not None:
            raise RankGuideError(
                "a remote LRM cannot write under a local grammar; the SRM writes a structured "
                "final output for it"
            )
        self._require_started()
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        started = time.perf_counter()
        stops = [*(() if answer_phase else (self.delimiter,)), *self.end_markers]
        greedy = self.sampling.greedy
        seed = None if greedy else step_seed(self.sampling.seed, len(self._steps), "lrm")
        result, prompt = self._request(
            extra="",
            max_tokens=min(max_new_tokens, self.max_step_tokens),
            stop=stops,
            temperature=0.0 if greedy else self.sampling.temperature,
            seed=seed,
            logprobs=None,
        )
        text, finish = self._step_text(result, stops, answer_phase)
        tokens = self._account(result, prompt, text)
        self._steps.append(text)
        return WrittenStep(
            text=text,
            token_ids=[],
            tokens=tokens,
            finish_reason=finish,
            latency_s=time.perf_counter() - started,
        )

    def retract(self) -> None:
        """Take back the step just written (the server keeps no state: only the trace changes)."""
        if not self._steps:
            raise RankGuideError("the LRM has written no step to take back")
        self._steps.pop()

    def judge(self, step_text: str) -> int | None:
        """Score ``step_text`` 0-9 with a one-token request (SpecReason); nothing is committed.

        Returns:
            The digit, or ``None`` when the reply (or its top log-probs) holds none.

        Raises:
            LRMUnavailableError: the server failed after the retries (``on_failure: fail``).
            LRMFallback: the same with ``on_failure: fallback_srm``.
        """
        self._require_started()
        result, prompt = self._request(
            extra=step_text + JUDGE_PROMPT,
            max_tokens=1,
            stop=(),
            temperature=0.0,
            seed=None,
            logprobs=self.judge_logprobs,
        )
        text = self._generated_text(result)
        self._account(result, prompt, text)
        if result.top_logprobs:
            best: tuple[float, int] | None = None
            for token, logprob in result.top_logprobs.items():
                digit = token.strip()
                if len(digit) == 1 and digit.isdigit() and math.isfinite(logprob):
                    if best is None or logprob > best[0]:
                        best = (logprob, int(digit))
            if best is not None:
                return best[1]
        stripped = text.strip()
        if stripped[:1].isdigit() and stripped[:1].isascii():
            return int(stripped[0])
        return None

    def close(self) -> None:
        """Close the connection pool (unless the client was passed in)."""
        if self._owns_client:
            self._client.close()


def _load_tokenizer(source: str) -> Any:
    """Load the LRM tokenizer from local files only (never from a hub).

    ``demo:srm`` / ``demo:lrm`` (accepted by the configuration) name the embedded demo models.
    """
    if source.startswith("demo:"):
        from langchain_rankguide.engine import resolve_model_source

        source = resolve_model_source(source)[0]
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load the LRM tokenizer from {source!r} (local files only): {exc}"
        ) from exc
