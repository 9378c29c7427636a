"""The configuration model tree: one frozen pydantic model per YAML section.

Every model forbids unknown keys and validates strictly (YAML already gives typed values, so
``threads: "2"`` or ``dtype: 16`` are errors, not silently converted). Local paths are resolved
against the config file's directory, handed in through the validation context
(``{"base_dir": Path, "source": str}``); without one they resolve against the working directory.
"""

from __future__ import annotations

import importlib.util
import os
import re
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import parse_qs, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from langchain_rankguide.config._errors import (
    fail,
    format_validation_error,
    model_classes,
    suggest,
)
from langchain_rankguide.errors import ConfigError
from langchain_rankguide.schemas import SIGNALS, PolicyName
from langchain_rankguide.tasks import TASK_SPEC_RE

CONFIG_VERSION = 1
"""The configuration format version this release reads and writes."""

DEMO_MODELS = ("demo:srm", "demo:lrm")
"""Names of the embedded demo models."""

DEMO_CALIBRATION = "demo"
"""``routing.calibration`` value naming the calibration file shipped with the package."""

DEMO_TASK = "langchain_rankguide.demo:DemoTask"
"""``task`` value naming the demo's arithmetic task (grades demo questions, no others)."""

RESERVED_TEMPLATE_KWARGS = frozenset(
    {
        "conversation",
        "messages",
        "tools",
        "documents",
        "sanitize_control_tokens",
        "chat_template",
        "tokenize",
        "add_generation_prompt",
        "continue_final_message",
        "padding",
        "truncation",
        "max_length",
        "return_tensors",
        "return_dict",
        "return_assistant_tokens_mask",
        "tokenizer_kwargs",
    }
)
"""``apply_chat_template`` arguments and template variables that ``chat_template_kwargs`` (in
a configuration or a server request) may not set: RankGuide passes them itself (``messages``,
``tools`` and ``documents`` by name), so a second value would fail with a ``TypeError``, and
a caller-supplied template (``chat_template``) is never rendered."""

_DEVICE_RE = re.compile(r"^(cpu|cuda|cuda:\d+|mps|auto)$")
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PATH_PREFIXES = ("/", "./", "../", "~")


# --------------------------------------------------------------------------- helpers


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context
    if isinstance(context, Mapping) and context.get("base_dir") is not None:
        return Path(context["base_dir"])
    return Path.cwd()


def _looks_like_path(value: str) -> bool:
    return value.startswith(_PATH_PREFIXES) or value in (".", "..") or "\\" in value


def _absolute(value: str, base_dir: Path) -> Path:
    path = Path(os.path.expanduser(value))
    if not path.is_absolute():
        path = base_dir / path
    return Path(os.path.normpath(path))


def resolve_model_ref(value: str, base_dir: Path, *, what: str = "model") -> str:
    """Resolve a model (or tokenizer) reference.

    Args:
        value: ``demo:srm``/``demo:lrm``, a local folder, or a Hugging Face id.
        base_dir: the directory relative paths resolve against.
        what: noun used in error messages.

    Returns:
        The demo name unchanged, an absolute local path, or the hub id unchanged.

    Raises:
        PydanticCustomError: a path-looking value that does not exist, an unknown demo name,
            or a value that is neither a path nor a hub id.
    """
    if value.startswith("demo:"):
        if value not in DEMO_MODELS:
            fail(f"unknown demo {what} {value!r} (known: {', '.join(DEMO_MODELS)})")
        return value
    path = _absolute(value, base_dir)
    if path.exists():
        return str(path)
    if _looks_like_path(value) or not _HUB_ID_RE.match(value):
        fail(f"path does not exist: {path}")
    return value


def _resolve_file(value: str, base_dir: Path, *, must_exist: bool) -> str:
    path = _absolute(value, base_dir)
    if must_exist and not path.exists():
        fail(f"path does not exist: {path}")
    if must_exist and path.is_dir():
        fail(f"expected a file, got a directory: {path}")
    return str(path)


