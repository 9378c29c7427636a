"""Test hook: kill a real ``rankguide`` process at a chosen point of a run.

Python imports ``sitecustomize`` at start-up from the path, so a child process started with this
folder on ``PYTHONPATH`` -- the CLI, ``rankguide serve`` and the workers it spawns -- installs
the hook before it runs anything. Nothing happens unless one of these variables is set:

* ``RG_TEST_KILL_AT="<node>:<n>"``: the n-th call of graph node ``<node>`` (counting calls for
  thread ``RG_TEST_KILL_THREAD`` only) waits until the checkpoint in ``RG_TEST_KILL_DB`` (a
  SQLite file or a PostgreSQL URL) holds the state the node was handed, then SIGKILLs its
  process. ``guard:N`` is a kill between the N-th SRM draft and its guard, ``lrm_step:N`` one
  with an escalation pending, ``srm_step:N`` one between committed steps.
* ``RG_TEST_KILL_AFTER_PRINT=<k>``: ``rankguide run``'s live trace SIGKILLs its process right
  after it printed step ``k`` (flushed): whatever was printed must already be durable.
* ``RG_TEST_KILL_ONCE=<file>``: kill only if this file does not exist yet (it is created and
  holds the killed process's id), so a process that takes the run over is not killed too.
* ``RG_TEST_SLOW_S``: sleep this long before every forward pass (for kills from outside).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import signal
import sys
import time
from typing import Any


def _first_kill() -> bool:
    marker = os.environ.get("RG_TEST_KILL_ONCE")
    if not marker:
        return True
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())  # the test can tell which process died
    os.close(fd)
    return True


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _slow_down(seconds: float) -> None:
    from langchain_rankguide.engine import step_engine

    feed = step_engine.StepEngine._feed

    def slow_feed(self: Any, *args: Any, **kwargs: Any) -> Any:
        time.sleep(seconds)
        return feed(self, *args, **kwargs)

    step_engine.StepEngine._feed = slow_feed  # type: ignore[method-assign]


def _on_disk(state: dict[str, Any], thread: str, savers: list[Any]) -> bool:
    """``True`` once the run's latest checkpoint holds ``state``'s steps and pending draft."""
    if not savers:
        from langchain_rankguide.checkpoints import open_checkpointer
        from langchain_rankguide.config import CheckpointConfig

        target = os.environ["RG_TEST_KILL_DB"]
        savers.append(open_checkpointer(CheckpointConfig(), target=target, setup=False))
    found = savers[0].get_tuple({"configurable": {"thread_id": thread}})
    if found is None:
        return False
    values = found.checkpoint["channel_values"]
    return bool(
        values.get("steps", []) == state.get("steps", [])
        and values.get("pending") == state.get("pending")
    )


def _kill_at_node(spec: str) -> None:
    from langchain_rankguide import graph

    node, nth = spec.split(":")
    thread = os.environ["RG_TEST_KILL_THREAD"]
    original = getattr(graph._Nodes, node)
    calls = [0]
    savers: list[Any] = []

    # No annotations: LangGraph hands ``config`` to a node whose parameter is named so and is
    # unannotated (or a RunnableConfig).
    def wrapped(self, state, config):  # type: ignore[no-untyped-def]
        if state.get("run_id") == thread:
            calls[0] += 1
            if calls[0] == int(nth) and _first_kill():
                deadline = time.monotonic() + 60
                while not _on_disk(state, thread, savers) and time.monotonic() < deadline:
                    time.sleep(0.01)
                _die()
        return original(self, state, config)

    setattr(graph._Nodes, node, wrapped)


def _kill_after_print(index: int) -> None:
    from langchain_rankguide.commands import render

    original = render.TraceRenderer.step

    def step(self: Any, record: dict[str, Any]) -> None:
        original(self, record)
        if record["index"] == index and _first_kill():
            _die()

    render.TraceRenderer.step = step  # type: ignore[method-assign]


PATCHES = {
    "langchain_rankguide.engine.step_engine": ("RG_TEST_SLOW_S", lambda v: _slow_down(float(v))),
    "langchain_rankguide.graph": ("RG_TEST_KILL_AT", _kill_at_node),
    "langchain_rankguide.commands.render": (
        "RG_TEST_KILL_AFTER_PRINT",
        lambda v: _kill_after_print(int(v)),
    ),
}
"""Module -> (the variable that switches its patch on, the patch given the variable's value)."""

ACTIVE = {
    name: (patch, os.environ[var]) for name, (var, patch) in PATCHES.items() if os.environ.get(var)
}
"""The patches this process applies, with their variable's value."""


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches a module right after it is first imported, so that a process that never runs a
    model (``rankguide serve``'s worker supervisor) never imports torch because of the hook."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in ACTIVE:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original = loader.exec_module

        def exec_module(module: Any) -> None:
            original(module)
            patch, value = ACTIVE[name]
            patch(value)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if ACTIVE:
    sys.meta_path.insert(0, _PatchOnImport())
