"""The run stream: one question in, its committed steps out as they land, a typed result last.

:class:`RankGuideApp` owns a :class:`~langchain_rankguide.pipeline.RankGuidePipeline` and the
graph compiled from it (:func:`~langchain_rankguide.graph.build_graph`), and is the one place
that drives that graph: the CLI, both chat models' RankGuide side, the server and the
benchmarks all run questions through :meth:`RankGuideApp.stream` (or :meth:`~RankGuideApp.invoke`,
:meth:`~RankGuideApp.astream`). A run's options travel as the graph's run context
(:class:`~langchain_rankguide.pipeline.RunOptions`).

Example:
    >>> from langchain_rankguide.config import load_config
    >>> app = RankGuideApp(load_config())  # doctest: +SKIP
    >>> with app.stream("Start at 72. Subtract 39. What is the result?") as run:  # doctest: +SKIP
    ...     for event in run:
    ...         print(event.step["author"], event.step["text"])
    >>> run.result.answer  # doctest: +SKIP
    '33'
"""

from __future__ import annotations

import asyncio
import contextvars
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from langchain_rankguide.errors import InputError
from langchain_rankguide.pipeline import RankGuidePipeline, RunOptions
from langchain_rankguide.schemas import (
    ChatFinishReason,
    StepEvent,
    Usage,
    chat_finish_reason,
    usage_by_role,
)

if TYPE_CHECKING:
    from langchain_rankguide.config import RankGuideConfig

RunInput = str | Mapping[str, Any] | None
"""A question, a graph input (``{"question": ...}``, ``{"messages": [...]}`` -- a conversation,
the configured prompt applies -- or ``{"prompt": [...]}`` -- chat dicts the models read as they
are), or ``None`` to resume the run's checkpoint."""

STEP_EVENT = "rankguide.step"


@dataclass(frozen=True)
class RunResult:
    """How a run ended.

    Attributes:
        run_id: the run (its LangGraph thread id).
        question: the question (the last user message for chat input).
        answer: the answer text, ``None`` when the run ended without one.
        answer_author: who wrote the answer step (``"srm"``/``"lrm"``), or ``None``.
        correct: the task verifier's verdict when it recognises the question, else ``None``.
        stop_reason: why the run ended (``answer``, ``eos``, ``budget``, ...); ``None`` when
            the stream was closed before the run finished.
        steps: the committed step records (``StepRecord.to_dict()``).
        usage: tokens each model prefilled and decoded, ``{"srm": ..., "lrm": ...}``.
        latency_s: summed step latencies (discarded drafts included).
        wall_s: wall time of the stream, model loading excluded.
        finished: ``True`` when the graph reached its end.
        state: the last graph state seen, as LangGraph returned it.
    """

    run_id: str
    question: str
    answer: str | None
    answer_author: str | None
    correct: bool | None
    stop_reason: str | None
    steps: list[dict[str, Any]]
    usage: dict[str, Usage]
    latency_s: float
    wall_s: float
    finished: bool
    state: dict[str, Any] = field(repr=False)

    @property
    def finish_reason(self) -> ChatFinishReason:
        """The run's end in chat terms: ``length`` at the budget or step cap, else ``stop``."""
        return chat_finish_reason(self.stop_reason, self.steps)

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, Any],
        *,
        run_id: str | None = None,
        wall_s: float = 0.0,
        finished: bool = True,
    ) -> RunResult:
        """Read a result from a graph state (a finished one unless ``finished=False``)."""
        return cls(
            run_id=str(run_id or state.get("run_id") or ""),
            question=str(state.get("question") or ""),
            answer=state.get("answer"),
            answer_author=state.get("answer_author"),
            correct=state.get("correct"),
            stop_reason=state.get("stop_reason"),
            steps=list(state.get("steps") or []),
            usage=usage_by_role(state.get("usage")),
            latency_s=float(state.get("latency_s") or 0.0),
            wall_s=wall_s,
            finished=finished,
            state=dict(state),
        )


