"""The RankGuide LangGraph state machine: SRM step -> guard -> (LRM step) -> ... -> finish.

State is JSON-native (step records as dicts), so any checkpointer can store it; engines and
KV caches live in the pipeline's per-process session registry and are rebuilt from the
committed step records when a run resumes. Each committed step is emitted on the ``custom``
stream as a :class:`~langchain_rankguide.schemas.StepEvent` dict.

Example:
    >>> from langchain_rankguide.config import load_config
    >>> graph = build_graph(load_config())  # doctest: +SKIP
    >>> for mode, event in graph.stream({"question": "..."}, stream_mode=["custom", "values"]):
    ...     pass  # doctest: +SKIP

Per-run overrides go in ``config["configurable"]``: ``policy``, ``threshold``, ``seed``,
``steering``, ``steering_vector``, ``steering_scale``.
"""

from __future__ import annotations

import operator
import time
import uuid
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypedDict, cast

from langchain_core.runnables import RunnableConfig
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command

from langchain_rankguide.pipeline import (
    LRMFailure,
    PendingStep,
    RankGuidePipeline,
    RunOptions,
    RunSession,
)
from langchain_rankguide.routing import BudgetState, RouteDecision, apply_budget
from langchain_rankguide.schemas import FinishReason, StepEvent, StepRecord, Usage
from langchain_rankguide.signals.text import is_repeat

if TYPE_CHECKING:
    from langchain_rankguide.config import RankGuideConfig
    from langchain_rankguide.tasks import Task

NODES = ("start", "srm_step", "guard", "lrm_step", "force_answer", "finish")


def merge_usage(left: dict[str, Usage] | None, right: dict[str, Usage] | None) -> dict[str, Usage]:
    """Reducer: add per-model usage deltas."""
    total: dict[str, Usage] = {k: dict(v) for k, v in (left or {}).items()}  # type: ignore[misc]
    for model, usage in (right or {}).items():
        current = total.setdefault(model, {"prefill_tokens": 0, "decode_tokens": 0})
        current["prefill_tokens"] += usage["prefill_tokens"]
        current["decode_tokens"] += usage["decode_tokens"]
    return total


class RankGuideState(TypedDict, total=False):
    """The graph's state (JSON-native).

    Attributes:
        question: the problem (input).
        messages: chat messages to answer instead of ``question`` (input; optional).
        run_id: identifies the run's engines; the thread id when a checkpointer is used.
        steps: committed step records (``StepRecord.to_dict()``), appended per step.
        pending: the SRM draft awaiting the guard, or the escalation awaiting the LRM.
        escalations: steps written by the LRM so far.
        hysteresis_left: steps the hysteresis rule still sends to the LRM.
        generated_tokens: tokens generated for committed steps (the thinking budget).
        answer_phase: ``True`` once the end-of-thinking marker was committed.
        usage: per-model tokens prefilled and decoded (summed over the run).
        latency_s: summed step latencies, discarded drafts included.
        answer: the final answer text, ``None`` if the run ended without one.
        answer_author: who wrote the answer step.
        correct: verdict of the task's verifier when it recognises the question, else ``None``.
        stop_reason: why the run ended.
    """

    question: str
    messages: list[dict[str, Any]]
    run_id: str
    steps: Annotated[list[dict[str, Any]], operator.add]
    pending: dict[str, Any] | None
    escalations: int
    hysteresis_left: int
    generated_tokens: int
    answer_phase: bool
    usage: Annotated[dict[str, Usage], merge_usage]
    latency_s: float
    answer: str | None
    answer_author: str | None
    correct: bool | None
    stop_reason: str | None


def _usage_delta(before: dict[str, Usage], after: dict[str, Usage]) -> dict[str, Usage]:
    return {
        model: {
            "prefill_tokens": after[model]["prefill_tokens"] - before[model]["prefill_tokens"],
            "decode_tokens": after[model]["decode_tokens"] - before[model]["decode_tokens"],
        }
        for model in after
    }


def answer_of(text: str, markers: list[str]) -> str:
    """Strip an answer marker and surrounding space from an answer step."""
    stripped = text.strip()
    for marker in markers:
        if stripped.startswith(marker):
            return stripped[len(marker) :].strip()
    return stripped


