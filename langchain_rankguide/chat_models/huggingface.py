r"""``ChatSteeredHuggingFace``: a local Hugging Face causal LM as a LangChain chat model.

A drop-in for ``ChatHuggingFace`` that fixes what its users meet with local models: tools reach
the chat template and tool calls are parsed; tool results and trailing assistant messages are
accepted; the prompt is never echoed; per-call ``max_tokens`` / ``temperature`` / ``stop`` are
honoured (stop strings match on decoded text, so multi-token strings work); streaming runs token
by token in the calling thread; async never blocks the event loop; structured output returns
validated pydantic objects (constrained decoding); chat-template keywords pass through; nothing
is fetched from a hub; token usage is reported. On top, it can steer the model with a
RankGuide steering vector and reports per-step signals (the text split at the step delimiter).

Each reply is one stream through the step loop of the package's one
:class:`~langchain_rankguide.engine.StepEngine` (see ``chat_models/generation.py``), which keeps
steering, sampling seeds and usage accounting identical to the collaboration graph. This module
is the LangChain class: fields, per-call settings, tools and structured output; the call
keywords live in ``chat_models/call_settings.py``.

Example:
    >>> from langchain_rankguide.chat_models import ChatSteeredHuggingFace
    >>> chat = ChatSteeredHuggingFace(model="demo:srm", max_tokens=64)  # loads nothing yet
    >>> chat.invoke("Start at 12. Add 5. What is the result?").content  # doctest: +SKIP
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

from langchain_rankguide.answer_format import normalise_tool_choice, response_schema
from langchain_rankguide.chat_models._common import (
    StreamFirstChatModel,
    pop_unknown_init_kwargs,
    warn_unknown,
)
from langchain_rankguide.chat_models.call_settings import (
    CALL_KEYS,
    DEFAULT_MAX_TOKENS,
    DEFAULT_SIGNALS,
    INERT_CALL_KEYS,
    CallSettings,
    Positions,
)
from langchain_rankguide.chat_models.generation import PROVIDER, ReplyPlan, stream_reply
from langchain_rankguide.chat_models.messages import render_chat, to_chat_dicts
from langchain_rankguide.chat_models.step_signals import StepSignals
from langchain_rankguide.engine import MODELS, LoadedModel, ModelRegistry
from langchain_rankguide.schemas import SIGNALS

__all__ = [
    "CALL_KEYS",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_SIGNALS",
    "PROVIDER",
    "CallSettings",
    "ChatSteeredHuggingFace",
    "Positions",
    "StepSignals",
    "normalise_tool_choice",
    "response_schema",
]


class ChatSteeredHuggingFace(StreamFirstChatModel):
    r"""A local Hugging Face causal LM (optionally steered) as a LangChain chat model.

    Construction loads nothing: weights load on the first call, once per process, through the
    shared thread-safe model registry, from a local folder, the local Hugging Face cache or the
    embedded demo models (``demo:srm`` / ``demo:lrm``) -- never from the network.

    Per-call overrides: every name in :data:`CALL_KEYS` may be passed to ``invoke`` / ``stream``
    / ``bind`` (``model``, ``temperature``, ``max_tokens``, ``top_p``, ``top_k``, ``seed``,
    ``timeout``, ``chat_template_kwargs`` (merged), ``steering*``, ``signals``, ``tools``,
    ``tool_choice``, ``response_format``), plus ``stop``. Unknown keywords raise a warning.

    Results:
        ``content``: the reply, without the prompt; ``<think>`` reasoning goes to
        ``additional_kwargs["reasoning_content"]``; tool calls to ``tool_calls``.
        ``usage_metadata``: ``input_tokens`` = prompt tokens, ``output_tokens`` = generated
        tokens (EOS included, stop-string text included), ``total_tokens`` = their sum.
        ``response_metadata``: ``model_name``, ``model_provider`` (``"huggingface"``),
        ``finish_reason`` (``stop`` at EOS or a stop string, ``length`` at ``max_tokens``,
        ``tool_calls``, ``timeout``), ``stop`` (the matched stop string), ``usage_by_model``
        (``{"srm": {"prefill_tokens", "decode_tokens"}}``: tokens fed through the model),
        ``steps`` (per-step text, token count and :attr:`signals`) and ``steering``.

    Example:
        >>> chat = ChatSteeredHuggingFace(model="demo:srm", temperature=0, max_tokens=48)
        >>> chat.invoke("Start at 17. Add 5.", stop=["Answer"])  # doctest: +SKIP
    """

    model_config = ConfigDict(populate_by_name=True, protected_namespaces=())

    model_name: str = Field(default="demo:srm", alias="model")
    """A local model folder, a cached Hugging Face id, or ``demo:srm`` / ``demo:lrm``."""
    temperature: float = Field(default=0.0, ge=0.0)
    """Sampling temperature; 0 = greedy."""
    max_tokens: int | None = Field(default=None, ge=1)
    """Most tokens generated per call (``None``: 512, or what the context length allows)."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass."""
    top_k: int = Field(default=0, ge=0)
    """Keep the k most likely tokens (0 = off)."""
    seed: int = 0
    """Sampling seed (the reply's seed derives from it, as a step's does in the engine)."""
    stop: list[str] | None = None
    """Stop strings, matched on decoded text; the reply ends before the first one."""
    streaming: bool = False
    """Stream by default when invoked (e.g. so callbacks see tokens)."""
    timeout: float | None = Field(default=None, gt=0)
    """Wall-clock limit of one call in seconds (``finish_reason="timeout"``); ``None`` = none."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Default call keywords (any of :data:`CALL_KEYS`), applied before each call's own."""
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra chat-template variables, e.g. ``{"enable_thinking": False}``."""
    chat_template: str | None = None
    """A Jinja chat template replacing the tokenizer's (needed for a base model without one)."""
    dtype: str = "float32"
    """Weight dtype: ``auto``, ``float32``, ``bfloat16`` or ``float16``."""
    device: str = "cpu"
    """``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``."""
    threads: int | None = 1
    """CPU threads for torch (``None`` leaves torch's default)."""
    trust_remote_code: bool = False
    """Allow model code shipped with the checkpoint to run."""
    steering: bool | None = None
    """Apply the steering vector; ``None`` = on whenever :attr:`steering_vector` is set."""
    steering_vector: Any = None
    """A steering vector file (``.safetensors``) or a loaded ``SteeringVector``."""
    steering_scale: float = 1.0
    """Multiplier of the vector (positive: less reflection)."""
    steering_positions: Positions = "delimiter"
    """Where the vector is added: ``delimiter`` tokens, every ``generated`` token, or ``all``."""
    delimiter: str = "\n\n"
    """Step delimiter (per-step signals and delimiter steering)."""
    signals: list[str] = Field(default_factory=lambda: list(DEFAULT_SIGNALS))
    """Signals reported per step (registry names; empty = none)."""
    signal_layers: list[int] | None = None
    """Layers captured for hidden-state signals (``None``: the middle block)."""

    _vectors: dict[str, Any] = PrivateAttr(default_factory=dict)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _TRANSIENT: ClassVar[frozenset[str]] = frozenset({"_vectors", "_lock"})

    registry: ModelRegistry = Field(default=MODELS, exclude=True, repr=False)
    """Where models load and are shared (the process-wide registry by default)."""

    # ------------------------------------------------------------------ validation

    @model_validator(mode="before")
    @classmethod
    def _drop_unknown(cls, values: Any) -> Any:
        return pop_unknown_init_kwargs(cls, values, owner=cls.__name__)

    @field_validator("model_kwargs")
    @classmethod
    def _check_model_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = set(value) - CALL_KEYS
        if unknown:
            raise ValueError(
                f"model_kwargs: unknown key(s) {sorted(unknown)}; allowed: {sorted(CALL_KEYS)}"
            )
        return value

    @field_validator("signals")
    @classmethod
    def _check_signals(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in SIGNALS]
        if unknown:
            raise ValueError(f"unknown signal(s) {unknown}; see `rankguide signals`")
        return value

    # ------------------------------------------------------------------ LangChain hooks

    @property
    def _llm_type(self) -> str:
        return "steered-huggingface"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "steering": self._steering_on(self.steering, self.steering_vector),
            "steering_scale": self.steering_scale,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = PROVIDER
        params["ls_model_name"] = str(kwargs.get("model") or self.model_name)
        params["ls_temperature"] = kwargs.get("temperature", self.temperature)
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        if stop or self.stop:
            params["ls_stop"] = list(stop or self.stop or [])
        return params

    @classmethod
    def from_config(
        cls, path: str | Path | None = None, **overrides: Any
    ) -> ChatSteeredHuggingFace:
        """Build the chat model for the SRM of a RankGuide YAML configuration.

        Uses ``srm`` (model, dtype, device, threads, trust_remote_code, signal_layers),
        ``sampling``, ``prompt.chat_template_kwargs``, ``steps.delimiter`` and ``steering``;
        keyword arguments override any field.

        Args:
            path: the YAML file; ``None`` for the embedded demo defaults.
            **overrides: chat-model fields.
        """
        from langchain_rankguide.config import load_config

        config = load_config(path)
        fields: dict[str, Any] = {
            "model_name": config.srm.model,
            "dtype": config.srm.dtype,
            "device": config.srm.device,
            "threads": config.srm.threads,
            "trust_remote_code": config.srm.trust_remote_code,
            "signal_layers": config.srm.signal_layers,
            "temperature": config.sampling.temperature,
            "top_p": config.sampling.top_p,
            "top_k": config.sampling.top_k,
            "seed": config.sampling.seed,
            "chat_template_kwargs": dict(config.prompt.chat_template_kwargs),
            "delimiter": config.steps.delimiter,
            "steering": config.steering.enabled,
            "steering_vector": config.steering.vector,
            "steering_scale": config.steering.scale,
            "steering_positions": config.steering.positions,
        }
        if "model" in overrides:
            overrides["model_name"] = overrides.pop("model")
        return cls(**{**fields, **overrides})

    # ------------------------------------------------------------------ settings

    @staticmethod
    def _steering_on(flag: bool | None, vector: Any) -> bool:
        return bool(vector) if flag is None else bool(flag)

    def _settings(self, stop: list[str] | None, kwargs: Mapping[str, Any]) -> CallSettings:
        merged = {**self.model_kwargs, **kwargs}
        unknown = {k for k in merged if k not in CALL_KEYS and k not in INERT_CALL_KEYS} - {
            k for k in merged if k.startswith("ls_")
        }
        warn_unknown(type(self).__name__, unknown, where="unknown call keyword")

        def pick(name: str) -> Any:
            return merged[name] if merged.get(name) is not None else getattr(self, name)

        tools = merged.get("tools")
        tool_choice = normalise_tool_choice(merged.get("tool_choice"))
        response_format = merged.get("response_format")
        vector = pick("steering_vector")
        return CallSettings(
            model=str(merged.get("model") or self.model_name),
            temperature=float(pick("temperature")),
            top_p=float(pick("top_p")),
            top_k=int(pick("top_k")),
            seed=int(pick("seed")),
            max_tokens=pick("max_tokens"),
            timeout=pick("timeout"),
            stop=list(stop if stop is not None else (self.stop or [])),
            template_kwargs={
                **self.chat_template_kwargs,
                **dict(merged.get("chat_template_kwargs") or {}),
            },
            steering=self._steering_on(merged.get("steering", self.steering), vector),
            steering_vector=vector,
            steering_scale=float(pick("steering_scale")),
            steering_positions=pick("steering_positions"),
            signals=tuple(pick("signals")),
            tools=[dict(t) for t in tools] if tools else None,
            tool_choice=tool_choice,
            response_format=dict(response_format) if response_format else None,
        )

    def _load(self, spec: str) -> LoadedModel:
        return self.registry.get(
            spec,
            dtype=self.dtype,
            device=self.device,
            threads=self.threads,
            trust_remote_code=self.trust_remote_code,
        )

    def _vector(self, vector: Any) -> Any:
        from langchain_rankguide.steering import SteeringVector

        if isinstance(vector, SteeringVector):
            return vector
        key = str(Path(str(vector)).expanduser())
        with self._lock:
            if key not in self._vectors:
                self._vectors[key] = SteeringVector.load(key)
            return self._vectors[key]

    def _interventions(
        self, loaded: LoadedModel, call: CallSettings, prompt_length: int
    ) -> tuple[list[Any], dict[str, Any] | None]:
        if not call.steering:
            return [], None
        if not call.steering_vector:
            raise ValueError("steering is on but no steering_vector was given")
        from langchain_rankguide.steering import steering_intervention

        intervention = steering_intervention(
            loaded,
            self._vector(call.steering_vector),
            scale=call.steering_scale,
            positions=call.steering_positions,
            delimiter=self.delimiter,
            prompt_length=prompt_length,
        )
        info = {
            "vector": str(call.steering_vector)
            if not hasattr(call.steering_vector, "layer")
            else f"<SteeringVector layer {call.steering_vector.layer}>",
            "scale": call.steering_scale,
            "positions": call.steering_positions,
            "handle": intervention.handle,
        }
        return [intervention], info

    # ------------------------------------------------------------------ token counts

    def _count_tokenizer(self) -> Any:
        model = str(self.model_kwargs.get("model") or self.model_name)
        return self.registry.tokenizer(model, trust_remote_code=self.trust_remote_code)

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Tokens of the prompt for ``messages`` and ``tools``: a call's ``input_tokens``.

        The model's chat template renders them, with its tokenizer loaded alone (no weights,
        no hub).
        """
        extra = {"tools": [convert_to_openai_tool(t) for t in tools]} if tools else {}
        call = self._settings(None, extra)
        tokenizer = self._count_tokenizer()
        prompt = render_chat(
            tokenizer,
            to_chat_dicts(messages),
            tools=call.offered_tools,
            template_kwargs=call.template_kwargs,
            chat_template=self.chat_template,
        )
        return len(tokenizer.encode(prompt, add_special_tokens=False))

    # ------------------------------------------------------------------ generation

    def _chunks(
        self, messages: list[BaseMessage], stop: list[str] | None, **kwargs: Any
    ) -> Iterator[ChatGenerationChunk]:
        """The one generator behind invoke, stream, batch and their async forms."""
        call = self._settings(stop, kwargs)
        started = time.monotonic()
        loaded = self._load(call.model)
        tokenizer = loaded.tokenizer
        prompt = render_chat(
            tokenizer,
            to_chat_dicts(messages),
            tools=call.offered_tools,
            template_kwargs=call.template_kwargs,
            chat_template=self.chat_template,
        )
        prompt_ids = list(tokenizer.encode(prompt, add_special_tokens=False))
        interventions, steering = self._interventions(loaded, call, len(prompt_ids))
        plan = ReplyPlan(
            call=call,
            loaded=loaded,
            prompt=prompt,
            prompt_ids=prompt_ids,
            delimiter=self.delimiter,
            signal_layers=self.signal_layers,
            interventions=interventions,
            steering=steering,
            started=started,
        )
        yield from stream_reply(plan)