def _check_signal_names(names: list[str]) -> list[str]:
    seen: set[str] = set()
    for name in names:
        if name not in SIGNALS:
            hint = suggest(name, sorted(SIGNALS))
            extra = f"; did you mean {hint!r}?" if hint else "; see `rankguide signals` or docs"
            fail(f"unknown signal {name!r}{extra}")
        if name in seen:
            fail(f"signal {name!r} is listed twice")
        seen.add(name)
    return names


def _check_module_exists(name: str) -> None:
    # find_spec imports the parent packages only, so a heavy task module is not loaded here;
    # a wrong attribute is reported when the task is first resolved.
    try:
        found = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        fail(f"no module named {name!r}")


def _check_nonempty_strings(values: list[str] | None) -> list[str] | None:
    if values is not None and any(not v for v in values):
        fail("entries must be non-empty strings")
    return values


def _check_user_template(value: str) -> str:
    """Accept a ``str.format`` template whose only placeholder is ``{question}``."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(value) if name is not None]
    except ValueError as exc:  # a lone "{" or "}"
        fail(f"is not a valid template: {exc} (write '{{{{' and '}}}}' for literal braces)")
    unknown = sorted({name for name in names if name != "question"})
    if unknown:
        shown = ", ".join("{" + name + "}" for name in unknown)
        fail(
            f"unknown placeholder {shown}; only {{question}} is filled in "
            "(write '{{' and '}}' for literal braces)"
        )
    if not names:
        fail("must contain the placeholder '{question}'")
    try:  # conversions and format specs ("{question:d}") fail only when formatted
        value.format(question="question")
    except (ValueError, TypeError) as exc:
        fail(f"is not a valid template: {exc}")
    return value


class _Section(BaseModel):
    """Base of every configuration section: frozen, strict, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        """Treat an empty sub-section (``srm:`` with nothing under it) as all defaults."""
        if not isinstance(data, Mapping):
            return data
        empty = [
            name
            for name, field in cls.model_fields.items()
            if data.get(name, 0) is None and model_classes(field.annotation)
        ]
        return {k: v for k, v in data.items() if k not in empty} if empty else data


# --------------------------------------------------------------------------- models


class _HFFields(_Section):
    """Fields shared by every locally loaded Hugging Face model."""

    model: str = Field(
        default="demo:srm",
        min_length=1,
        description=(
            "A local model folder, a Hugging Face id that is already in the local cache "
            "(nothing is downloaded), or `demo:srm` / `demo:lrm` for the embedded demo models. "
            "A value that looks like a path (starts with `/`, `./`, `../` or `~`, or exists "
            "relative to the config file) must exist; relative paths resolve against the "
            "config file's directory."
        ),
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="float32",
        description="Weight and activation dtype; `auto` uses the checkpoint's dtype.",
    )
    device: str = Field(
        default="cpu",
        description="Device to run on: `cpu`, `cuda`, `cuda:N`, `mps` or `auto` (best available).",
    )
    threads: int | None = Field(
        default=1,
        ge=1,
        description="CPU threads for torch (`torch.set_num_threads`); null leaves torch's default.",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Allow model code shipped with the checkpoint to run (Hugging Face option).",
    )

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str, info: ValidationInfo) -> str:
        return resolve_model_ref(value, _base_dir(info))

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not _DEVICE_RE.match(value):
            fail(f"must be 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto' (got {value!r})")
        return value


