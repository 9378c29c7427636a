"""The RankGuide LangGraph state machine: SRM step -> guard -> (LRM step) -> ... -> finish.

State is JSON-native (step records as dicts), so any checkpointer can store it; engines and
KV caches live in the pipeline's per-process session registry, one session per run, rebuilt
from the committed step records only when a run resumes elsewhere. Each committed step is
emitted on the ``custom`` stream as a :class:`~langchain_rankguide.schemas.StepEvent` dict.

It is a chat graph too (:mod:`langchain_rankguide.graph_messages`): given ``messages`` (as a
``MessagesState`` graph) it appends its reply as an ``AIMessage``, and ``stream_mode="messages"``
streams each committed step's tokens and the answer's. Input and output schemas
(:class:`RankGuideInput`, :class:`RankGuideState`) are what ``langgraph dev`` shows.

Per-run options are the graph's LangGraph run context (``context_schema`` is
:class:`~langchain_rankguide.pipeline.RunOptions`); every node reads them through
:func:`run_options`. Applications usually run questions through the run stream,
:class:`~langchain_rankguide.app.RankGuideApp`, which owns a graph and a pipeline; the
compiled graph is for LangGraph itself (``langgraph dev``, subgraphs, custom streaming).

Example:
    >>> from langchain_rankguide.config import load_config
    >>> graph = build_graph(load_config())  # doctest: +SKIP
    >>> for mode, event in graph.stream(
    ...     {"question": "..."}, context=RunOptions(policy="entropy"),
    ...     stream_mode=["custom", "values"],
    ... ):
    ...     pass  # doctest: +SKIP
"""

from __future__ import annotations

import operator
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Annotated, Any, cast

from langchain_core.messages import AIMessage, AnyMessage
from langchain_core.runnables import RunnableConfig
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.runtime import get_runtime
from langgraph.types import Command, Overwrite

# typing_extensions' TypedDict: pydantic, which writes LangGraph's input and output JSON schemas
# (Studio's input form), rejects typing's before Python 3.12.
from typing_extensions import TypedDict

from langchain_rankguide import graph_messages as chat
from langchain_rankguide.lrm import LRMUnavailable, WrittenStep
from langchain_rankguide.pipeline import PendingStep, RankGuidePipeline, RunOptions, RunSession
from langchain_rankguide.routing import BudgetState, RouteDecision, apply_budget
from langchain_rankguide.schemas import (
    FinishReason,
    StepEvent,
    StepRecord,
    Usage,
    merge_usage,
    usage_delta,
)
from langchain_rankguide.signals.text import is_repeat

if TYPE_CHECKING:
    from langchain_rankguide.config import RankGuideConfig
    from langchain_rankguide.tasks import Task


WITHDRAW = "withdraw_from"
"""Key of the marker that rewinds the step list to its first ``n`` records (a rollback)."""


