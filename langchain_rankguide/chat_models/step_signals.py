"""Per-step signals of a streamed chat reply.

The reply's text is split at the step delimiter and each step measured with the signal registry
the router uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from langchain_rankguide.engine import StepToken

SIGNAL_WINDOW = 16
"""Tokens at a step's end whose hidden states feed the window signals."""


class StepSignals:
    """Split generated text into steps at the delimiter and compute the named signals of each.

    Args:
        names: signal registry names (empty: record nothing).
        delimiter: the text that closes a step.
    """

    def __init__(self, names: Sequence[str], delimiter: str) -> None:
        from langchain_rankguide.signals import SignalSettings

        self.names = tuple(names)
        self.delimiter = delimiter
        self.settings = SignalSettings()
        self.records: list[dict[str, Any]] = []
        """One record per closed step: index, text, tokens, signals, signal_notes."""
        self._reset()

    def _reset(self) -> None:
        self._text = ""
        self._tokens: list[StepToken] = []

    def add(self, token: StepToken) -> None:
        """Count a generated token (not EOS) and its text; close the step at the delimiter."""
        if not self.names:
            return
        self._tokens.append(token)
        self._text += token.text
        if self.delimiter in self._text:
            self.close()

    def close(self) -> None:
        """Finish the current step (if it has any token)."""
        if not self._tokens or not self.names:
            return
        from langchain_rankguide.signals import compute_signals

        values, notes = compute_signals(self.names, self._inputs(), self.settings)
        self.records.append(
            {
                "index": len(self.records),
                "text": self._text,
                "tokens": len(self._tokens),
                "signals": values,
                "signal_notes": notes,
            }
        )
        self._reset()

    def _inputs(self) -> Any:
        from langchain_rankguide.signals import SignalInputs

        tokens = self._tokens
        rows: dict[int, list[torch.Tensor]] = {}
        for token in tokens:
            for layer, state in token.hidden.items():
                rows.setdefault(layer, []).append(state)
        hidden = {layer: torch.cat(states) for layer, states in rows.items()}
        return SignalInputs(
            step_hidden=hidden,
            window_hidden={layer: states[-SIGNAL_WINDOW:] for layer, states in hidden.items()},
            first_token_logprobs=tokens[0].logprobs,
            token_logprobs=torch.tensor([t.logprob for t in tokens]),
            token_entropies=torch.tensor([float(t.entropy) for t in tokens]),
            text=self._text,
            previous_texts=[r["text"] for r in self.records],
            n_tokens=len(tokens),
        )