def verify_answer(question: str, answer: str | None, task: Task | None) -> bool | None:
    """Grade an answer with the configured task (``None``: no task, or it does not know it)."""
    return None if task is None else task.judge_answer(question, answer)


class _Nodes:
    """Graph nodes bound to one pipeline."""

    def __init__(self, pipeline: RankGuidePipeline) -> None:
        self.pipeline = pipeline
        self.config = pipeline.config

    # ------------------------------------------------------------------ helpers

    def _session(self, state: RankGuideState, config: RunnableConfig) -> RunSession:
        options = RunOptions.from_mapping(config.get("configurable"))
        records = [StepRecord.from_dict(s) for s in state.get("steps", [])]
        return self.pipeline.session(state["run_id"], state["messages"], records, options)

    def _budget(self, config: RunnableConfig | None) -> int:
        override = RunOptions.from_mapping((config or {}).get("configurable")).thinking_budget
        return override or self.config.steps.thinking_budget

    def _max_new(self, state: RankGuideState, config: RunnableConfig) -> int:
        left = self._budget(config) - state.get("generated_tokens", 0)
        return max(1, min(self.config.steps.max_step_tokens, left))

    def _commit(
        self,
        state: RankGuideState,
        session: RunSession,
        record: StepRecord,
        usage_before: dict[str, Usage],
        budget: BudgetState,
        config: RunnableConfig,
    ) -> Command[Any]:
        session.record_committed(record)
        usage_delta = _usage_delta(usage_before, session.usage())
        total_usage = merge_usage(state.get("usage"), usage_delta)
        get_stream_writer()(StepEvent.from_step(state["run_id"], record, total_usage).to_dict())
        previous = [s["text"] for s in state.get("steps", [])]
        generated = state.get("generated_tokens", 0) + record.tokens
        answer_phase = state.get("answer_phase", False) or record.finish_reason == "end_marker"
        update: dict[str, Any] = {
            "steps": [record.to_dict()],
            "pending": None,
            "usage": usage_delta,
            "latency_s": state.get("latency_s", 0.0) + record.latency_s,
            "generated_tokens": generated,
            "escalations": budget.escalations,
            "hysteresis_left": budget.hysteresis_left,
            "answer_phase": answer_phase,
        }
        stop = self._stop_reason(
            record, previous, generated, len(previous) + 1, answer_phase, self._budget(config)
        )
        if stop is not None:
            update["stop_reason"] = stop
            unanswered = stop in ("budget", "max_steps", "repeat") and not record.is_answer
            if unanswered and self.config.steps.force_answer:
                return Command(goto="force_answer", update=update)
            return Command(goto="finish", update=update)
        return Command(goto="srm_step", update=update)

    def _stop_reason(
        self,
        record: StepRecord,
        previous: list[str],
        generated: int,
        n_steps: int,
        answer_phase: bool,
        budget: int,
    ) -> str | None:
        steps = self.config.steps
        if record.is_answer:
            return "answer"
        if record.finish_reason == "eos":
            return "eos"
        if record.finish_reason == "end_marker" and not answer_phase:
            return "end_marker"
        if generated >= budget:
            return "budget"
        if n_steps >= steps.max_steps:
            return "max_steps"
        if steps.stop_on_repeat and is_repeat(record.text, previous):
            return "repeat"
        return None

    # ------------------------------------------------------------------ nodes

    def start(self, state: RankGuideState, config: RunnableConfig) -> dict[str, Any]:
        """Set up a run: its id, messages and counters."""
        configurable = config.get("configurable") or {}
        self.pipeline.warm_up(RunOptions.from_mapping(configurable))
        run_id = state.get("run_id") or configurable.get("thread_id") or uuid.uuid4().hex
        messages = state.get("messages") or self.pipeline.messages(state.get("question", ""))
        question = state.get("question") or next(
            (m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), ""
        )
        return {
            "run_id": str(run_id),
            "question": str(question),
            "messages": messages,
            "pending": None,
            "escalations": 0,
            "hysteresis_left": 0,
            "generated_tokens": 0,
            "answer_phase": False,
            "latency_s": 0.0,
            "usage": {},
        }

    def srm_step(self, state: RankGuideState, config: RunnableConfig) -> Command[Any]:
        """Let a pre-step policy decide, else draft the next step on the SRM."""
        session = self._session(state, config)
        before = session.usage()
        index = len(state.get("steps", []))
        answer_phase = state.get("answer_phase", False)
        started = time.perf_counter()
        decision = session.probe(index)
        if decision is not None and decision.escalate:
            pending = PendingStep(
                index=index,
                text="",
                srm_ids=[],
                tokens=0,
                finish_reason="budget",
                signals={},
                signal_notes={},
                latency_s=time.perf_counter() - started,
                is_answer=False,
                answer_phase=answer_phase,
                pre_decision=decision.__dict__,
            )
            return Command(
                goto="lrm_step",
                update={
                    "pending": pending.to_dict(),
                    "usage": _usage_delta(before, session.usage()),
                },
            )
        pending = session.draft(index, self._max_new(state, config), answer_phase=answer_phase)
        pending.latency_s = time.perf_counter() - started
        return Command(
            goto="guard",
            update={"pending": pending.to_dict(), "usage": _usage_delta(before, session.usage())},
        )

    def guard(self, state: RankGuideState, config: RunnableConfig) -> Command[Any]:
        """Decide on the SRM draft: commit it, or hand the step to the LRM."""
        session = self._session(state, config)
        before = session.usage()
        pending = PendingStep.from_dict(state["pending"] or {})
        started = time.perf_counter()
        forced = None
        if pending.is_answer and self.config.steps.final_answer_by != "router":
            forced = self.config.steps.final_answer_by
        if forced is not None:
            escalate = forced == "lrm"
            decision = RouteDecision(escalate, None, None, f"final answer by {forced}")
            budget = BudgetState(
                state.get("escalations", 0) + int(escalate), state.get("hysteresis_left", 0)
            )
        else:
            decision, budget = apply_budget(
                session.decide(pending),
                BudgetState(state.get("escalations", 0), state.get("hysteresis_left", 0)),
                max_escalations=self.config.routing.max_escalations,
                hysteresis=self.config.routing.hysteresis,
            )
        pending.latency_s += time.perf_counter() - started
        if decision.escalate:
            session.reject()
            pending.pre_decision = {**decision.__dict__, "forced": forced is not None}
            return Command(
                goto="lrm_step",
                update={
                    "pending": pending.to_dict(),
                    "escalations": budget.escalations,
                    "hysteresis_left": budget.hysteresis_left,
                    "usage": _usage_delta(before, session.usage()),
                },
            )
        return self._commit_srm(
            state, session, pending, decision, budget, before, config, forced=forced is not None
        )

    def lrm_step(self, state: RankGuideState, config: RunnableConfig) -> Command[Any]:
        """The LRM writes the step (pre-step escalation, or a rejected SRM draft)."""
        session = self._session(state, config)
        before = session.usage()
        pending = PendingStep.from_dict(state["pending"] or {})
        decision = dict(pending.pre_decision or {})
        from_probe = not pending.text and pending.tokens == 0
        budget = BudgetState(state.get("escalations", 0), state.get("hysteresis_left", 0))
        if from_probe:
            # Escalated before drafting: the probe's decision still passes the budget rules.
            routed, budget = apply_budget(
                RouteDecision(
                    True,
                    decision.get("score"),
                    decision.get("failure_mode"),
                    decision.get("reason", ""),
                ),
                budget,
                max_escalations=self.config.routing.max_escalations,
                hysteresis=self.config.routing.hysteresis,
            )
            if not routed.escalate:
                return self._srm_anyway(state, session, pending, routed, budget, before, config)
        try:
            written = session.lrm_write(
                self._max_new(state, config), answer_phase=pending.answer_phase
            )
        except LRMFailure:
            raise
        except Exception as exc:
            fallback = getattr(exc, "fallback", None)
            if not fallback:
                raise
            return self._fallback(state, session, pending, budget, before, config, str(fallback))
        text = written.text
        record = StepRecord(
            index=pending.index,
            author="lrm",
            text=text,
            tokens=written.tokens,
            token_ids={"lrm": written.token_ids} if written.token_ids else {},
            signals=pending.signals,
            signal_notes=pending.signal_notes,
            decision="forced"
            if decision.get("forced") or session.router.name == "lrm"
            else "escalate",
            escalated=True,
            score=decision.get("score"),
            router=session.router.name,
            failure_mode=decision.get("failure_mode"),
            reason=str(decision.get("reason", "")),
            draft_text=pending.text or None,
            latency_s=pending.latency_s + written.latency_s,
            draft_latency_s=pending.latency_s if pending.text else 0.0,
            finish_reason=written.finish_reason,
            is_answer=pending.answer_phase or session.is_answer_text(text),
        )
        return self._commit(state, session, record, before, budget, config)

    def _srm_anyway(
        self,
        state: RankGuideState,
        session: RunSession,
        pending: PendingStep,
        decision: RouteDecision,
        budget: BudgetState,
        before: dict[str, Usage],
        config: RunnableConfig,
        fallback: str | None = None,
    ) -> Command[Any]:
        draft = session.draft(
            pending.index, self._max_new(state, config), answer_phase=pending.answer_phase
        )
        draft.latency_s += pending.latency_s
        return self._commit_srm(
            state, session, draft, decision, budget, before, config, forced=True, fallback=fallback
        )

    def _fallback(
        self,
        state: RankGuideState,
        session: RunSession,
        pending: PendingStep,
        budget: BudgetState,
        before: dict[str, Usage],
        config: RunnableConfig,
        why: str,
    ) -> Command[Any]:
        """The LRM failed under ``fallback_srm``: keep (or make) the SRM's draft, marked.

        ``why`` is the signal's ``fallback`` text (``"lrm_unavailable: <status> from <url>: ..."``).
        """
        detail = why.removeprefix("lrm_unavailable: ")
        mark = f"lrm_unavailable: {detail}"
        decision = RouteDecision(False, None, None, f"LRM unavailable: {detail}")
        if not pending.text:
            return self._srm_anyway(
                state,
                session,
                pending,
                decision,
                budget,
                before,
                config,
                fallback=mark,
            )
        session.reject()  # the draft was discarded already; it is restored from its ids
        return self._commit_srm(
            state, session, pending, decision, budget, before, config, forced=True, fallback=mark
        )

    def _commit_srm(
        self,
        state: RankGuideState,
        session: RunSession,
        pending: PendingStep,
        decision: RouteDecision,
        budget: BudgetState,
        before: dict[str, Usage],
        config: RunnableConfig,
        *,
        forced: bool = False,
        fallback: str | None = None,
    ) -> Command[Any]:
        """Commit an SRM draft as the step (accepted, forced by a rule, or kept as a fallback)."""
        started = time.perf_counter()
        ids = session.accept(pending)
        record = StepRecord(
            index=pending.index,
            author="srm",
            text=pending.text,
            tokens=pending.tokens,
            token_ids={"srm": ids},
            signals=pending.signals,
            signal_notes=pending.signal_notes,
            decision="forced" if forced else "accept",
            score=decision.score,
            router=session.router.name,
            failure_mode=decision.failure_mode,
            reason=decision.reason,
            latency_s=pending.latency_s + time.perf_counter() - started,
            finish_reason=pending.finish_reason,  # type: ignore[arg-type]
            is_answer=pending.is_answer,
            fallback=fallback,
        )
        return self._commit(state, session, record, before, budget, config)

    def force_answer(self, state: RankGuideState, config: RunnableConfig) -> Command[Any]:
        """The run stopped without an answer: write the answer marker and let the model finish.

        The answer's author is the LRM under the ``lrm`` policy or ``final_answer_by: lrm``,
        else the SRM; the step is recorded as forced, with the reason.
        """
        session = self._session(state, config)
        before = session.usage()
        started = time.perf_counter()
        markers = self.config.steps.answer_markers
        marker = f"{markers[0]} " if markers else ""
        index = len(state.get("steps", []))
        by_lrm = session.router.name == "lrm" or self.config.steps.final_answer_by == "lrm"
        cap = min(self.config.steps.max_step_tokens, self.config.steps.answer_max_tokens)
        token_ids: dict[str, list[int]] = {}
        if by_lrm:
            session.lrm.observe(marker)
            written = session.lrm_write(cap, answer_phase=True)
            text, tokens, finish = marker + written.text, written.tokens, written.finish_reason
        else:
            prefix_ids = session.srm_engine.append_text(marker) if marker else []
            draft = session.draft(index, cap, answer_phase=True)
            token_ids["srm"] = [*prefix_ids, *session.accept(draft)]
            text, tokens = marker + draft.text, draft.tokens
            finish = cast(FinishReason, draft.finish_reason)
        reason = f"run stopped ({state.get('stop_reason')}) without an answer: answer forced"
        record = StepRecord(
            index=index,
            author="lrm" if by_lrm else "srm",
            text=text,
            tokens=tokens,
            token_ids=token_ids,
            decision="forced",
            escalated=by_lrm,
            router=session.router.name,
            reason=reason,
            latency_s=time.perf_counter() - started,
            finish_reason=finish,
            is_answer=True,
        )
        session.record_committed(record)
        usage_delta = _usage_delta(before, session.usage())
        total_usage = merge_usage(state.get("usage"), usage_delta)
        get_stream_writer()(StepEvent.from_step(state["run_id"], record, total_usage).to_dict())
        return Command(
            goto="finish",
            update={
                "steps": [record.to_dict()],
                "usage": usage_delta,
                "latency_s": state.get("latency_s", 0.0) + record.latency_s,
                "generated_tokens": state.get("generated_tokens", 0) + tokens,
            },
        )

    def finish(self, state: RankGuideState, config: RunnableConfig) -> dict[str, Any]:
        """Extract the answer, check it when the task is known, and free the run's engines."""
        steps = state.get("steps", [])
        markers = list(self.config.steps.answer_markers)
        answer_step = next((s for s in reversed(steps) if s.get("is_answer")), None)
        answer = answer_of(answer_step["text"], markers) if answer_step else None
        self.pipeline.end_session(state["run_id"])
        return {
            "answer": answer,
            "answer_author": answer_step["author"] if answer_step else None,
            "correct": verify_answer(state.get("question", ""), answer, self.pipeline.grading_task),
            "stop_reason": state.get("stop_reason") or "answer",
        }


