r"""The demo models' tokenizer: printable ASCII characters, a few whole words and fused delimiters.

Built with the ``tokenizers`` library and wrapped as a
:class:`~transformers.PreTrainedTokenizerFast`, so it saves next to the weights and loads
with ``AutoTokenizer.from_pretrained`` like any real model's tokenizer.

Design:

* Every printable ASCII character (and tab / newline) is a token; any other character is
  written as its UTF-8 bytes (``<0xE4><0xBD><0xA0>`` for "你", byte fallback as in Llama's
  tokenizer), so ``decode(encode(text)) == text`` for any text.
* A few whole words of the task vocabulary ("total", "Wait", "check", ...) are single tokens
  to keep sequences short.
* The step delimiter ``"\n\n"`` is a token of its own *and* fused with the character before
  it (``".\n\n"``, ``"=\n\n"``), as real BPE vocabularies do: a step ending in
  ``"total 33.\n\n"`` ends with the single token ``".\n\n"``.  This exercises the engine's
  rule of detecting the delimiter on decoded text, never on one token id.
* Tool-call markup and the JSON fragments of a tools block (``<tool_call>``,
  ``{"name": ``, ``"parameters": `` ...) are single tokens, so tool dialogues stay short.
* Chat template: ``<|role|>content<|end|>`` per message, no system message required.

Ids are stable across versions: the first :data:`V1_VOCAB_SIZE` ids are the first version's
vocabulary (the stage-1 models are trained on it), tool tokens and bytes come after.
"""

from __future__ import annotations

import re
import string
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
TOOL = "<|tool|>"
END = "<|end|>"
PAD = "<|pad|>"
UNK = "<|unk|>"

#: Special tokens, in id order (ids 0..6).
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, END, SYSTEM, USER, ASSISTANT, TOOL)

#: Multi-character tokens that fuse the step delimiter with what precedes it.
FUSED_TOKENS: tuple[str, ...] = (".\n\n", "=\n\n", ":\n\n", "\n\n")

#: Whole-word tokens (longest first where one is a prefix of another, see ``_split_pattern``).
WORD_TOKENS: tuple[str, ...] = (
    "Answer",
    "Multiply",
    "multiply",
    "Subtract",
    "subtract",
    "Divide",
    "divide",
    "correct",
    "result",
    "Start",
    "check",
    "Total",
    "total",
    "Wait",
    "What",
    "then",
    "Add",
    "add",
    "not",
    "the",
    "by",
    "is",
    "it",
    "at",
)

#: Single characters: printable ASCII plus tab and newline (no form feed etc.).
CHAR_TOKENS: tuple[str, ...] = (
    *(ch for ch in string.printable if ch not in "\x0b\x0c\r"),
    "\r",
)

CHAT_TEMPLATE = (
    "{%- macro render_content(content) -%}"
    "{%- if content is none -%}"
    "{%- elif content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part is string -%}{{ part }}"
    "{%- elif part.type == 'text' -%}{{ part.text }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- set ns = namespace(system_done=false) -%}"
    "{%- if messages and messages[0].role == 'system' -%}"
    "<|system|>{{ render_content(messages[0].content) }}"
    "{%- if tools -%}{{ '\\n' }}Tools: {{ tools | tojson }}{%- endif -%}<|end|>"
    "{%- set ns.system_done = true -%}"
    "{%- elif tools -%}"
    "<|system|>Tools: {{ tools | tojson }}<|end|>"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if loop.first and ns.system_done -%}"
    "{%- elif message.role == 'system' -%}"
    "<|system|>{{ render_content(message.content) }}<|end|>"
    "{%- elif message.role == 'user' -%}"
    "<|user|>{{ render_content(message.content) }}<|end|>"
    "{%- elif message.role == 'assistant' -%}"
    "<|assistant|>{{ render_content(message.content) }}"
    "{%- if message.tool_calls -%}{%- for call in message.tool_calls -%}"
    "{%- set fn = call.function if call.function is defined else call -%}"
    '<tool_call>{"name": {{ fn.name | tojson }}, "arguments": '
    "{%- if fn.arguments is string %} {{ fn.arguments }}"
    "{%- else %} {{ fn.arguments | tojson }}{%- endif -%}"
    "}</tool_call>"
    "{%- endfor -%}{%- endif -%}"
    "<|end|>"
    "{%- elif message.role == 'tool' -%}"
    "<|tool|>{{ render_content(message.content) }}<|end|>"
    "{%- else -%}"
    "<|{{ message.role }}|>{{ render_content(message.content) }}<|end|>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


#: Tool-call markup and frequent JSON fragments of an OpenAI-style tools block.
TOOL_TOKENS: tuple[str, ...] = (
    "<tool_call>",
    "</tool_call>",
    "Tools: ",
    '{"name": ',
    '"arguments": ',
    '{"type": "function", "function": ',
    '"description": ',
    '"parameters": ',
    '{"properties": ',
    '"required": ',
    '"type": "object"',
    '{"type": "integer"}',
    '{"type": "string"}',
    '"type": ',
)

#: Byte-fallback tokens, one per byte value, in byte order.
BYTE_TOKENS: tuple[str, ...] = tuple(f"<0x{value:02X}>" for value in range(256))

#: Size of the first version's vocabulary (special tokens, fused delimiters, words, characters).
V1_VOCAB_SIZE = len(dict.fromkeys((*SPECIAL_TOKENS, *FUSED_TOKENS, *WORD_TOKENS, *CHAR_TOKENS)))


def vocabulary() -> dict[str, int]:
    """Return the token-to-id map: the first version's tokens, then tool tokens, then bytes."""
    vocab: dict[str, int] = {}
    for token in (
        *SPECIAL_TOKENS,
        *FUSED_TOKENS,
        *WORD_TOKENS,
        *CHAR_TOKENS,
        *TOOL_TOKENS,
        *BYTE_TOKENS,
    ):
        if token not in vocab:
            vocab[token] = len(vocab)
    return vocab


def _split_pattern() -> str:
    r"""Regex that cuts text into vocabulary pieces, longest alternatives first.

    Oniguruma alternation takes the first alternative that matches at a position, so the
    multi-character pieces come before the one-character fallback ``[\s\S]``.
    """
    # Longest first (a token must win over its prefixes); ties by text, so the saved
    # tokenizer.json is the same in every process (set order varies with hash seeds).
    multi = sorted({*FUSED_TOKENS, *WORD_TOKENS, *TOOL_TOKENS}, key=lambda t: (-len(t), t))
    return "|".join(re.escape(piece) for piece in multi) + r"|[\s\S]"


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Build the demo tokenizer (deterministic: the same vocabulary and ids every time).

    Returns:
        A fast tokenizer with the chat template set, ``<|end|>`` as EOS and ``<|pad|>`` as
        padding (padding side left, as batched generation needs).
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # A BPE model without merges: ``ignore_merges`` maps every pre-tokenized piece that is in
    # the vocabulary straight to its id, and a character outside it falls back to its bytes.
    core = Tokenizer(
        models.BPE(
            vocab=vocabulary(), merges=[], unk_token=UNK, byte_fallback=True, ignore_merges=True
        )
    )
    core.pre_tokenizer = pre_tokenizers.Split(Regex(_split_pattern()), behavior="isolated")
    core.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    core.add_special_tokens(
        [AddedToken(tok, special=True, normalized=False) for tok in SPECIAL_TOKENS]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=END,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [SYSTEM, USER, ASSISTANT, TOOL]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