class HFModelConfig(_HFFields):
    """The small reasoning model (SRM): a local Hugging Face causal LM whose signals we read."""

    signal_layers: list[Annotated[int, Field(ge=0)]] | None = Field(
        default=None,
        description=(
            "Layers whose hidden states feed the signals. Layer l is the residual stream "
            "entering decoder block l, counted from 0 (Hugging Face `hidden_states[l]`). "
            "null = the middle block. Several layers enable the tensor-rank signal; the engine "
            "checks them against the model's depth when it loads."
        ),
    )

    @field_validator("signal_layers")
    @classmethod
    def _check_layers(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        if not value:
            fail("must not be empty (use null for the middle block)")
        if len(set(value)) != len(value):
            fail(f"layers must be unique (got {value})")
        return value


class _HFLocalProvider(_Section):
    """Puts ``provider`` first in :class:`HFLocalLRMConfig` (field order follows the bases)."""

    provider: Literal["hf_local"] = Field(
        default="hf_local",
        description="`hf_local`: load the LRM in this process with transformers.",
    )


class HFLocalLRMConfig(_HFFields, _HFLocalProvider):
    """The large reasoning model (LRM) loaded locally with Hugging Face transformers."""

    model: str = Field(
        default="demo:lrm",
        min_length=1,
        description=(
            "A local model folder, a Hugging Face id already in the local cache, or "
            "`demo:lrm` / `demo:srm`. Paths must exist; relative ones resolve against the config "
            "file's directory."
        ),
    )


class TimeoutsConfig(_Section):
    """HTTP timeouts for the remote LRM."""

    connect: float = Field(default=5.0, gt=0, description="Seconds to wait for a connection.")
    read: float = Field(
        default=120.0,
        gt=0,
        description="Seconds to wait for response data (per read, streaming too).",
    )
    request: float = Field(
        default=180.0,
        gt=0,
        description=(
            "Seconds one HTTP request may take in all, from connecting to the last byte of the "
            "reply however slowly it comes; then it is retried like a timeout."
        ),
    )
    step: float = Field(
        default=600.0,
        gt=0,
        description=(
            "Seconds one LRM call (a step or a judge score) may take in all: every attempt and "
            "every wait between attempts; then it fails without another attempt."
        ),
    )


class ReplyLimitConfig(_Section):
    """The size bound of a remote LRM reply, scaled by the ``max_tokens`` of its request."""

    bytes_per_token: int = Field(
        default=2048,
        ge=1,
        description="Reply bytes allowed per requested token (JSON, log-probs and SSE framing).",
    )
    base_bytes: int = Field(
        default=65536,
        ge=1024,
        description=(
            "Reply bytes allowed on top, whatever `max_tokens` is. A longer reply is cut off "
            "there and fails the request without a retry."
        ),
    )


class RetryConfig(_Section):
    """Retries of failed remote LRM calls (connection errors, 429 and 5xx)."""

    max_attempts: int = Field(
        default=3, ge=1, description="Attempts per request, the first included."
    )
    backoff_base_s: float = Field(
        default=0.5, ge=0, description="Delay before the first retry; doubles each retry."
    )
    backoff_max_s: float = Field(default=8.0, ge=0, description="Upper bound of one retry delay.")
    jitter: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Random fraction added to or taken from each delay (0..1).",
    )

    @model_validator(mode="after")
    def _check_backoff(self) -> Self:
        if self.backoff_max_s < self.backoff_base_s:
            fail(
                f"must be >= backoff_base_s ({self.backoff_base_s}) (got {self.backoff_max_s})",
                subfield="backoff_max_s",
            )
        return self


