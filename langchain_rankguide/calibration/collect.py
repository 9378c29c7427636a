"""Collect labelled SRM steps: run the SRM alone through the graph and label every step.

Steps are labelled by the task's step verifier (:func:`verifier_labels`) or, for a task without
one, by agreement with the LRM (:func:`lrm_agreement_labels`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from langchain_rankguide.calibration.measure import LabelledStep

if TYPE_CHECKING:
    from langchain_rankguide.tasks import Task


StepLabeller = Callable[[Any, list[dict[str, Any]]], list[bool]]
"""Labels an SRM trace: ``(problem, step records) -> failing flag per step``."""


def verifier_labels(task: Task) -> StepLabeller:
    """Label steps with a task's step verifier (the demo's exact one).

    A step is failing when the verifier judges it wrong, or when the task flags it as heavy
    revalidation (:meth:`~langchain_rankguide.tasks.Task.revalidation_flags`; on the demo 3+
    consecutive reflections or a repeat), since it wastes the budget. Steps the verifier does
    not judge are not failing.
    """

    def label(problem: Any, records: list[dict[str, Any]]) -> list[bool]:
        texts = [r["text"] for r in records]
        verdicts = task.step_labels(problem, texts)
        heavy = task.revalidation_flags(problem, texts)
        flags = [
            verdict is False or bool(flag) for verdict, flag in zip(verdicts, heavy, strict=False)
        ]
        return flags + [False] * (len(records) - len(flags))

    return label


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def steps_agree(srm_text: str, lrm_text: str) -> bool:
    """Whether the LRM's version of a step says what the SRM's does.

    Equal after collapsing whitespace and case, or -- since in reasoning traces the numbers
    carry the content -- the same non-empty sequence of numbers.
    """

    def norm(text: str) -> str:
        return " ".join(text.lower().split())

    if norm(srm_text) == norm(lrm_text):
        return True
    a, b = _NUMBER.findall(srm_text), _NUMBER.findall(lrm_text)
    return bool(a) and a == b


def lrm_agreement_labels(pipeline: Any) -> StepLabeller:
    """Label steps by agreement with the LRM, for tasks without a step verifier.

    For each SRM step the LRM writes the step from the same prefix (greedy, as configured);
    the SRM step is failing when the two disagree (:func:`steps_agree`). With a local LRM the
    prefix is kept in one KV cache (the LRM's draft is discarded and the SRM's step appended);
    a remote LRM is restarted from the committed prefix for each step.
    """
    from langchain_rankguide.pipeline import RunOptions

    max_new = pipeline.config.steps.max_step_tokens

    def local(problem: Any, records: list[dict[str, Any]]) -> list[bool]:
        from langchain_rankguide.engine import StepEngine
        from langchain_rankguide.lrm import render_prompt

        loaded = pipeline.lrm_loaded()
        engine = StepEngine(loaded, role="lrm", settings=pipeline.step_settings)
        kwargs = pipeline.config.prompt.chat_template_kwargs
        prompt = render_prompt(loaded.tokenizer, pipeline.messages(problem.question), **kwargs)
        engine.start(prompt + pipeline.config.prompt.assistant_prefix)
        flags = []
        for index, record in enumerate(records):
            if engine.finished:
                flags.append(False)
                continue
            draft = engine.draft_step(max_new_tokens=max_new, step_index=index)
            flags.append(not steps_agree(record["text"], draft.text))
            engine.discard(draft)
            engine.append_text(record["text"], ends_trace=record.get("finish_reason") == "eos")
        return flags

    def remote(problem: Any, records: list[dict[str, Any]]) -> list[bool]:
        from langchain_rankguide.schemas import StepRecord

        committed = [StepRecord.from_dict(r) for r in records]
        flags = []
        for index, record in enumerate(records):
            lrm = pipeline.make_lrm(RunOptions())
            try:
                lrm.begin(pipeline.messages(problem.question), committed[:index])
                written = lrm.write_step(max_new_tokens=max_new)
            finally:
                lrm.close()
            flags.append(not steps_agree(record["text"], written.text))
        return flags

    return local if pipeline.config.lrm.provider == "hf_local" else remote


def collect_steps(
    pipeline: Any,
    problems: Sequence[Any],
    labeller: StepLabeller,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> list[LabelledStep]:
    """Run the SRM alone on ``problems`` (objects with ``.question``) and label its steps.

    Args:
        pipeline: a pipeline whose configuration computes every signal (diagnostics on).
        problems: the calibration problems.
        labeller: :func:`verifier_labels` or :func:`lrm_agreement_labels`.
        progress: called with (problems done, problems in total).

    Returns:
        One labelled step per SRM step.
    """
    from langchain_rankguide.app import RankGuideApp
    from langchain_rankguide.pipeline import RunOptions

    app = RankGuideApp(pipeline)
    steps: list[LabelledStep] = []
    for done, problem in enumerate(problems, 1):
        records = app.invoke(problem.question, RunOptions(policy="srm")).steps
        for index, (record, failing) in enumerate(
            zip(records, labeller(problem, records), strict=False)
        ):
            steps.append(LabelledStep(record["signals"], bool(failing), record["tokens"], index))
        if progress is not None:
            progress(done, len(problems))
    return steps
