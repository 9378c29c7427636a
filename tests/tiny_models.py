"""Tiny models and tokenizers built in code for engine tests: nothing is downloaded.

The tokenizer fuses the delimiter with neighbours (".\\n\\n" before, "\\n\\nW" after), so the
engine's fused-boundary paths run. The model is trained for a few hundred steps on a short
stepped text, so greedy decoding produces delimiters, fused tokens and EOS deterministically.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

FUSED = [".\n\n", "\n\nW", "\n\n"]
SPECIALS = ["<unk>", "<s>", "</s>"]
TRAIN_TEXT = (
    "we add 12 and 3.\n\nWait check 15.\n\nso 15 then 4\n\nWe get 19.\n\nWait ok\n\ndone 19.\n\n"
)


def build_tokenizer(folder: Path) -> None:
    """Save a fast tokenizer with fused delimiter tokens and a chat template to ``folder``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable) - set("\r\x0b\x0c"))
    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *FUSED, *chars])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    pattern = "|".join(["\\.\\n\\n", "\\n\\nW", "\\n\\n", "[\\s\\S]"])
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
    )
    fast.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant: {% endif %}"
    )
    fast.save_pretrained(folder)


def build_model(folder: Path, *, layers: int = 2, hidden: int = 32, train_steps: int = 250) -> None:
    """Train a tiny Llama on TRAIN_TEXT (a few seconds on one thread) and save it to ``folder``."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "go"}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer.encode(prompt + TRAIN_TEXT * 2, add_special_tokens=False)
    ids.append(tokenizer.eos_token_id)
    batch = torch.tensor([ids])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(train_steps):
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)


def build_tiny_pair(root: Path) -> tuple[Path, Path]:
    """Build a small and a larger tiny model sharing the test tokenizer; return their folders."""
    small, large = root / "tiny-srm", root / "tiny-lrm"
    for folder, layers, hidden in ((small, 2, 32), (large, 3, 48)):
        folder.mkdir(parents=True, exist_ok=True)
        build_tokenizer(folder)
        build_model(folder, layers=layers, hidden=hidden)
    return small, large