class OpenAICompatibleLRMConfig(_Section):
    """The LRM served by an OpenAI-compatible HTTP server (vLLM, SGLang, Ollama, ...)."""

    provider: Literal["openai_compatible"] = Field(
        default="openai_compatible",
        description="`openai_compatible`: call a remote server over HTTP.",
    )
    base_url: str = Field(
        description="Server URL including the API prefix, e.g. `http://localhost:8000/v1`.",
    )
    model: str = Field(min_length=1, description="Model name as the server knows it.")
    mode: Literal["completions", "chat"] = Field(
        default="completions",
        description=(
            "`completions`: the prompt is templated here and continued with `/completions` "
            "(exact step continuation); `chat`: `/chat/completions` with the server's template."
        ),
    )
    api_key_env: str | None = Field(
        default=None,
        description=(
            "NAME of the environment variable holding the API key (the key itself never goes in "
            "the file); read when a request is made. null = no key."
        ),
    )
    tokenizer: str | None = Field(
        default=None,
        description=(
            "Local folder (or cached Hugging Face id) with the LRM's tokenizer files, for "
            "client-side chat templating and token counts; relative paths resolve against the "
            "config file's directory."
        ),
    )
    chat_template: str | None = Field(
        default=None,
        description="Jinja chat template text overriding the tokenizer's own.",
    )
    timeouts: TimeoutsConfig = Field(
        default_factory=TimeoutsConfig, description="HTTP timeouts (seconds)."
    )
    retries: RetryConfig = Field(
        default_factory=RetryConfig, description="Retry policy for failed requests."
    )
    reply_limit: ReplyLimitConfig = Field(
        default_factory=ReplyLimitConfig,
        description="Largest reply: `base_bytes + bytes_per_token * max_tokens` bytes.",
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Vendor extras merged into every request body, e.g. `chat_template_kwargs` or "
            "`continue_final_message` for vLLM."
        ),
    )
    on_failure: Literal["fail", "fallback_srm"] = Field(
        default="fail",
        description=(
            "When the server stays unreachable after retries: `fail` the run, or let the SRM "
            "write the step (`fallback_srm`, recorded on the step)."
        ),
    )

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            fail(f"must be an http:// or https:// URL (got {value!r})")
        return value.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _check_env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME_RE.match(value):
            fail(
                "must be the NAME of an environment variable (letters, digits, underscores), "
                "not the key itself"
            )
        return value

    @field_validator("tokenizer")
    @classmethod
    def _check_tokenizer(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        return resolve_model_ref(value, _base_dir(info), what="tokenizer")

    def api_key(self, *, required: bool = True) -> SecretStr | None:
        """Read the API key from the environment variable named by ``api_key_env``.

        The key is read at each call and never stored on the configuration.

        Args:
            required: raise when ``api_key_env`` names a variable that is unset or empty;
                with ``False`` such a variable gives ``None``.

        Returns:
            The key, or ``None`` when ``api_key_env`` is null (or unset and not required).

        Raises:
            ConfigError: the named variable is unset or empty and ``required`` is true.
        """
        if self.api_key_env is None:
            return None
        value = os.environ.get(self.api_key_env)
        if not value:
            if required:
                raise ConfigError(
                    f"lrm.api_key_env: environment variable {self.api_key_env!r} is not set; "
                    "export it with the API key of the LRM server"
                )
            return None
        return SecretStr(value)


LRMConfig = Annotated[HFLocalLRMConfig | OpenAICompatibleLRMConfig, Field(discriminator="provider")]
"""The LRM section: a union keyed on ``provider``."""


class PromptConfig(_Section):
    """How the question is turned into the models' prompt."""

    system: str | None = Field(default=None, description="System prompt; null for none.")
    user_template: str = Field(
        default="{question}",
        description="User message template; `{question}` is replaced by the question.",
    )
    step_instruction: str | None = Field(
        default=None,
        description=(
            "Text appended to the system prompt asking for steps separated by blank lines; "
            "null adds nothing (the demo models need none)."
        ),
    )
    thinking_start: str | None = Field(
        default=None,
        description="Marker that opens the thinking section (e.g. `<think>`); null if none.",
    )
    thinking_end: str | None = Field(
        default=None,
        description="Marker that closes the thinking section (e.g. `</think>`); null if none.",
    )
    assistant_prefix: str = Field(
        default="", description="Text the assistant turn starts with, after the chat template."
    )
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments for `apply_chat_template`, e.g. `{enable_thinking: true}`.",
    )

    @field_validator("user_template")
    @classmethod
    def _check_template(cls, value: str) -> str:
        return _check_user_template(value)

    @field_validator("chat_template_kwargs")
    @classmethod
    def _check_template_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        reserved = sorted(set(value) & RESERVED_TEMPLATE_KWARGS)
        if reserved:
            fail(
                f"may not set {', '.join(repr(k) for k in reserved)}: RankGuide passes these to "
                "apply_chat_template itself"
            )
        return value