def add_steps(
    left: list[dict[str, Any]] | None, right: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """The step list's reducer: append records; a ``{"withdraw_from": n}`` marker keeps ``n``.

    Example:
        >>> add_steps([{"index": 0}, {"index": 1}], [{"withdraw_from": 1}, {"index": 1}])
        [{'index': 0}, {'index': 1}]
    """
    steps = list(left or [])
    for item in right or []:
        if WITHDRAW in item:
            del steps[int(item[WITHDRAW]) :]
        else:
            steps.append(item)
    return steps


class RankGuideInput(TypedDict, total=False):
    """What a run takes: a question, a conversation, or prompt messages (one is enough).

    Attributes:
        question: the problem.
        messages: a conversation to answer, as in LangGraph's ``MessagesState`` (tuples,
            dicts or message objects; ``add_messages``): its last user message is the
            question, and the configured prompt (system prompt, step instruction, user
            template) applies. On a checkpointed thread the conversation goes on: a new user
            message is answered with the earlier turns as context.
        prompt: the models' chat messages as role/content dicts, used as they are (for callers
            that shape the prompt themselves: the chat models, the server).
        run_id: identifies the run's engines (default: the thread id, else a fresh one).
    """

    question: str
    messages: Annotated[list[AnyMessage], add_messages]
    prompt: list[dict[str, Any]] | None
    run_id: str


class RankGuideState(RankGuideInput, total=False):
    """The graph's state: JSON-native but for a conversation's messages.

    LangGraph's checkpointers store messages as they are, so any checkpointer still can.

    Attributes:
        question: the problem (the last user message for a conversation).
        messages: the conversation; a run that answers it appends its reply (an ``AIMessage``).
        prompt: the models' chat messages for the run under way (``None`` once it finished).
        run_id: identifies the run's engines; the thread id when a checkpointer is used.
        reply_id: the id of the run's reply message (its streamed chunks share it).
        steps: committed step records (``StepRecord.to_dict()``), appended per step
            (:func:`add_steps`; a rollback rewinds them).
        withdrawn: step records a rollback withdrew, in the order they were withdrawn.
        rollbacks: rollbacks so far (``routing.max_rollbacks`` bounds them).
        pending: the SRM draft awaiting the guard, or the escalation awaiting the LRM
            (``PendingStep.to_dict()``).
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

    reply_id: str
    steps: Annotated[list[dict[str, Any]], add_steps]
    withdrawn: Annotated[list[dict[str, Any]], operator.add]
    rollbacks: int
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


def run_options(config: RunnableConfig | None = None) -> RunOptions:
    """The options of the run being executed: its LangGraph run context.

    Call it from inside a node. The context is a :class:`RunOptions`, or a mapping of its
    fields (a parent graph's dict context, when this graph runs as its subgraph). A run
    without either -- no context, or a parent graph's context of another type -- reads the
    option keys from ``config["configurable"]`` instead: the channel that preceded run
    contexts, kept so that existing callers still work. A run given options as its context
    never looks there.
    """
    context = get_runtime(RunOptions).context
    if isinstance(context, RunOptions):
        return context
    if isinstance(context, Mapping):
        return RunOptions.from_mapping(context)
    return RunOptions.from_mapping((config or {}).get("configurable"))


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


_Written = tuple[str, int, FinishReason, dict[str, list[int]]]
"""A forced step: its text, token count, finish reason and token ids per model."""


@dataclass
class _Turn:
    """What one node call works with.

    The state it was handed, the node's config, the run's options and session, and the
    session's usage when the node started (the node's usage update is the difference).
    """

    state: RankGuideState
    config: RunnableConfig
    options: RunOptions
    session: RunSession
    usage_before: dict[str, Usage]

    @property
    def budget(self) -> BudgetState:
        """The escalation budget counters carried in the state."""
        return BudgetState(self.state.get("escalations", 0), self.state.get("hysteresis_left", 0))

    def usage_update(self) -> dict[str, Usage]:
        """Tokens the session processed during this node (the state's usage reducer adds it)."""
        return usage_delta(self.usage_before, self.session.usage())


class _Nodes:
    """Graph nodes bound to one pipeline.

    Every node takes ``(state, config)``; the run's options come from the run context
    (:func:`run_options`), the run's engines from the pipeline's session registry.
    """

    def __init__(self, pipeline: RankGuidePipeline) -> None:
        self.pipeline = pipeline
        self.config = pipeline.config
        self.model_name = chat.collaboration_name(pipeline.config)
        self.messages_stream = chat.MessagesStream(self.model_name)

    # ------------------------------------------------------------------ helpers

    def _turn(self, state: RankGuideState, config: RunnableConfig) -> _Turn:
        options = run_options(config)
        session = self.pipeline.session(
            state["run_id"], _prompt_of(state), state.get("steps", []), options
        )
        return _Turn(state, config, options, session, session.usage())

    def _budget(self, options: RunOptions) -> int:
        return options.thinking_budget or self.config.steps.thinking_budget

    def _max_new(self, turn: _Turn) -> int:
        left = self._budget(turn.options) - turn.state.get("generated_tokens", 0)
        return max(1, min(self.config.steps.max_step_tokens, left))

    def _apply_budget(
        self, decision: RouteDecision, budget: BudgetState
    ) -> tuple[RouteDecision, BudgetState]:
        routing = self.config.routing
        return apply_budget(
            decision,
            budget,
            max_escalations=routing.max_escalations,
            hysteresis=routing.hysteresis,
        )

    def _emit(self, turn: _Turn, record: StepRecord) -> dict[str, Usage]:
        """Commit ``record`` to the session and stream its event; return the usage update."""
        turn.session.record_committed(record)
        update = turn.usage_update()
        total = merge_usage(turn.state.get("usage"), update)
        get_stream_writer()(StepEvent.from_step(turn.state["run_id"], record, total).to_dict())
        if self.messages_stream.active(turn.config):
            self._stream_step(turn, record)
        return update

    def _stream_step(self, turn: _Turn, record: StepRecord) -> None:
        """Send a committed step's tokens to the ``messages`` stream (reasoning, or answer)."""
        markers = list(self.config.steps.answer_markers)
        self.messages_stream.step(
            turn.config,
            _prompt_of(turn.state),
            _reply_id(turn.state),
            answer_of(record.text, markers) if record.is_answer else record.text,
            is_answer=record.is_answer,
            tokenizer=self.pipeline.step_tokenizer(record.author),
        )

    def _commit(self, turn: _Turn, record: StepRecord, budget: BudgetState) -> Command[Any]:
        state = turn.state
        usage = self._emit(turn, record)
        previous = [s["text"] for s in state.get("steps", [])]
        generated = state.get("generated_tokens", 0) + record.tokens
        answer_phase = state.get("answer_phase", False) or record.finish_reason == "end_marker"
        update: dict[str, Any] = {
            "steps": [record.to_dict()],
            "pending": None,
            "usage": usage,
            "latency_s": state.get("latency_s", 0.0) + record.latency_s,
            "generated_tokens": generated,
            "escalations": budget.escalations,
            "hysteresis_left": budget.hysteresis_left,
            "answer_phase": answer_phase,
        }
        stop = self._stop_reason(
            record, previous, generated, answer_phase, self._budget(turn.options)
        )
        if stop is not None:
            update["stop_reason"] = stop
            unanswered = stop in ("budget", "max_steps", "repeat") and not record.is_answer
            # A structured output is owed even when the configuration forces no answer.
            needed = self.config.steps.force_answer or turn.session.output_constraint is not None
            if unanswered and needed:
                return Command(goto="force_answer", update=update)
            return Command(goto="finish", update=update)
        return Command(goto="srm_step", update=update)

    def _stop_reason(
        self,
        record: StepRecord,
        previous: list[str],
        generated: int,
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
        if len(previous) + 1 >= steps.max_steps:
            return "max_steps"
        if steps.stop_on_repeat and is_repeat(record.text, previous):
            return "repeat"
        return None

    # ------------------------------------------------------------------ nodes

    def start(self, state: RankGuideState, config: RunnableConfig) -> dict[str, Any]:
        """Set up a run: its id, prompt, reply id and counters (models load with its session).

        The prompt comes from the ``prompt`` input as it is, else from a conversation waiting
        for a reply (its last message is not a reply), else from ``question``. What an earlier
        run on the thread left (steps, usage, answer) is reset.
        """
        configurable = config.get("configurable") or {}
        run_id = state.get("run_id") or configurable.get("thread_id") or uuid.uuid4().hex
        conversation = state.get("messages") or []
        prompt = state.get("prompt")
        if prompt:
            question = state.get("question") or _last_user_content(prompt)
        elif chat.needs_answer(conversation):
            question = chat.last_user_text(conversation)
            prompt = self.pipeline.chat_messages(chat.conversation_dicts(conversation))
        else:
            question = state.get("question", "")
            prompt = self.pipeline.messages(question)
        return {
            "run_id": str(run_id),
            "question": str(question),
            "prompt": prompt,
            "reply_id": f"rankguide-{uuid.uuid4().hex}",
            "steps": Overwrite([]),
            "usage": Overwrite({}),
            "pending": None,
            "escalations": 0,
            "hysteresis_left": 0,
            "rollbacks": 0,
            "generated_tokens": 0,
            "answer_phase": False,
            "latency_s": 0.0,
            "answer": None,
            "answer_author": None,
            "correct": None,
            "stop_reason": None,
        }

    def srm_step(self, state: RankGuideState, config: RunnableConfig) -> Command[Any]:
        """Let a pre-step policy decide, else draft the next step on the SRM."""
        turn = self._turn(state, config)
        index = len(state.get("steps", []))
        answer_phase = state.get("answer_phase", False)
        started = time.perf_counter()
        decision = self._held(turn) or turn.session.probe(index)
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
                pre_decision=decision,
            )
            update = {"pending": pending.to_dict(), "usage": turn.usage_update()}
            return Command(goto="lrm_step", update=update)
        pending = turn.session.draft(index, self._max_new(turn), answer_phase=answer_phase)
        pending.latency_s = time.perf_counter() - started
        return Command(
            goto="guard", update={"pending": pending.to_dict(), "usage": turn.usage_update()}
        )

    @staticmethod
    def _held(turn: _Turn) -> RouteDecision | None:
        """A step an earlier escalation holds with the LRM: no SRM draft, no probe."""
        left = turn.budget.hysteresis_left
        if left <= 0:
            return None
        return RouteDecision(True, None, None, f"held by the LRM ({left} left)", held=True)

    def guard(self, state: RankGuideState, config: RunnableConfig) -> Command[Any]:
        """Decide on the SRM draft: commit it, or hand the step to the LRM.

        A draft that would end a run whose output is structured (a forced tool call, a
        response format) is not committed as it is: its author -- the SRM, or the LRM the
        router or ``final_answer_by`` picks -- writes the final output under the grammar.
        """
        turn = self._turn(state, config)
        pending = PendingStep.from_dict(state["pending"] or {})
        started = time.perf_counter()
        session = turn.session
        pending.final = session.output_constraint is not None and session.ends_run(
            pending.text, pending.finish_reason, answer_phase=pending.answer_phase
        )
        forced = None
        answering = pending.is_answer or pending.final
        if answering and self.config.steps.final_answer_by != "router":
            forced = self.config.steps.final_answer_by
        if forced is not None:
            escalate = forced == "lrm"
            decision = RouteDecision(escalate, None, None, f"final answer by {forced}")
            budget = BudgetState(
                turn.budget.escalations + int(escalate), turn.budget.hysteresis_left
            )
        else:
            decision, budget = self._apply_budget(session.decide(pending), turn.budget)
        pending.latency_s += time.perf_counter() - started
        if decision.escalate:
            session.reject()
            pending.pre_decision, pending.forced = decision, forced is not None
            if decision.rollback and self._may_roll_back(state):
                return self._roll_back(turn, pending, decision, budget)
            return Command(
                goto="lrm_step",
                update={
                    "pending": pending.to_dict(),
                    "escalations": budget.escalations,
                    "hysteresis_left": budget.hysteresis_left,
                    "usage": turn.usage_update(),
                },
            )
        if pending.final:
            return self._srm_output(turn, pending, decision, budget, forced=forced is not None)
        return self._commit_srm(turn, pending, decision, budget, forced=forced is not None)

    def _may_roll_back(self, state: RankGuideState) -> bool:
        """One more rollback is allowed and the previous step is an SRM reasoning step."""
        steps = state.get("steps", [])
        if state.get("rollbacks", 0) >= self.config.routing.max_rollbacks or not steps:
            return False
        last = steps[-1]
        return (
            last["author"] == "srm"
            and not last.get("is_answer")
            and not state.get("answer_phase", False)
        )

    def _roll_back(
        self, turn: _Turn, pending: PendingStep, decision: RouteDecision, budget: BudgetState
    ) -> Command[Any]:
        """Withdraw the previous SRM step; the LRM rewrites it, then writes the flagged step.

        The engines' caches are cropped to the kept trace, the withdrawn record is kept in the
        state's ``withdrawn`` list and announced as a withdrawn step event, and the step list
        is rewound by a marker its reducer applies, so checkpoints and resumes stay exact.
        """
        withdrawn = turn.session.withdraw_last()
        usage = turn.usage_update()
        total = merge_usage(turn.state.get("usage"), usage)
        event = StepEvent.from_step(turn.state["run_id"], withdrawn, total, withdrawn=True)
        get_stream_writer()(event.to_dict())
        rewrite = replace(
            pending,
            index=withdrawn.index,
            text=withdrawn.text,
            tokens=withdrawn.tokens,
            srm_ids=list(withdrawn.token_ids.get("srm", [])),
            is_answer=False,
            pre_decision=replace(decision, hold=max(1, decision.hold)),
        )
        return Command(
            goto="lrm_step",
            update={
                "steps": [{WITHDRAW: withdrawn.index}],
                "withdrawn": [withdrawn.to_dict()],
                "rollbacks": turn.state.get("rollbacks", 0) + 1,
                "pending": rewrite.to_dict(),
                "escalations": budget.escalations,
                "hysteresis_left": max(budget.hysteresis_left, 1),
                "usage": usage,
                "latency_s": turn.state.get("latency_s", 0.0),
            },
        )

    def lrm_step(self, state: RankGuideState, config: RunnableConfig) -> Command[Any]:
        """The LRM writes the step (pre-step escalation, or a rejected SRM draft).

        With a structured output, a step known to end the run (a final draft, the answer
        phase) is written under the grammar; a pre-step escalation whose free step turns out
        to end the run is taken back and written again under it. A remote LRM has no local
        grammar: the SRM writes the final output then, and the record says why.
        """
        turn = self._turn(state, config)
        session = turn.session
        pending = PendingStep.from_dict(state["pending"] or {})
        decision = pending.pre_decision or RouteDecision(True)
        budget = turn.budget
        if not pending.drafted:
            # Escalated before drafting: the probe's decision still passes the budget rules.
            routed, budget = self._apply_budget(replace(decision, escalate=True), budget)
            if not routed.escalate:
                return self._srm_anyway(turn, pending, routed, budget)
        output = session.output_constraint is not None and (pending.final or pending.answer_phase)
        if output and not session.lrm_is_local:
            return self._srm_output(turn, pending, _remote_output(decision), budget, forced=True)
        answer_phase = pending.answer_phase or output
        written = session.lrm_write(self._max_new(turn), answer_phase=answer_phase, output=output)
        if isinstance(written, LRMUnavailable):
            return self._fallback(turn, pending, budget, written.reason)
        if not output and session.output_constraint is not None:
            if session.ends_run(written.text, written.finish_reason, answer_phase=False):
                session.lrm_retract()  # a free final step: written again as the output
                if not session.lrm_is_local:
                    remote = _remote_output(decision)
                    return self._srm_output(turn, pending, remote, budget, forced=True)
                written = session.lrm_write(self._max_new(turn), answer_phase=True, output=True)
                assert not isinstance(written, LRMUnavailable)  # a local LRM does not fail over
                output = True
        return self._commit_lrm(turn, pending, decision, budget, written, is_answer=output)

    def _commit_lrm(
        self,
        turn: _Turn,
        pending: PendingStep,
        decision: RouteDecision,
        budget: BudgetState,
        written: WrittenStep,
        *,
        is_answer: bool,
    ) -> Command[Any]:
        """Commit a step the LRM wrote."""
        router = turn.session.router.name
        record = StepRecord(
            index=pending.index,
            author="lrm",
            text=written.text,
            tokens=written.tokens,
            token_ids={"lrm": written.token_ids} if written.token_ids else {},
            signals=pending.signals,
            signal_notes=pending.signal_notes,
            decision="forced" if pending.forced or router == "lrm" else "escalate",
            escalated=True,
            score=decision.score,
            router=router,
            failure_mode=decision.failure_mode,
            reason=decision.reason,
            draft_text=pending.text or None,
            latency_s=pending.latency_s + written.latency_s,
            draft_latency_s=pending.latency_s if pending.text else 0.0,
            finish_reason=written.finish_reason,
            is_answer=is_answer
            or pending.answer_phase
            or turn.session.is_answer_text(written.text),
        )
        return self._commit(turn, record, budget)

    def _srm_output(
        self,
        turn: _Turn,
        pending: PendingStep,
        decision: RouteDecision,
        budget: BudgetState,
        *,
        forced: bool,
        fallback: str | None = None,
    ) -> Command[Any]:
        """The SRM writes the final output under the grammar, in place of its free draft."""
        session = turn.session
        session.reject()
        output = session.draft_output(pending.index, self.config.steps.max_step_tokens)
        output.signals, output.signal_notes = pending.signals, pending.signal_notes
        output.latency_s += pending.latency_s
        return self._commit_srm(
            turn,
            output,
            decision,
            budget,
            forced=forced,
            fallback=fallback,
            draft_text=pending.text or None,
        )

    def _srm_anyway(
        self,
        turn: _Turn,
        pending: PendingStep,
        decision: RouteDecision,
        budget: BudgetState,
        fallback: str | None = None,
    ) -> Command[Any]:
        session = turn.session
        draft = session.draft(pending.index, self._max_new(turn), answer_phase=pending.answer_phase)
        draft.latency_s += pending.latency_s
        if session.output_constraint is not None and session.ends_run(
            draft.text, draft.finish_reason, answer_phase=draft.answer_phase
        ):
            return self._srm_output(turn, draft, decision, budget, forced=True, fallback=fallback)
        return self._commit_srm(turn, draft, decision, budget, forced=True, fallback=fallback)

    def _fallback(
        self, turn: _Turn, pending: PendingStep, budget: BudgetState, why: str
    ) -> Command[Any]:
        """The LRM is unavailable under ``fallback_srm``: keep (or make) the SRM's draft, marked.

        ``why`` is the fallback text (``"lrm_unavailable: <status> from <url>: ..."``).
        """
        detail = why.removeprefix("lrm_unavailable: ")
        mark = f"lrm_unavailable: {detail}"
        decision = RouteDecision(False, None, None, f"LRM unavailable: {detail}")
        if turn.session.output_constraint is not None and (pending.final or pending.answer_phase):
            return self._srm_output(turn, pending, decision, budget, forced=True, fallback=mark)
        if not pending.text:
            return self._srm_anyway(turn, pending, decision, budget, fallback=mark)
        turn.session.reject()  # the draft was discarded already; it is restored from its ids
        return self._commit_srm(turn, pending, decision, budget, forced=True, fallback=mark)

    def _commit_srm(
        self,
        turn: _Turn,
        pending: PendingStep,
        decision: RouteDecision,
        budget: BudgetState,
        *,
        forced: bool = False,
        fallback: str | None = None,
        draft_text: str | None = None,
    ) -> Command[Any]:
        """Commit an SRM draft as the step (accepted, forced by a rule, or kept as a fallback).

        ``draft_text``: a free draft this one replaced (the final output written again).
        """
        started = time.perf_counter()
        ids = turn.session.accept(pending)
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
            router=turn.session.router.name,
            failure_mode=decision.failure_mode,
            reason=decision.reason,
            latency_s=pending.latency_s + time.perf_counter() - started,
            finish_reason=pending.finish_reason,  # type: ignore[arg-type]
            is_answer=pending.is_answer,
            fallback=fallback,
            draft_text=draft_text,
        )
        return self._commit(turn, record, budget)

    def force_answer(self, state: RankGuideState, config: RunnableConfig) -> Command[Any]:
        """The run stopped without an answer: write the answer marker and let the model finish.

        The answer's author is the LRM under the ``lrm`` policy or ``final_answer_by: lrm``,
        else the SRM; the step is recorded as forced, with the reason. A structured output is
        written under its grammar instead, without the marker.
        """
        turn = self._turn(state, config)
        session = turn.session
        started = time.perf_counter()
        index = len(state.get("steps", []))
        by_lrm = session.router.name == "lrm" or self.config.steps.final_answer_by == "lrm"
        if session.output_constraint is not None:
            text, tokens, finish, token_ids = self._forced_output(session, index, by_lrm)
        else:
            text, tokens, finish, token_ids = self._forced_answer(session, index, by_lrm)
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
        usage = self._emit(turn, record)  # first: committing an LRM step adds its SRM ids
        return Command(
            goto="finish",
            update={
                "steps": [record.to_dict()],
                "usage": usage,
                "latency_s": state.get("latency_s", 0.0) + record.latency_s,
                "generated_tokens": state.get("generated_tokens", 0) + tokens,
            },
        )

    def _forced_answer(self, session: RunSession, index: int, by_lrm: bool) -> _Written:
        """The answer marker, then its author's free answer."""
        markers = self.config.steps.answer_markers
        marker = f"{markers[0]} " if markers else ""
        cap = min(self.config.steps.max_step_tokens, self.config.steps.answer_max_tokens)
        if by_lrm:
            session.lrm.observe(marker)
            written = session.lrm_write(cap, answer_phase=True)
            if isinstance(written, LRMUnavailable):
                raise written.error  # the answer is the LRM's by rule: no SRM stand-in here
            return marker + written.text, written.tokens, written.finish_reason, {}
        prefix_ids = session.srm_engine.append_text(marker) if marker else []
        draft = session.draft(index, cap, answer_phase=True)
        token_ids = {"srm": [*prefix_ids, *session.accept(draft)]}
        return marker + draft.text, draft.tokens, cast(FinishReason, draft.finish_reason), token_ids

    def _forced_output(self, session: RunSession, index: int, by_lrm: bool) -> _Written:
        """The structured output, written by its author under the grammar.

        A remote LRM cannot be the author here: ``check_options`` refuses the rules that
        would make it one.
        """
        cap = self.config.steps.max_step_tokens
        if by_lrm:
            written = session.lrm_write(cap, answer_phase=True, output=True)
            assert not isinstance(written, LRMUnavailable)  # a local LRM does not fail over
            return written.text, written.tokens, written.finish_reason, {}
        draft = session.draft_output(index, cap)
        token_ids = {"srm": session.accept(draft)}
        return draft.text, draft.tokens, cast(FinishReason, draft.finish_reason), token_ids

    def finish(self, state: RankGuideState, config: RunnableConfig) -> dict[str, Any]:
        """Extract the answer, check it, reply to a conversation, free the run's engines."""
        steps = state.get("steps", [])
        markers = list(self.config.steps.answer_markers)
        answer_step = next((s for s in reversed(steps) if s.get("is_answer")), None)
        answer = answer_of(answer_step["text"], markers) if answer_step else None
        result = {
            "answer": answer,
            "answer_author": answer_step["author"] if answer_step else None,
            "correct": verify_answer(state.get("question", ""), answer, self.pipeline.grading_task),
            "stop_reason": state.get("stop_reason") or "answer",
        }
        # The prompt was this run's: a later run on the thread gets its own from its input.
        update: dict[str, Any] = {**result, "prompt": None}
        # A conversation gets its reply; a question or prompt run keeps the state JSON-native
        # (the answer is in ``answer``), and builds the reply only for a messages stream.
        answers = chat.needs_answer(state.get("messages") or [])
        if answers or self.messages_stream.active(config):
            reply = self._reply(state, result)
            self.messages_stream.close(config, _prompt_of(state), reply)
            if answers:
                update["messages"] = [reply]
        self.pipeline.end_session(state["run_id"])
        return update

    def _reply(self, state: RankGuideState, result: Mapping[str, Any]) -> AIMessage:
        """The run's reply message (see :mod:`langchain_rankguide.graph_messages`)."""
        steps = state.get("steps", [])
        metadata = chat.reply_metadata(
            model_name=self.model_name,
            stop_reason=result["stop_reason"],
            steps=steps,
            answer_author=result["answer_author"],
            correct=result["correct"],
            usage=state.get("usage"),
        )
        prompt_tokens = len(self.pipeline.srm_prompt_ids(_prompt_of(state)))
        usage = chat.reply_usage(prompt_tokens, steps)
        return chat.build_reply(_reply_id(state), result["answer"], steps, metadata, usage)


def _remote_output(decision: RouteDecision) -> RouteDecision:
    """The decision of a final output the SRM writes because the LRM is remote."""
    reason = "the LRM is remote, without a local grammar: the SRM writes the structured output"
    return RouteDecision(False, decision.score, decision.failure_mode, reason)


def _prompt_of(state: RankGuideState) -> list[dict[str, Any]]:
    """The run's prompt messages.

    A run checkpointed before the ``prompt`` key existed kept them under ``messages``.
    """
    prompt = state.get("prompt")
    if prompt is not None:
        return prompt
    return [dict(m) for m in state.get("messages") or [] if isinstance(m, Mapping)]


def _reply_id(state: RankGuideState) -> str:
    return state.get("reply_id") or f"rankguide-{state.get('run_id', '')}"


def _last_user_content(prompt: list[dict[str, Any]]) -> str:
    return next(
        (str(m.get("content", "")) for m in reversed(prompt) if m.get("role") == "user"), ""
    )


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
        The compiled graph; input :class:`RankGuideInput` (``{"question": str}``,
        ``{"messages": [...]}`` or ``{"prompt": [...]}``), output the state with the reply
        appended to ``messages``, run context :class:`~langchain_rankguide.pipeline.RunOptions`.
    """
    pipeline = config if isinstance(config, RankGuidePipeline) else RankGuidePipeline(config)
    nodes = _Nodes(pipeline)
    builder = StateGraph(
        RankGuideState,
        context_schema=RunOptions,
        input_schema=RankGuideInput,
        output_schema=RankGuideState,
    )
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
    return builder.compile(checkpointer=checkpointer, name="rankguide")