class RunStream:
    """One run: iterate it for one :class:`~langchain_rankguide.schemas.StepEvent` per step.

    Once the iteration ends, :attr:`result` says how the run ended. The run executes as the
    events are pulled, in a ``contextvars`` context of its own, so it is never taken for a
    subgraph of a LangGraph run the caller is inside. Closing the stream early (``close()``,
    leaving a ``with`` block, an exception) stops the run and frees its engines;
    :attr:`result` then holds what was committed.

    With a checkpointer a step's event comes out only once the checkpoint holding the step is
    written (the graph runs with ``durability="sync"``), so a process killed at any moment has
    shown no step its resume will run again. :attr:`prior_steps` are the steps a resumed (or
    finished) run had committed before this stream started; :attr:`finished_before` says the
    thread's run had finished (the stream then replays nothing and ends on its result).
    """

    def __init__(
        self,
        app: RankGuideApp,
        graph_input: Any,
        options: RunOptions,
        run_id: str,
        *,
        stored_state: dict[str, Any] | None = None,
        finished: bool = False,
    ):
        self.run_id = run_id
        self.prior_steps: list[dict[str, Any]] = list((stored_state or {}).get("steps") or [])
        self.finished_before = finished
        self._app = app
        self._context = contextvars.Context()
        self._state: dict[str, Any] = dict(stored_state or {}) if finished else {}
        self._result: RunResult | None = None
        self._ready: deque[StepEvent] = deque()
        self._unsaved: list[StepEvent] = []
        self._durable = app.checkpointer is not None
        self._started = time.perf_counter()
        if finished:
            # A finished run is immutable: its stream replays nothing and ends on the stored
            # result.
            self._events: Any = iter(())
            return
        config = {
            "configurable": {"thread_id": run_id},
            "recursion_limit": 4 * app.pipeline.config.steps.max_steps + 16,
        }
        durability = {"durability": "sync"} if self._durable else {}
        self._events = self._context.run(
            app.graph.stream,
            graph_input,
            config,
            context=options,
            stream_mode=["custom", "values"],
            **durability,
        )

    def __iter__(self) -> RunStream:
        return self

    def __next__(self) -> StepEvent:
        if self._ready:
            return self._ready.popleft()
        if self._result is not None:
            raise StopIteration
        try:
            while not self._ready:
                mode, payload = self._context.run(next, self._events)
                self._take(mode, payload)
        except StopIteration:
            # The graph ended: with sync durability every checkpoint is written.
            self._ready.extend(self._unsaved)
            self._end(finished=True)
            if not self._ready:
                raise
        except BaseException:
            self._end(finished=False)
            raise
        return self._ready.popleft()

    def _take(self, mode: str, payload: Any) -> None:
        """File one graph stream item: a step event waits for the checkpoint that holds it."""
        if mode == "values":
            self._state = payload
            # Under sync durability a superstep's values come out after its checkpoint is
            # written (LangGraph waits for the write before the next superstep, and streams
            # the values only then): the steps it committed are durable.
            self._ready.extend(self._unsaved)
            self._unsaved.clear()
        elif isinstance(payload, Mapping) and payload.get("type") == STEP_EVENT:
            (self._unsaved if self._durable else self._ready).append(StepEvent(**payload))

    def __enter__(self) -> RunStream:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the run (if it is still going) and free its engines."""
        if self._result is None:
            self._end(finished=False)

    @property
    def result(self) -> RunResult:
        """The run's result; the stream must have ended or been closed."""
        if self._result is None:
            raise RuntimeError("the run is still going: iterate the stream to its end, or close it")
        return self._result

    def _end(self, *, finished: bool) -> None:
        wall = time.perf_counter() - self._started
        try:
            if hasattr(self._events, "close"):
                self._context.run(self._events.close)
        finally:
            # A finished run freed its engines in the graph's last node; this covers the rest.
            self._app.pipeline.end_session(self.run_id)
            self._result = RunResult.from_state(
                self._state, run_id=self.run_id, wall_s=wall, finished=finished
            )


class AsyncRunStream:
    """The async form of :class:`RunStream`: ``async for event in run``, then :attr:`result`.

    The run starts on the first ``__anext__``; it and each step run in a worker thread (model
    loading and the nodes are blocking), so the event loop never blocks. The run stops and
    frees its engines when the iteration ends early or the task is cancelled.
    """

    def __init__(self, start: Callable[[], RunStream], run_id: str) -> None:
        self._start: Callable[[], RunStream] | None = start
        self._run: RunStream | None = None
        self.run_id = run_id

    def __aiter__(self) -> AsyncIterator[StepEvent]:
        return self

    async def __anext__(self) -> StepEvent:
        try:
            return await asyncio.to_thread(self._next)
        except BaseException:
            await self.aclose()
            raise

    def _next(self) -> StepEvent:
        if self._run is None:
            if self._start is None:
                raise StopAsyncIteration
            self._run, self._start = self._start(), None
        try:
            return next(self._run)
        except StopIteration:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> AsyncRunStream:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the run (if it is still going) and free its engines."""
        self._start = None
        if self._run is None:
            return
        try:
            await asyncio.to_thread(self._run.close)
        except ValueError:
            # Cancelled while a step was still running in its thread: the graph's generator
            # is closed when it is collected.
            pass

    @property
    def result(self) -> RunResult:
        """The run's result; the stream must have ended or been closed."""
        if self._run is None:
            raise RuntimeError("the run never started: iterate the stream first")
        return self._run.result