class StepsConfig(_Section):
    """What a step is and when a run stops."""

    delimiter: str = Field(
        default="\n\n",
        min_length=1,
        description="Text that ends a step, matched on decoded text (not on one token id).",
    )
    max_step_tokens: int = Field(
        default=64, ge=1, description="Most tokens generated for one step."
    )
    thinking_budget: int = Field(
        default=1024, ge=1, description="Most tokens generated in one run, all steps together."
    )
    max_steps: int = Field(default=48, ge=1, description="Most steps in one run.")
    end_markers: list[str] = Field(
        default_factory=list,
        description="Texts that end the thinking (e.g. `</think>`); the step stops there.",
    )
    answer_markers: list[str] = Field(
        default_factory=lambda: ["Answer:"],
        description="A step starting with one of these is the final answer and ends the run.",
    )
    final_answer_by: Literal["router", "srm", "lrm"] = Field(
        default="router",
        description=(
            "Who writes the final answer: `router` (a step like any other, routed by the guard), "
            "or always the `srm` / the `lrm`. A structured output (a forced tool call, a "
            "response format) is written by this author under its grammar; `lrm` with a remote "
            "LRM refuses one (it has no local grammar)."
        ),
    )
    stop_on_repeat: bool = Field(
        default=True, description="Stop when a step repeats the previous one verbatim."
    )
    force_answer: bool = Field(
        default=False,
        description=(
            "When a run stops without an answer (budget, step limit or a repeat), write the first "
            "answer marker and let the answer's author finish it (ChatRankGuide turns this on)."
        ),
    )
    answer_max_tokens: int = Field(
        default=16, ge=1, description="Cap on the tokens of a forced answer (`force_answer`)."
    )

    @field_validator("end_markers", "answer_markers")
    @classmethod
    def _check_markers(cls, value: list[str]) -> list[str]:
        _check_nonempty_strings(value)
        return value


class SignalsConfig(_Section):
    """Which hidden-state and text signals are computed, and their parameters."""

    window: int = Field(
        default=16, ge=2, description="W: tokens in the window-rank signals (`rank.window.*`)."
    )
    cross_step_window: int = Field(
        default=8,
        ge=2,
        description="Steps whose opening states form the cross-step rank (`rank.cross_step`).",
    )
    diagnostics: bool = Field(
        default=False,
        description="Compute every signal on every step, not only those the router needs (slower).",
    )
    extra: list[str] = Field(
        default_factory=list,
        description=(
            "More signals to compute on the hot path, by registry name (e.g. `rank.stable`)."
        ),
    )
    energy_eta: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description="Energy fraction eta of the energy rank (0 < eta <= 1).",
    )
    numerical_eps: float = Field(
        default=1e-3,
        gt=0,
        description="Relative cut-off eps of the numerical rank (s_i > eps * s_1).",
    )
    centre: bool = Field(default=True, description="Subtract the token mean before taking ranks.")
    reflection_cues: list[str] | None = Field(
        default=None,
        description=(
            "Phrases that mark a reflection step (case-insensitive, at the step's start); "
            "null = the built-in rules."
        ),
    )

    @field_validator("extra")
    @classmethod
    def _check_extra(cls, value: list[str]) -> list[str]:
        return _check_signal_names(value)

    @field_validator("reflection_cues")
    @classmethod
    def _check_cues(cls, value: list[str] | None) -> list[str] | None:
        return _check_nonempty_strings(value)


