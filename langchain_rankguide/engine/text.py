"""Token/text bookkeeping: incremental detokenisation and encoding text that continues a context."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

_REPLACEMENT = "\ufffd"


def decode(tokenizer: Any, ids: Sequence[int]) -> str:
    """Decode ids exactly: special tokens kept, no clean-up of spaces."""
    return str(
        tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)
    )


class IncrementalDetokenizer:
    """Turn generated ids into text one token at a time, as the full decode would.

    Decoding tokens one by one is wrong for tokenizers whose pieces depend on neighbours
    (SentencePiece's leading space, byte-level pieces of one character): each new token is
    decoded together with a few tokens before it, and text is released only once it no longer
    ends in an incomplete character. Tokens in ``silent_ids`` release no text (a chat reply
    leaves out the role markers a model may babble) but still give their neighbours context.

    Example:
        >>> detok = IncrementalDetokenizer(tokenizer, context_ids=prompt_ids)  # doctest: +SKIP
        >>> detok.add(token_id)  # doctest: +SKIP
        'Hello'
    """

    def __init__(
        self,
        tokenizer: Any,
        context_ids: Sequence[int] = (),
        context: int = 4,
        silent_ids: Collection[int] = (),
    ) -> None:
        self._tokenizer = tokenizer
        self._silent = silent_ids
        self._ids: list[int] = list(context_ids[-context:]) if context else []
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self.text = ""
        self.offsets: list[int] = []
        """``offsets[i]``: length of :attr:`text` once token ``i`` was released."""

    def add(self, token_id: int) -> str:
        """Append one token; return the text it released (possibly empty)."""
        self._ids.append(token_id)
        prefix_text = decode(self._tokenizer, self._ids[self._prefix_offset : self._read_offset])
        full_text = decode(self._tokenizer, self._ids[self._prefix_offset :])
        new_text = ""
        if len(full_text) > len(prefix_text) and not full_text.endswith(_REPLACEMENT):
            new_text = full_text[len(prefix_text) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
        if token_id in self._silent:
            new_text = ""
        self.text += new_text
        self.offsets.append(len(self.text))
        return new_text


def encode_continuation(tokenizer: Any, text: str) -> list[int]:
    """Encode ``text`` that continues an existing context, without special or prefix tokens.

    Plain ``encode`` is right for byte-level tokenizers. SentencePiece-style tokenizers add a
    word-start marker to the first piece of a standalone string; for those, the text is
    encoded after an anchor and the anchor's ids are removed.
    """
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    if not text or decode(tokenizer, ids) == text:
        return ids
    anchor = "\n"
    anchor_ids = list(tokenizer.encode(anchor, add_special_tokens=False))
    both = list(tokenizer.encode(anchor + text, add_special_tokens=False))
    if anchor_ids and both[: len(anchor_ids)] == anchor_ids:
        return both[len(anchor_ids) :]
    return ids


def token_pieces(tokenizer: Any, text: str) -> list[str]:
    """``text`` cut where its tokens fall: one piece per token, as they decode incrementally.

    For streaming text that was generated as a whole (a committed step) token by token. The
    pieces always join to ``text``: a tail the tokens do not reach becomes the last piece, and
    text whose tokens do not decode back to it comes as one piece. Without a tokenizer
    (``None``: a remote model) the text is one piece.
    """
    if not text:
        return []
    if tokenizer is None:
        return [text]
    detok = IncrementalDetokenizer(tokenizer)
    ids = encode_continuation(tokenizer, text)
    pieces = [piece for token in ids if (piece := detok.add(token))]
    if not text.startswith(detok.text):
        return [text]
    if len(detok.text) < len(text):
        pieces.append(text[len(detok.text) :])
    return pieces


def find_marker(
    text: str, markers: Sequence[str], searched_upto: int = 0
) -> tuple[int, str] | None:
    """Return ``(end_index, marker)`` of the earliest marker occurrence in ``text``.

    Only occurrences ending after ``searched_upto`` are considered, so a caller that grows
    ``text`` token by token scans each character a bounded number of times.
    """
    best: tuple[int, str] | None = None
    for marker in markers:
        if not marker:
            continue
        start = text.find(marker, max(0, searched_upto - len(marker) + 1))
        if start >= 0:
            end = start + len(marker)
            if best is None or end < best[0]:
                best = (end, marker)
    return best