class RankGuideApp:
    """A pipeline and its compiled graph, and the run stream over them.

    Args:
        config: a configuration (models load on first use) or a ready pipeline (its models
            and sessions are shared with anything else using it).
        checkpointer: a LangGraph checkpointer for durable, resumable runs.
    """

    def __init__(
        self, config: RankGuideConfig | RankGuidePipeline, *, checkpointer: Any = None
    ) -> None:
        from langchain_rankguide.graph import build_graph

        self.pipeline = (
            config if isinstance(config, RankGuidePipeline) else RankGuidePipeline(config)
        )
        self.checkpointer = checkpointer
        self.graph = build_graph(self.pipeline, checkpointer=checkpointer)

    @classmethod
    def from_config(cls, config: RankGuideConfig, *, checkpoint: str | None = None) -> RankGuideApp:
        """An app whose checkpointer is the one ``config.checkpoint`` names (or ``checkpoint``).

        Args:
            config: the configuration; its ``checkpoint`` section picks SQLite, PostgreSQL or
                no checkpointer (:func:`~langchain_rankguide.checkpoints.open_checkpointer`).
            checkpoint: a SQLite file or a ``postgresql://`` URL that replaces the section's
                store (``rankguide run --checkpoint``).

        Raises:
            CheckpointError: the store cannot be opened (one line, password as ``***``).

        Example:
            >>> app = RankGuideApp.from_config(load_config("durable.yaml"))  # doctest: +SKIP
            >>> app.invoke("...", run_id="problem-17")  # resumes it if it was cut off
        """
        from langchain_rankguide.checkpoints import open_checkpointer

        return cls(config, checkpointer=open_checkpointer(config.checkpoint, target=checkpoint))

    def stream(
        self,
        question: RunInput,
        options: RunOptions | None = None,
        *,
        run_id: str | None = None,
    ) -> RunStream:
        """Start a run; iterate the returned stream for its step events, then read its result.

        Args:
            question: the question, a graph input (``{"question": ...}`` or
                ``{"messages": [...]}``), or ``None`` to resume ``run_id``'s checkpoint.
            options: the run's options (``None``: the configuration's values).
            run_id: the run's id, the thread id in the checkpointer (default: a fresh one).
                With a checkpointer, a ``run_id`` whose checkpoint is unfinished resumes there
                and ``question`` is not asked again; one whose run finished is immutable: the
                same question (or none) gets the stored result back, another question is
                refused (``InputError``). A conversation (``{"messages": ...}``) on a finished
                thread is a new turn.

        The run's models are loaded before the stream's clock starts, so
        :attr:`RunResult.wall_s` never counts loading.
        """
        options = options or RunOptions()
        stored, unfinished = self._stored_run(run_id)
        if self._asks_finished_run(run_id, question, stored, unfinished):
            return RunStream(self, None, options, str(run_id), stored_state=stored, finished=True)
        if unfinished:
            graph_input = None
        elif question is None:
            raise ValueError(f"no question given and no unfinished run {run_id!r} to resume")
        else:
            graph_input = {"question": question} if isinstance(question, str) else dict(question)
            stored = {}
        self.pipeline.warm_up(options)
        return RunStream(
            self, graph_input, options, run_id or uuid.uuid4().hex, stored_state=stored
        )

    def astream(
        self,
        question: RunInput,
        options: RunOptions | None = None,
        *,
        run_id: str | None = None,
    ) -> AsyncRunStream:
        """:meth:`stream` for async code: ``async with app.astream(q) as run: async for ...``."""
        run_id = run_id or uuid.uuid4().hex
        return AsyncRunStream(lambda: self.stream(question, options, run_id=run_id), run_id)

    def invoke(
        self,
        question: RunInput,
        options: RunOptions | None = None,
        *,
        run_id: str | None = None,
    ) -> RunResult:
        """Run to the end and return the result (:meth:`stream` without the events)."""
        with self.stream(question, options, run_id=run_id) as run:
            for _ in run:
                pass
        return run.result

    async def ainvoke(
        self,
        question: RunInput,
        options: RunOptions | None = None,
        *,
        run_id: str | None = None,
    ) -> RunResult:
        """:meth:`invoke` for async code (the run goes on in a worker thread)."""
        return await asyncio.to_thread(self.invoke, question, options, run_id=run_id)

    def _stored_run(self, run_id: str | None) -> tuple[dict[str, Any], bool]:
        """The state checkpointed under ``run_id`` and whether its run is unfinished."""
        if self.checkpointer is None or run_id is None:
            return {}, False
        snapshot = self.graph.get_state({"configurable": {"thread_id": run_id}})
        return dict(snapshot.values or {}), bool(snapshot.next)

    @staticmethod
    def _asks_finished_run(
        run_id: str | None, question: RunInput, stored: dict[str, Any], unfinished: bool
    ) -> bool:
        """``True`` if ``question`` asks ``run_id``'s finished run again (its result stands).

        Raises:
            InputError: the thread finished a run on another question.
        """
        if unfinished or stored.get("stop_reason") is None:
            return False
        if isinstance(question, Mapping) and "question" not in question:
            return False  # a conversation's next turn
        asked = question.get("question") if isinstance(question, Mapping) else question
        if asked is not None and asked != stored.get("question"):
            raise InputError(
                f"thread {run_id!r} already finished a run on another question "
                f"({stored.get('question')!r}); a finished run is never extended: use a new "
                "thread id"
            )
        return True

    def resumable(self, run_id: str) -> bool:
        """``True`` if the checkpointer holds an unfinished run under ``run_id``."""
        return self._stored_run(run_id)[1]