class RoutingConfig(_Section):
    """Which steps are escalated to the LRM."""

    policy: PolicyName = Field(
        default="rankguide",
        description=(
            "Routing policy: `rankguide` (router v2: the calibrated score of the drafted step "
            "with its escalation rule -- running risk, rollback), `rankguide-paper` (the "
            "paper's rank + first-token entropy combination, one step at a time), `rank` "
            "(one rank signal), `entropy` (first-token entropy, GlimpRouter), `specreason` "
            "(LRM scores each step), `keyword` (reflection cues), `random`, or always `srm` / "
            "`lrm`."
        ),
    )
    threshold: float | None = Field(
        default=None,
        description="Escalation threshold; null = from the calibration file or the policy default.",
    )
    calibration: str | None = Field(
        default=DEMO_CALIBRATION,
        description=(
            "Calibration JSON file (relative to the config file); `demo` for the one shipped "
            "for the demo models; null for none."
        ),
    )
    rank_signal: str = Field(
        default="rank.window.effective",
        description="Signal used by the `rank` policy (registry name).",
    )
    max_escalations: int | None = Field(
        default=None, ge=0, description="Most escalated steps per run; null = unlimited."
    )
    hysteresis: int = Field(
        default=0, ge=0, description="After an escalation, the next N steps also go to the LRM."
    )
    max_rollbacks: int = Field(
        default=1,
        ge=0,
        description="Most rollbacks per run (a flag that withdraws the previous SRM step so the "
        "LRM rewrites it); 0 = never. Only rules fitted with a rollback threshold ask for one.",
    )
    random_rate: float = Field(
        default=0.25, ge=0, le=1, description="Escalation probability of the `random` policy."
    )
    specreason_accept: int = Field(
        default=7,
        ge=0,
        le=9,
        description="`specreason`: accept the SRM step if the LRM's 0-9 score >= this.",
    )
    revalidation_streak: int = Field(
        default=3,
        ge=2,
        description="Consecutive reflection steps that count as heavy revalidation.",
    )
    seed: int = Field(default=0, description="Seed of the `random` policy.")

    @field_validator("rank_signal")
    @classmethod
    def _check_rank_signal(cls, value: str) -> str:
        _check_signal_names([value])
        return value

    @field_validator("calibration")
    @classmethod
    def _check_calibration(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or value == DEMO_CALIBRATION:
            return value
        if not value:
            fail("must not be empty (use null for none)")
        return _resolve_file(value, _base_dir(info), must_exist=True)


class SteeringConfig(_Section):
    """Activation steering of the SRM (SEAL-style vector added at delimiter positions)."""

    enabled: bool = Field(default=False, description="Apply the steering vector to the SRM.")
    vector: str | None = Field(
        default=None,
        description=(
            "Path to the steering vector (`.safetensors`, relative to the config file); "
            "required when enabled."
        ),
    )
    scale: float = Field(
        default=1.0,
        description="Multiplier of the vector; positive pushes toward execution thoughts.",
    )
    positions: Literal["delimiter", "generated", "all"] = Field(
        default="delimiter",
        description=(
            "Where the vector is added: at `delimiter` tokens only, at every `generated` token, "
            "or at `all` positions including the prompt."
        ),
    )

    @field_validator("vector")
    @classmethod
    def _check_vector(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if not value:
            fail("must not be empty (use null for none)")
        return _resolve_file(value, _base_dir(info), must_exist=True)

    @model_validator(mode="after")
    def _check_enabled(self) -> Self:
        if self.enabled and self.vector is None:
            fail("is required when steering.enabled is true", subfield="vector")
        return self


class SamplingConfig(_Section):
    """Decoding settings shared by both models."""

    temperature: float = Field(default=0.0, ge=0, description="Sampling temperature; 0 = greedy.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling mass (0 < p <= 1).")
    top_k: int = Field(default=0, ge=0, description="Keep the k most likely tokens; 0 = off.")
    seed: int = Field(
        default=0,
        description="Run seed; each step's seed derives from it, the step index and the model.",
    )


POSTGRES_URL_ENV = "RANKGUIDE_POSTGRES_URL"
"""The environment variable a PostgreSQL checkpointer reads its URL from by default."""

POSTGRES_SCHEMES = ("postgresql", "postgres")
"""URL schemes libpq reads as a PostgreSQL connection URL."""


def postgres_url_problem(url: str) -> str | None:
    """What is wrong with a PostgreSQL URL, or ``None``; the message never quotes the URL.

    Example:
        >>> postgres_url_problem("postgresql://rankguide@db.internal:5432/runs") is None
        True
        >>> postgres_url_problem("mysql://db/runs")
        'must be a postgresql:// URL (postgresql://USER@HOST:PORT/DBNAME)'
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in POSTGRES_SCHEMES or any(ord(c) < 32 for c in url):
        return "must be a postgresql:// URL (postgresql://USER@HOST:PORT/DBNAME)"
    return None


def _url_has_password(url: str) -> bool:
    parts = urlsplit(url.strip())
    return parts.password is not None or "password" in parse_qs(parts.query)


class CheckpointConfig(_Section):
    """Durable runs: where the LangGraph checkpointer keeps each run's state."""

    backend: Literal["sqlite", "postgres"] | None = Field(
        default=None,
        description=(
            "`sqlite` (one machine, one writer process) or `postgres` (shared by processes and "
            "machines: `rankguide serve --workers N`); null picks `sqlite` when `sqlite_path` "
            "is set, `postgres` when `postgres_url` is set, else runs stay in memory."
        ),
    )
    sqlite_path: str | None = Field(
        default=None,
        description=(
            "SQLite file for the LangGraph checkpointer (relative to the config file); "
            "null keeps runs in memory."
        ),
    )
    postgres_url: str | None = Field(
        default=None,
        description=(
            "PostgreSQL URL without a password (`postgresql://USER@HOST:5432/DBNAME`; libpq "
            "reads the password from `PGPASSWORD` or `~/.pgpass`); null reads the whole URL "
            "from the variable `postgres_url_env` names."
        ),
    )
    postgres_url_env: str = Field(
        default=POSTGRES_URL_ENV,
        description=(
            "NAME of the environment variable holding the PostgreSQL URL (password included) "
            "when `backend` is `postgres` and `postgres_url` is null."
        ),
    )

    @field_validator("sqlite_path")
    @classmethod
    def _check_sqlite(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if not value:
            fail("must not be empty (use null for none)")
        return _resolve_file(value, _base_dir(info), must_exist=False)

    @field_validator("postgres_url")
    @classmethod
    def _check_postgres_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        problem = postgres_url_problem(value)
        if problem:
            fail(problem)
        if _url_has_password(value):
            fail(
                "holds a password; secrets must not be written in the config file: put the "
                "whole URL in the environment variable checkpoint.postgres_url_env names, or "
                "the password in PGPASSWORD or ~/.pgpass"
            )
        return value.strip()

    @field_validator("postgres_url_env")
    @classmethod
    def _check_env_name(cls, value: str) -> str:
        if not _ENV_NAME_RE.match(value):
            fail(
                "must be the NAME of an environment variable (letters, digits, underscores), "
                "not the URL itself"
            )
        return value

    @model_validator(mode="after")
    def _check_one_store(self) -> Self:
        if self.sqlite_path is not None and self.postgres_url is not None:
            fail("set sqlite_path or postgres_url, not both", subfield="postgres_url")
        if self.backend == "sqlite" and self.sqlite_path is None:
            fail("is required when checkpoint.backend is sqlite", subfield="sqlite_path")
        if self.backend == "sqlite" and self.postgres_url is not None:
            fail("must be null when checkpoint.backend is sqlite", subfield="postgres_url")
        if self.backend == "postgres" and self.sqlite_path is not None:
            fail("must be null when checkpoint.backend is postgres", subfield="sqlite_path")
        return self

    @property
    def store(self) -> Literal["sqlite", "postgres"] | None:
        """The checkpoint store in use: ``backend``, or the one a path or URL implies."""
        if self.backend is not None:
            return self.backend
        if self.sqlite_path is not None:
            return "sqlite"
        return "postgres" if self.postgres_url is not None else None


def _default_lrm() -> HFLocalLRMConfig:
    return HFLocalLRMConfig()


class RankGuideConfig(_Section):
    """The whole configuration: one section per concern.

    Validate data with :meth:`model_validate` (or :func:`parse_config`); errors are raised as
    one-line :class:`~langchain_rankguide.errors.ConfigError` messages naming the field path.
    (Keyword construction, ``RankGuideConfig(srm=...)``, raises pydantic's own error; it is kept
    untouched because pydantic routes validation through ``__init__`` when it is overridden.)

    Example:
        >>> cfg = RankGuideConfig.model_validate({"routing": {"policy": "srm"}})
        >>> cfg.routing.policy, cfg.srm.model
        ('srm', 'demo:srm')
    """

    version: int = Field(
        default=CONFIG_VERSION,
        description=f"Configuration format version (this release reads {CONFIG_VERSION}).",
    )
    task: str | None = Field(
        default=DEMO_TASK,
        description=(
            "Task that grades each run's answer (`correct` in results), as `module:attribute` "
            "naming a `langchain_rankguide.tasks.Task` subclass, instance or factory; questions "
            "the task does not know stay ungraded. The default grades the demo's arithmetic "
            "questions; null grades nothing."
        ),
    )
    srm: HFModelConfig = Field(
        default_factory=HFModelConfig,
        description="The small reasoning model (SRM): drafts every step; its signals are read.",
    )
    lrm: LRMConfig = Field(
        default_factory=_default_lrm,
        description=(
            "The large reasoning model (LRM): writes the escalated steps. `provider` selects "
            "`hf_local` (default when omitted) or `openai_compatible`."
        ),
    )
    prompt: PromptConfig = Field(default_factory=PromptConfig, description="Prompt construction.")
    steps: StepsConfig = Field(default_factory=StepsConfig, description="Steps and run limits.")
    signals: SignalsConfig = Field(
        default_factory=SignalsConfig, description="Signals computed from the SRM."
    )
    routing: RoutingConfig = Field(
        default_factory=RoutingConfig, description="Which steps go to the LRM."
    )
    steering: SteeringConfig = Field(
        default_factory=SteeringConfig, description="Activation steering of the SRM."
    )
    sampling: SamplingConfig = Field(
        default_factory=SamplingConfig, description="Decoding settings."
    )
    checkpoint: CheckpointConfig = Field(
        default_factory=CheckpointConfig, description="Durable runs (LangGraph checkpointer)."
    )

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Self:
        """Validate ``obj``; problems are raised as one :class:`ConfigError` line.

        Args:
            obj: the configuration mapping.
            **kwargs: as for :meth:`pydantic.BaseModel.model_validate`; ``context`` may hold
                ``base_dir`` (where relative paths resolve) and ``source`` (the name used in
                error messages).

        Returns:
            The validated configuration.

        Raises:
            ConfigError: the data is invalid.
        """
        context = kwargs.get("context")
        source = "<dict>"
        if isinstance(context, Mapping) and context.get("source"):
            source = str(context["source"])
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, source, cls)) from None

    @field_validator("version")
    @classmethod
    def _check_version(cls, value: int) -> int:
        if value != CONFIG_VERSION:
            fail(
                f"unsupported config version {value} (this release reads version {CONFIG_VERSION})"
            )
        return value

    @field_validator("task")
    @classmethod
    def _check_task(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not TASK_SPEC_RE.match(value):
            fail(
                "must be 'module:attribute' (e.g. 'langchain_rankguide.demo:DemoTask'), "
                f"got {value!r}"
            )
        _check_module_exists(value.split(":", 1)[0])
        return value

    @field_validator("lrm", mode="before")
    @classmethod
    def _default_provider(cls, value: Any) -> Any:
        if isinstance(value, Mapping) and "provider" not in value:
            return {**value, "provider": "hf_local"}
        return value

    def to_yaml(self, *, comments: bool = False) -> str:
        """Render the configuration as YAML that :func:`load_config` reads back to an equal config.

        Args:
            comments: precede every field with its description as a comment.

        Returns:
            The YAML text.
        """
        from langchain_rankguide.config.render import to_yaml_text

        return to_yaml_text(self, comments=comments)
