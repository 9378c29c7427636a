"""One collaboration run, step by step: SRM draft, guard, LRM step, answer.

:class:`RankGuidePipeline` turns a configuration into models (loaded once through the shared
registry), a router and prompts. :class:`RunSession` holds one run's engines and implements
each stage, so the LangGraph nodes (:mod:`langchain_rankguide.graph`) run every step through
this one code path. Sessions live outside graph state (tensors and caches are not
checkpointed), one per run in a per-process registry, and are rebuilt from the committed step
records only when a run resumes in a new process (or its state was rewound).

Example:
    >>> from langchain_rankguide.config import load_config
    >>> pipeline = RankGuidePipeline(load_config())  # doctest: +SKIP
    >>> result = pipeline.solve("Start at 72. Subtract 39. What is the result?")  # doctest: +SKIP
    >>> result["answer"]  # doctest: +SKIP
    '38'
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_rankguide.answer_format import AnswerFormat
from langchain_rankguide.engine import (
    MODELS,
    CaptureSettings,
    LoadedModel,
    ModelRegistry,
    SamplingSettings,
    StepDraft,
    StepEngine,
    StepSettings,
)
from langchain_rankguide.engine.grammar import Constraint, draft_constrained
from langchain_rankguide.engine.text import encode_continuation
from langchain_rankguide.errors import InputError, RankGuideError
from langchain_rankguide.lrm import (
    LocalLRM,
    LRMBackend,
    LRMUnavailable,
    WrittenStep,
    fallback_reason,
    render_prompt,
)
from langchain_rankguide.routing import (
    RouteDecision,
    Router,
    StepContext,
    build_router,
)
from langchain_rankguide.schemas import (
    SIGNALS,
    Calibration,
    StepRecord,
    Usage,
    empty_usage,
)
from langchain_rankguide.signals import (
    ReflectionRules,
    SignalInputs,
    SignalSettings,
    compute_signals,
    required_captures,
)

if TYPE_CHECKING:
    from langchain_rankguide.config import RankGuideConfig
    from langchain_rankguide.tasks import Task


def check_question(question: Any) -> str:
    """Return ``question`` if it can be asked; raise :class:`InputError` naming the problem."""
    if not isinstance(question, str):
        raise InputError(f"the question must be text, not {type(question).__name__}")
    if not question.strip():
        raise InputError("the question is empty")
    try:
        question.encode("utf-8")
    except UnicodeEncodeError:
        # Undecodable bytes (e.g. from a non-UTF-8 command line) arrive as lone surrogates.
        raise InputError("the question is not valid text: it holds non-UTF-8 bytes") from None
    return question


def demo_calibration_path() -> Path:
    """Path of the calibration file shipped for the demo pair."""
    return Path(
        str(importlib.resources.files("langchain_rankguide") / "defaults" / "demo_calibration.json")
    )


@dataclass(frozen=True)
class RunOptions:
    """Per-run overrides of the configuration: the graph's LangGraph run context.

    Pass them as ``context=RunOptions(...)`` (or a dict of these keys) when streaming the
    graph, or to :meth:`RankGuideApp.stream <langchain_rankguide.app.RankGuideApp.stream>`.
    ``None`` keeps the configuration's value. Callers that still put these keys in
    ``config["configurable"]`` are served when they pass no context (see
    :func:`langchain_rankguide.graph.run_options`).
    """

    policy: str | None = None
    threshold: float | None = None
    seed: int | None = None
    steering: bool | None = None
    steering_vector: str | None = None
    steering_scale: float | None = None
    thinking_budget: int | None = None
    variant: str | None = None
    output: AnswerFormat | None = None
    """What the final output must be (tools offered, ``tool_choice``, ``response_format``);
    ``None``: the answer as the models write it. A mapping of its fields is accepted."""

    def __post_init__(self) -> None:
        for name in ("threshold", "steering_scale"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise InputError(f"{name} must be a finite number, not {value}")
        if self.output is not None and not isinstance(self.output, AnswerFormat):
            object.__setattr__(self, "output", AnswerFormat.from_mapping(self.output))

    @property
    def offered_tools(self) -> list[dict[str, Any]] | None:
        """The tools the models' chat templates show (``output``'s)."""
        return self.output.offered_tools if self.output is not None else None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> RunOptions:
        """Pick the known keys (unset or ``None`` ones skipped) from a mapping."""
        data = data or {}
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if data.get(k) is not None})


class RankGuidePipeline:
    """Models, router and prompts built from a configuration; a factory of :class:`RunSession`.

    Args:
        config: the validated configuration.
        registry: where models are loaded and shared (the process-wide one by default).
    """

    def __init__(self, config: RankGuideConfig, *, registry: ModelRegistry = MODELS) -> None:
        self.config = config
        self.registry = registry
        self._sessions: dict[str, RunSession] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ shared parts

    @property
    def srm(self) -> LoadedModel:
        """The SRM, loaded on first use."""
        cfg = self.config.srm
        return self.registry.get(
            cfg.model,
            dtype=cfg.dtype,
            device=cfg.device,
            threads=cfg.threads,
            trust_remote_code=cfg.trust_remote_code,
        )

    def lrm_loaded(self) -> LoadedModel:
        """The local LRM model, loaded on first use (``hf_local`` provider only)."""
        cfg = self.config.lrm
        if cfg.provider != "hf_local":
            raise RankGuideError("the LRM is remote; there is no local LRM model")
        return self.registry.get(
            cfg.model,
            dtype=cfg.dtype,
            device=cfg.device,
            threads=cfg.threads,
            trust_remote_code=cfg.trust_remote_code,
        )

    @property
    def lrm_identity(self) -> str:
        """Name of the LRM for records and model names."""
        cfg = self.config.lrm
        if cfg.provider == "hf_local":
            from langchain_rankguide.engine import resolve_model_source

            return resolve_model_source(cfg.model)[1]
        return str(cfg.model)

    @cached_property
    def calibration(self) -> Calibration | None:
        """The routing calibration named by the configuration, if any."""
        name = self.config.routing.calibration
        if name is None:
            return None
        path = demo_calibration_path() if name == "demo" else Path(name)
        return Calibration.load(path)

    @cached_property
    def grading_task(self) -> Task | None:
        """The task that grades answers, named by the configuration (``task``), if any.

        (Not ``task``: the benchmark's pipeline keeps the benchmark task under that name.)

        Raises:
            ConfigError: the configured task cannot be imported or is not a task.
        """
        from langchain_rankguide.tasks import resolve_task

        return resolve_task(self.config.task)

    @property
    def step_settings(self) -> StepSettings:
        """Where steps end, from the configuration."""
        steps = self.config.steps
        markers = list(steps.end_markers)
        if self.config.prompt.thinking_end and self.config.prompt.thinking_end not in markers:
            markers.append(self.config.prompt.thinking_end)
        return StepSettings(
            delimiter=steps.delimiter,
            max_step_tokens=steps.max_step_tokens,
            end_markers=tuple(markers),
        )

    def sampling(self, options: RunOptions) -> SamplingSettings:
        """Sampling settings with the run's seed."""
        cfg = self.config.sampling
        seed = cfg.seed if options.seed is None else options.seed
        return SamplingSettings(
            temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, seed=seed
        )

    def router(self, options: RunOptions) -> Router:
        """Build the router for a run (policy, threshold and seed may be overridden)."""
        routing = self.config.routing
        policy = options.policy or routing.policy
        calibration = self.calibration
        if calibration is not None and policy in ("rankguide", "rankguide-paper", "rank"):
            calibration.check_models(self.srm_identity)
        return build_router(
            policy,
            calibration=calibration,
            threshold=options.threshold if options.threshold is not None else routing.threshold,
            rank_signal=routing.rank_signal,
            random_rate=routing.random_rate,
            specreason_accept=routing.specreason_accept,
            revalidation_streak=routing.revalidation_streak,
            seed=routing.seed if options.seed is None else options.seed,
            variant=options.variant,
        )

    @property
    def srm_identity(self) -> str:
        """Name of the SRM for records and model names (no loading needed)."""
        from langchain_rankguide.engine import resolve_model_source

        return resolve_model_source(self.config.srm.model)[1]

    @property
    def signal_settings(self) -> SignalSettings:
        """How signals are computed, from the configuration."""
        cfg = self.config.signals
        reflection = (
            ReflectionRules(cues=tuple(cfg.reflection_cues))
            if cfg.reflection_cues is not None
            else ReflectionRules()
        )
        return SignalSettings(
            eta=cfg.energy_eta,
            eps=cfg.numerical_eps,
            centre=cfg.centre,
            reflection=reflection,
            answer_markers=tuple(self.config.steps.answer_markers),
        )

    def messages(self, question: str) -> list[dict[str, Any]]:
        """The chat messages of a question, as configured (system prompt, step instruction).

        Raises:
            InputError: the question is empty or not text.
        """
        check_question(question)
        return self.chat_messages([{"role": "user", "content": question}])

    def chat_messages(self, conversation: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """A conversation's chat dicts with the configured prompt applied.

        The system prompt and step instruction become a system message (a conversation that
        has its own system message keeps it and gets the step instruction appended), and the
        last user message goes through the user template. For a single user message this is
        :meth:`messages` of its text.
        """
        prompt = self.config.prompt
        dicts = [dict(m) for m in conversation]
        extra = "\n\n".join(p for p in (prompt.system, prompt.step_instruction) if p)
        if extra:
            if dicts and dicts[0].get("role") == "system":
                if prompt.step_instruction:
                    parts = (dicts[0].get("content"), prompt.step_instruction)
                    dicts[0]["content"] = "\n\n".join(p for p in parts if p)
            else:
                dicts.insert(0, {"role": "system", "content": extra})
        users = [i for i, m in enumerate(dicts) if m.get("role") == "user"]
        if users and prompt.user_template != "{question}":
            last = dicts[users[-1]]
            last["content"] = prompt.user_template.format(question=last.get("content", ""))
        return dicts

    @property
    def srm_tokenizer(self) -> Any:
        """The SRM's tokenizer, without loading its weights (the loaded model's when it is)."""
        cfg = self.config.srm
        return self.registry.tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)

    def srm_prompt_ids(
        self,
        messages: Sequence[Mapping[str, Any]],
        tokenizer: Any = None,
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[int]:
        """The SRM's prompt for chat messages, as token ids (what a run's SRM engine reads).

        The SRM's chat template (showing ``tools``, if any), then the assistant prefix; no
        special tokens added.
        """
        tokenizer = tokenizer if tokenizer is not None else self.srm_tokenizer
        prompt = render_prompt(
            tokenizer,
            [dict(m) for m in messages],
            tools=tools,
            **self.config.prompt.chat_template_kwargs,
        )
        prompt += self.config.prompt.assistant_prefix
        return list(tokenizer.encode(prompt, add_special_tokens=False))

    def step_tokenizer(self, author: str) -> Any:
        """The tokenizer of a step's author, or ``None`` for a remote LRM (no local one)."""
        if author == "srm":
            return self.srm_tokenizer
        cfg = self.config.lrm
        if cfg.provider != "hf_local":
            return None
        return self.registry.tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)

    def make_lrm(self, options: RunOptions) -> LRMBackend:
        """A fresh LRM backend for one run."""
        cfg = self.config.lrm
        if cfg.provider == "hf_local":
            return LocalLRM(
                self.lrm_loaded(),
                settings=self.step_settings,
                sampling=self.sampling(options),
                chat_template_kwargs=self.config.prompt.chat_template_kwargs,
                tools=options.offered_tools,
            )
        from langchain_rankguide.remote import RemoteLRM

        return RemoteLRM(
            cfg,
            delimiter=self.config.steps.delimiter,
            max_step_tokens=self.config.steps.max_step_tokens,
            end_markers=self.step_settings.end_markers,
            sampling=self.sampling(options),
            chat_template_kwargs=self.config.prompt.chat_template_kwargs,
            tools=options.offered_tools,
        )

    def check_options(self, options: RunOptions) -> None:
        """Raise :class:`InputError` for run options this pipeline cannot honour.

        Checked before a run starts, so a request that asks for steering without a vector
        fails loudly instead of running unsteered.
        """
        if options.steering and not (options.steering_vector or self.config.steering.vector):
            raise InputError(
                "steering was requested but no steering vector is configured "
                "(set steering.vector in the config or the steering_vector run option)"
            )
        if options.output is not None:
            self._check_output(options)

    def _check_output(self, options: RunOptions) -> None:
        """Refuse an answer format that cannot be honoured, naming the option at fault."""
        assert options.output is not None
        try:
            options.output.check()
            options.output.constraint()  # compiles the schemas: a bad one is the caller's fault
        except ValueError as exc:  # StructuredOutputError included
            raise InputError(str(exc)) from None
        if not options.output.constrained or self.config.lrm.provider == "hf_local":
            return
        policy = options.policy or self.config.routing.policy
        if policy == "lrm" or self.config.steps.final_answer_by == "lrm":
            option = "policy 'lrm'" if policy == "lrm" else "steps.final_answer_by: lrm"
            raise InputError(
                f"{option} makes the remote LRM write the final output, but a structured "
                "output (a forced tool_choice or a response_format) is decoded under a local "
                "grammar, which a remote LRM does not have; use final_answer_by 'router' or "
                "'srm' and another policy (the SRM then writes the final output under the "
                "grammar), or a local LRM (provider hf_local)"
            )

    def warm_up(self, options: RunOptions) -> None:
        """Load the models a run will use, so loading time never counts as step latency.

        Loading goes through the registry, so a model already loaded costs one lookup. The
        grading task is resolved here too, so a wrong ``task:`` fails before any step runs.
        """
        _ = self.grading_task
        policy = options.policy or self.config.routing.policy
        if policy != "lrm":
            _ = self.srm
        if policy != "srm" and self.config.lrm.provider == "hf_local":
            self.lrm_loaded()

    # ------------------------------------------------------------------ sessions

    def session(
        self,
        run_id: str,
        messages: list[dict[str, Any]],
        steps: Sequence[Mapping[str, Any]],
        options: RunOptions,
    ) -> RunSession:
        """Return the live session of a run, creating or rebuilding it only if needed.

        Args:
            run_id: the run (its LangGraph thread).
            messages: the run's chat messages.
            steps: the committed step records as the graph state holds them.
            options: the run's options.

        A session that holds ``steps`` (:meth:`RunSession.matches`, O(1)) is returned as it
        is. Otherwise -- a new run, a resume in another process, state rewound through a
        checkpoint -- the run's models are loaded (so loading never counts as step latency)
        and a session is rebuilt from the records.
        """
        with self._lock:
            session = self._sessions.get(run_id)
        if session is not None and session.matches(steps, options):
            return session
        # A run's nodes run one at a time, so nothing else builds this run's session meanwhile;
        # other runs keep their sessions while this one loads models.
        self.check_options(options)
        fresh = RunSession(self, messages, options)
        self.warm_up(options)
        fresh.restore([StepRecord.from_dict(dict(s)) for s in steps])
        with self._lock:
            stale = self._sessions.get(run_id)
            self._sessions[run_id] = fresh
        if stale is not None:
            stale.close()
        return fresh

    def end_session(self, run_id: str) -> None:
        """Evict a finished run's caches."""
        with self._lock:
            session = self._sessions.pop(run_id, None)
        if session is not None:
            session.close()

    def solve(self, question: str, **options: Any) -> dict[str, Any]:
        """Run the collaboration on one question; return the final graph state.

        ``options`` are :class:`RunOptions` fields. The run goes through the run stream
        (:class:`~langchain_rankguide.app.RankGuideApp`).
        """
        from langchain_rankguide.app import RankGuideApp

        return RankGuideApp(self).invoke(question, RunOptions(**options)).state


@dataclass
class PendingStep:
    """An SRM draft awaiting the guard, or a step handed to the LRM.

    The graph state holds it as :meth:`to_dict` (JSON-native, for checkpointers). ``srm_ids``
    are the ids the SRM cache holds if the draft is accepted, so a run resumed between draft
    and guard restores it exactly. ``pre_decision`` is the decision that sent the step to the
    LRM (``forced``: a rule, not the router, made it); ``None`` while the guard has not decided.
    ``final``: the draft would end a run whose output is structured, so its author writes the
    final output under the grammar instead.
    """

    index: int
    text: str
    srm_ids: list[int]
    tokens: int
    finish_reason: str
    signals: dict[str, float | None]
    signal_notes: dict[str, str]
    latency_s: float
    is_answer: bool
    answer_phase: bool = False
    pre_decision: RouteDecision | None = None
    forced: bool = False
    final: bool = False

    @property
    def drafted(self) -> bool:
        """``False`` when a pre-step policy escalated before the SRM drafted anything."""
        return bool(self.text) or self.tokens > 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-native form (``pre_decision`` as a dict that also holds ``forced``)."""
        data = {k: v for k, v in self.__dict__.items() if k != "forced"}
        if self.pre_decision is not None:
            data["pre_decision"] = {**asdict(self.pre_decision), "forced": self.forced}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PendingStep:
        """Inverse of :meth:`to_dict`."""
        values = dict(data)
        decision = dict(values.pop("pre_decision", None) or {})
        forced = bool(decision.pop("forced", False))
        pre_decision = RouteDecision(**decision) if decision else None
        return cls(**values, pre_decision=pre_decision, forced=forced)


@dataclass
class RunSession:
    """One run's engines: the SRM step engine and the LRM backend, kept in step with the trace."""

    pipeline: RankGuidePipeline
    messages: list[dict[str, Any]]
    options: RunOptions
    router: Router = field(init=False)
    _srm: StepEngine | None = field(default=None, init=False)
    _lrm: LRMBackend | None = field(default=None, init=False)
    _srm_pending: list[list[int]] = field(default_factory=list, init=False)
    _srm_prompt_ids: list[int] = field(default_factory=list, init=False)
    _live_draft: StepDraft | None = field(default=None, init=False)
    committed_count: int = field(default=0, init=False)
    _committed_records: list[StepRecord] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.router = self.pipeline.router(self.options)
        self.run_key = hashlib.sha256(
            json.dumps(self.messages, sort_keys=True, default=str).encode("utf-8")
        ).hexdigest()[:16]

    # ------------------------------------------------------------------ set-up

    @cached_property
    def signal_names(self) -> tuple[str, ...]:
        """Signals computed after each draft: the router's, plus extras or every one."""
        cfg = self.pipeline.config.signals
        if cfg.diagnostics:
            return tuple(SIGNALS)
        return tuple(dict.fromkeys([*self.router.signals, *cfg.extra]))

    def _capture(self) -> CaptureSettings:
        needs = required_captures(self.signal_names) if self.signal_names else set()
        if not needs & {"step_hidden", "window_hidden", "multi_layer", "opening_states"}:
            return CaptureSettings()
        loaded = self.pipeline.srm
        layers = self.pipeline.config.srm.signal_layers or [loaded.num_layers // 2]
        cfg = self.pipeline.config.signals
        return CaptureSettings(
            layers=tuple(layers),
            step_hidden=bool(needs & {"step_hidden", "multi_layer"}),
            window=cfg.window if "window_hidden" in needs else 0,
            opening_states=cfg.cross_step_window if "opening_states" in needs else 0,
        )

    @property
    def srm_engine(self) -> StepEngine:
        """The SRM engine, created on first use and caught up with the committed trace."""
        if self._srm is None:
            loaded = self.pipeline.srm
            self._srm_prompt_ids = self.pipeline.srm_prompt_ids(
                self.messages, loaded.tokenizer, tools=self.options.offered_tools
            )
            self._srm = StepEngine(
                loaded,
                role="srm",
                settings=self.pipeline.step_settings,
                capture=self._capture(),
                sampling=self.pipeline.sampling(self.options),
                interventions=self._interventions(loaded, len(self._srm_prompt_ids)),
            )
            self._srm.start_ids(self._srm_prompt_ids, self._srm_pending)
            self._srm_pending = []
        elif self._srm_pending:
            self._srm.append_steps(self._srm_pending)
            self._srm_pending = []
        return self._srm

    def _interventions(self, loaded: LoadedModel, prompt_length: int) -> list[Any]:
        cfg = self.pipeline.config.steering
        enabled = cfg.enabled if self.options.steering is None else self.options.steering
        vector_path = self.options.steering_vector or cfg.vector
        if not enabled or not vector_path:
            return []
        from langchain_rankguide.steering import SteeringVector, steering_intervention

        vector = SteeringVector.load(vector_path)
        scale = cfg.scale if self.options.steering_scale is None else self.options.steering_scale
        return [
            steering_intervention(
                loaded,
                vector,
                scale=scale,
                positions=cfg.positions,
                delimiter=self.pipeline.config.steps.delimiter,
                prompt_length=prompt_length,
            )
        ]

    @property
    def lrm(self) -> LRMBackend:
        """The LRM backend, created on first use."""
        if self._lrm is None:
            self._lrm = self.pipeline.make_lrm(self.options)
            self._lrm.begin(self.messages, self._committed_records)
        return self._lrm

    def restore(self, committed: Sequence[StepRecord]) -> None:
        """Queue the committed steps; engines prefill them when they are next used."""
        loaded_tokenizer = None
        self._srm_pending = []
        for record in committed:
            ids = record.token_ids.get("srm")
            if ids is None:
                loaded_tokenizer = loaded_tokenizer or self.pipeline.srm.tokenizer
                ids = encode_continuation(loaded_tokenizer, record.text)
            self._srm_pending.append(list(ids))
        self._committed_records = list(committed)
        self.committed_count = len(committed)

    def matches(self, steps: Sequence[Mapping[str, Any]], options: RunOptions) -> bool:
        """``True`` if this session is at the end of ``steps`` (state records) under ``options``.

        O(1): the step count and the last step's author and text. A session follows its run
        step by step, so these differ whenever the state is not the one it followed (a resume
        elsewhere, a rewind).
        """
        if options != self.options or self.committed_count != len(steps):
            return False
        if not steps:
            return True
        last = self._committed_records[-1]
        return last.text == steps[-1]["text"] and last.author == steps[-1]["author"]

    def close(self) -> None:
        """Release caches and connections."""
        if self._lrm is not None:
            self._lrm.close()
        self._srm = None
        self._lrm = None
        self._live_draft = None

    # ------------------------------------------------------------------ stages

    def usage(self) -> dict[str, Usage]:
        """Tokens each model prefilled and decoded so far in this process's part of the run."""
        srm = dict(self._srm.usage) if self._srm is not None else empty_usage()
        lrm = dict(self._lrm.usage) if self._lrm is not None else empty_usage()
        return {"srm": srm, "lrm": lrm}  # type: ignore[dict-item]

    def previous_texts(self) -> list[str]:
        """Texts of the committed steps."""
        return [r.text for r in self._committed_records]

    def is_answer_text(self, text: str) -> bool:
        """``True`` if ``text`` opens with a configured answer marker."""
        stripped = text.lstrip()
        return any(stripped.startswith(m) for m in self.pipeline.config.steps.answer_markers)

    @cached_property
    def output_constraint(self) -> Constraint | None:
        """The grammar the final output is written under (``None``: no structured output)."""
        output = self.options.output
        return output.constraint() if output is not None else None

    def ends_run(self, text: str, finish_reason: str, *, answer_phase: bool) -> bool:
        """``True`` for a step that would end the run with its output: the answer, or EOS."""
        return answer_phase or finish_reason == "eos" or self.is_answer_text(text)

    @property
    def lrm_is_local(self) -> bool:
        """The LRM runs in this process (so it can decode under a grammar)."""
        return self.pipeline.config.lrm.provider == "hf_local"

    def probe(self, index: int) -> RouteDecision | None:
        """Let a pre-step policy decide before the SRM drafts; ``None`` means draft first."""
        names = self.router.probe_signals
        signals: dict[str, float | None] = {}
        notes: dict[str, str] = {}
        if names:
            logprobs = self.srm_engine.next_logprobs()
            signals, notes = compute_signals(
                names, SignalInputs(first_token_logprobs=logprobs), self.pipeline.signal_settings
            )
        return self.router.decide_before(
            StepContext(index, signals=signals, notes=notes, run_key=self.run_key)
        )

    def draft(self, index: int, max_new_tokens: int, *, answer_phase: bool) -> PendingStep:
        """Draft the next step on the SRM and compute the router's signals for it."""
        started = time.perf_counter()
        engine = self.srm_engine
        draft = engine.draft_step(
            max_new_tokens=max_new_tokens, step_index=index, stop_at_delimiter=not answer_phase
        )
        self._live_draft = draft
        signals: dict[str, float | None] = {}
        notes: dict[str, str] = {}
        if self.signal_names:
            inputs = SignalInputs(
                step_hidden=draft.step_hidden,
                window_hidden=draft.window_hidden,
                opening_states=draft.opening_states,
                first_token_logprobs=draft.first_token_logprobs,
                token_logprobs=draft.token_logprobs,
                token_entropies=draft.token_entropies,
                text=draft.text,
                previous_texts=self.previous_texts(),
                n_tokens=draft.n_tokens,
            )
            signals, notes = compute_signals(
                self.signal_names, inputs, self.pipeline.signal_settings
            )
        is_answer = answer_phase or self.is_answer_text(draft.text)
        return self._pending(draft, started, signals, notes, is_answer, answer_phase)

    def _pending(
        self,
        draft: StepDraft,
        started: float,
        signals: dict[str, float | None],
        notes: dict[str, str],
        is_answer: bool,
        answer_phase: bool,
    ) -> PendingStep:
        """The SRM's live draft as a step awaiting the guard."""
        return PendingStep(
            index=draft.step_index,
            text=draft.text,
            srm_ids=draft.committed_ids(self.srm_engine.tokenizer),
            tokens=draft.n_tokens,
            finish_reason=draft.finish_reason,
            signals=signals,
            signal_notes=notes,
            latency_s=time.perf_counter() - started,
            is_answer=is_answer,
            answer_phase=answer_phase,
        )

    def draft_output(self, index: int, max_new_tokens: int) -> PendingStep:
        """Draft the final output on the SRM under :attr:`output_constraint` (no signals)."""
        constraint = self.output_constraint
        assert constraint is not None
        started = time.perf_counter()
        draft = draft_constrained(
            self.srm_engine, constraint, max_new_tokens=max_new_tokens, step_index=index
        )
        self._live_draft = draft
        return self._pending(draft, started, {}, {}, is_answer=True, answer_phase=True)

    def judge(self, text: str) -> int | None:
        """SpecReason's one-token LRM score of an SRM step (``None`` if the LRM is unavailable).

        An unavailable LRM under ``fallback_srm`` reads as "no score": the step then goes to
        the LRM, whose failure keeps the SRM draft with the step marked.
        """
        try:
            return self.lrm.judge(text)
        except RankGuideError as exc:
            if fallback_reason(exc) is not None:
                return None
            raise

    def decide(self, pending: PendingStep) -> RouteDecision:
        """Ask the router about a drafted step."""
        ctx = StepContext(
            step_index=pending.index,
            text=pending.text,
            signals=pending.signals,
            notes=pending.signal_notes,
            is_answer=pending.is_answer,
            previous_texts=self.previous_texts(),
            previous_scores=[
                r.score if r.author == "srm" else None for r in self._committed_records
            ],
            judge=self.judge,
            run_key=self.run_key,
        )
        return self.router.decide(ctx)

    def accept(self, pending: PendingStep) -> list[int]:
        """Commit the SRM draft; the LRM hears of it lazily."""
        draft = self._live_draft
        engine = self.srm_engine
        if draft is not None and draft.step_index == pending.index and draft.text == pending.text:
            ids = engine.commit(draft)
        else:
            # Resumed between draft and guard: restore the accepted draft from its ids.
            engine.append_steps([pending.srm_ids])
            ids = list(pending.srm_ids)
        self._live_draft = None
        if self._lrm is not None:
            self._lrm.observe(pending.text)
        return ids

    def withdraw_last(self) -> StepRecord:
        """Withdraw the last committed step (a rollback) and crop both models' caches.

        The SRM's cache keeps the prompt and the kept steps (only the withdrawn step's tokens
        are dropped); the LRM restarts from the kept steps, keeping the common prefix of its
        cache.
        """
        record = self._committed_records.pop()
        self.committed_count -= 1
        kept = [
            list(r.token_ids.get("srm") or self.srm_ids_of(r.text)) for r in self._committed_records
        ]
        if self._srm is not None:
            self._srm.start_ids(self._srm_prompt_ids, kept)
            self._srm_pending = []
        else:
            self._srm_pending = kept
        self._live_draft = None
        if self._lrm is not None:
            self._lrm.begin(self.messages, self._committed_records)
        return record

    def reject(self) -> None:
        """Drop the live SRM draft (if this process has it)."""
        if self._live_draft is not None and self._srm is not None:
            self._srm.discard(self._live_draft)
        self._live_draft = None

    def lrm_write(
        self, max_new_tokens: int, *, answer_phase: bool, output: bool = False
    ) -> WrittenStep | LRMUnavailable:
        """Have the LRM write the next step; the SRM hears of it lazily.

        Args:
            max_new_tokens: the step's cap.
            answer_phase: the step is the answer (no delimiter ends it).
            output: write the final output under :attr:`output_constraint` (a local LRM only).

        Returns:
            The written step, or :class:`~langchain_rankguide.lrm.LRMUnavailable` when the
            LRM failed and its failure policy lets the SRM write the step instead.
        """
        constraint = self.output_constraint if output else None
        try:
            return self.lrm.write_step(
                max_new_tokens=max_new_tokens, answer_phase=answer_phase, constraint=constraint
            )
        except RankGuideError as exc:
            reason = fallback_reason(exc)
            if reason is None:
                raise
            return LRMUnavailable(reason, exc)

    def lrm_retract(self) -> None:
        """Take back the step the LRM just wrote (it is written again as the final output)."""
        self.lrm.retract()

    def record_committed(self, record: StepRecord) -> None:
        """Note a committed step; an LRM step is queued for the SRM with the ids it will hold."""
        if record.author == "lrm":
            ids = self.srm_ids_of(record.text)
            record.token_ids["srm"] = ids
            self._srm_pending.append(ids)
        self._committed_records.append(record)
        self.committed_count += 1

    def srm_ids_of(self, text: str) -> list[int]:
        """Encode text the way the SRM engine will prefill it."""
        return encode_continuation(self.pipeline.srm.tokenizer, text)
