"""The embedded demo: a synthetic arithmetic task, its verifier and a shipped SRM/LRM pair.

:class:`DemoTask` is the task behind the core's :class:`~langchain_rankguide.tasks.Task`
interface; the default configuration grades runs with it (``task:
langchain_rankguide.demo:DemoTask``).

Importing this package is cheap (no torch); the models load through
:func:`langchain_rankguide.engine.load_model` (``"demo:srm"``, ``"demo:lrm"``) or directly with
``AutoModelForCausalLM.from_pretrained(DEMO_SRM_DIR)``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from langchain_rankguide.demo.bench_task import DemoTask
from langchain_rankguide.demo.task import (
    ERROR_KINDS,
    Problem,
    StepLabel,
    TraceStep,
    TraceVerdict,
    extract_answer,
    format_question,
    generate_problem,
    make_problems,
    parse_problem,
    render_trace,
    revalidation_flags,
    split_steps,
    trace_text,
    verify_steps,
)

_MODELS = files("langchain_rankguide") / "demo" / "models"
#: Folder of the shipped small reasoning model (a complete Hugging Face folder).
DEMO_SRM_DIR: Path = Path(str(_MODELS / "srm"))
#: Folder of the shipped large reasoning model.
DEMO_LRM_DIR: Path = Path(str(_MODELS / "lrm"))

__all__ = [
    "DEMO_LRM_DIR",
    "DEMO_SRM_DIR",
    "ERROR_KINDS",
    "DemoTask",
    "Problem",
    "StepLabel",
    "TraceStep",
    "TraceVerdict",
    "extract_answer",
    "format_question",
    "generate_problem",
    "make_problems",
    "parse_problem",
    "render_trace",
    "revalidation_flags",
    "split_steps",
    "trace_text",
    "verify_steps",
]
