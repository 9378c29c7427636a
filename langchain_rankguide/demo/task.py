"""The demo task: multi-step arithmetic with a worded chain of thought and an exact verifier.

This module gathers the task's public names in one place; each lives in the module of its
job:

- :mod:`~langchain_rankguide.demo.problems`: operations, :class:`Problem`, question wording,
  generation and splits;
- :mod:`~langchain_rankguide.demo.traces`: step texts, injected errors and reference traces;
- :mod:`~langchain_rankguide.demo.parsing`: reading steps, questions and answers;
- :mod:`~langchain_rankguide.demo.verify`: the step verifier and its labels.

It imports nothing heavy (no torch): the CLI and graph use it at any time.
"""

from __future__ import annotations

from langchain_rankguide.demo.parsing import extract_answer, parse_problem
from langchain_rankguide.demo.problems import (
    HARD_OPERATIONS,
    SPLITS,
    SYMBOLS,
    Problem,
    apply_operation,
    chat_messages,
    format_question,
    generate_problem,
    make_problems,
    split_of,
)
from langchain_rankguide.demo.traces import (
    DELIMITER,
    StepKind,
    TraceStep,
    answer_text,
    catch_text,
    confirm_text,
    operation_text,
    render_trace,
    split_steps,
    trace_text,
)
from langchain_rankguide.demo.verify import (
    ERROR_KINDS,
    LabelKind,
    StepLabel,
    TraceVerdict,
    revalidation_flags,
    verify_steps,
)

__all__ = [
    "DELIMITER",
    "ERROR_KINDS",
    "HARD_OPERATIONS",
    "SPLITS",
    "SYMBOLS",
    "LabelKind",
    "Problem",
    "StepKind",
    "StepLabel",
    "TraceStep",
    "TraceVerdict",
    "answer_text",
    "apply_operation",
    "catch_text",
    "chat_messages",
    "confirm_text",
    "extract_answer",
    "format_question",
    "generate_problem",
    "make_problems",
    "operation_text",
    "parse_problem",
    "render_trace",
    "revalidation_flags",
    "split_of",
    "split_steps",
    "trace_text",
    "verify_steps",
]
