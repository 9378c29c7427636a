"""Human output of a run with ``rich``: each step as it is committed, then the answer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from langchain_rankguide.app import RunResult
    from langchain_rankguide.pipeline import RunOptions

KEY_SIGNALS = (
    "entropy.first_token",
    "rank.cross_step_norm",
    "rank.window.effective",
    "entropy.max",
    "reflection.streak",
)
"""Shown on each step of a live trace when the router computed them."""
AUTHOR_STYLES = {"srm": "cyan", "lrm": "magenta"}


def _short(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


class TraceRenderer:
    """Prints a live trace: one line block per committed step."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False)

    def header(self, question: str, config: Any, pipeline: Any, options: RunOptions) -> None:
        """Print the question, the model pair and the run's policy."""
        policy = options.policy or config.routing.policy
        self.console.print(Text(f"Q: {question}", style="bold"))
        self.console.print(
            f"[dim]SRM {pipeline.srm_identity} + LRM {pipeline.lrm_identity}; policy {policy}[/dim]"
        )

    def resumed(self, thread_id: str, committed: int, *, finished: bool = False) -> None:
        """Say that the run resumes a thread (its committed steps were shown when they ran)."""
        if finished:
            note = f"thread {thread_id!r} finished earlier ({committed} steps): its stored result"
        else:
            note = f"resuming thread {thread_id!r} after {committed} committed steps"
        self.console.print(Text(note, style="dim"))

    def step(self, step: dict[str, Any]) -> None:
        """Print one committed step with its author, key signals, decision and failure mode."""
        author = step["author"]
        style = AUTHOR_STYLES.get(author, "white")
        signals = step.get("signals") or {}
        shown = "  ".join(
            f"{name}={_short(signals[name])}" for name in KEY_SIGNALS if name in signals
        )
        mode = step.get("failure_mode") or "-"
        head = Text(f"[{step['index']:>2}] {author.upper()} ", style=f"bold {style}")
        head.append(f"{step['decision']}", style="bold")
        head.append(f"  failure={mode}  {step['latency_s'] * 1000:.0f} ms  {shown}", style="dim")
        if step.get("fallback"):
            head.append(f"  fallback={step['fallback']}", style="yellow")
        self.console.print(head)
        body = step["text"].rstrip("\n") or "(empty step)"
        self.console.print(Text("     " + body.replace("\n", "\n     ")))
        if step.get("draft_text"):
            draft = step["draft_text"].rstrip("\n")
            self.console.print(Text(f"     (SRM draft replaced: {draft})", style="dim strike"))

    def withdrawn(self, step: dict[str, Any]) -> None:
        """Print that a committed step was withdrawn by a rollback (the LRM rewrites it next)."""
        who = step["author"].upper()
        line = f"[{step['index']:>2}] {who} step withdrawn: the LRM rewrites it"
        self.console.print(Text(line, style="bold yellow"))

    def summary(self, result: RunResult) -> None:
        """Print the answer, wall time and per-model tokens."""
        answer = result.answer
        correct = result.correct
        verdict = "" if correct is None else ("  (correct)" if correct else "  (wrong)")
        self.console.print(
            Text(
                f"Answer: {answer if answer is not None else '(none)'}{verdict}", style="bold green"
            )
        )
        table = Table(show_header=True, header_style="bold")
        for column in ("model", "prefill tokens", "decode tokens", "steps written"):
            table.add_column(column, justify="right")
        steps = result.steps
        for model, counts in result.usage.items():
            written = sum(1 for s in steps if s["author"] == model)
            table.add_row(
                model, str(counts["prefill_tokens"]), str(counts["decode_tokens"]), str(written)
            )
        self.console.print(table)
        self.console.print(
            f"latency {result.wall_s:.2f} s, {len(steps)} steps, stop: {result.stop_reason}, "
            f"answer by {result.answer_author or '-'}"
        )