def build_graph(
    config: RankGuideConfig | RankGuidePipeline,
    *,
    checkpointer: Any = None,
) -> Any:
    """Build and compile the RankGuide graph.

    Args:
        config: a configuration (models are loaded on first use) or a ready pipeline.
        checkpointer: a LangGraph checkpointer (``InMemorySaver``, ``SqliteSaver``) for durable,
            resumable runs; ``None`` compiles without one (as ``langgraph dev`` needs).

    Returns:
        The compiled graph; input ``{"question": str}`` or ``{"messages": [...]}``.
    """
    pipeline = config if isinstance(config, RankGuidePipeline) else RankGuidePipeline(config)
    nodes = _Nodes(pipeline)
    builder = StateGraph(RankGuideState)
    builder.add_node("start", nodes.start)
    builder.add_node("srm_step", nodes.srm_step, destinations=("guard", "lrm_step"))
    builder.add_node(
        "guard", nodes.guard, destinations=("srm_step", "lrm_step", "force_answer", "finish")
    )
    builder.add_node(
        "lrm_step", nodes.lrm_step, destinations=("srm_step", "force_answer", "finish")
    )
    builder.add_node("force_answer", nodes.force_answer, destinations=("finish",))
    builder.add_node("finish", nodes.finish)
    builder.add_edge(START, "start")
    builder.add_edge("start", "srm_step")
    builder.add_edge("finish", END)
    graph = builder.compile(checkpointer=checkpointer, name="rankguide")
    graph.pipeline = pipeline  # type: ignore[attr-defined]
    return graph


StopReason = Literal["answer", "eos", "end_marker", "budget", "max_steps", "repeat"]
