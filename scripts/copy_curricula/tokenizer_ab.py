"""Experiment: does a tokenizer with syllable pieces let a small model learn to copy tool calls?

A fresh 4 x 64 Llama (the LRM's width) is trained on tool dialogues only, with the demo
tokenizer as shipped (`chars`: a made-up name is one token per character) or with every
consonant-vowel syllable of the made-up words as one more token (`syllables`: `dovira` is
`do vi ra`). Same data, seed, schedule and budget; every `--eval-every` steps, 40 held-out
dialogues (seed 99) are decoded greedily, alone: exact calls, right names, and argument values
found in the call whatever its name (the copy itself).

    python tokenizer_ab.py chars 3000 2e-3 16 > chars.log
    python tokenizer_ab.py syllables 3000 2e-3 16 > syllables.log
    python tokenizer_ab.py mixed 4000 2e-3 16 > mixed.log   # half own traces, half tools
"""

import math
import sys
import time
import types

import torch

torch.set_num_threads(1)
from transformers import LlamaConfig, LlamaForCausalLM

from langchain_rankguide.demo import skills
from langchain_rankguide.demo import tokenizer as demo_tokenizer
from langchain_rankguide.demo.mixture import encode_chat
from langchain_rankguide.demo.tools import _CONSONANTS, _VOWELS, make_dialogue
from langchain_rankguide.demo.train import BatchStream

variant, steps, lr, batch = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
eval_every = int(sys.argv[5]) if len(sys.argv) > 5 else 500
# Optional shape "layers x hidden x heads" (default 4x64x4, the runs of docs/demo.md).
layers, hidden, heads = (
    int(x) for x in (sys.argv[6] if len(sys.argv) > 6 else "4x64x4").split("x")
)

if variant == "syllables":
    pairs = [c + v for c in _CONSONANTS for v in _VOWELS]
    demo_tokenizer.TOOL_TOKENS = (
        *demo_tokenizer.TOOL_TOKENS,
        *pairs,
        *(p.capitalize() for p in pairs),
    )
tok = demo_tokenizer.build_tokenizer()
print(
    variant,
    f"{layers}x{hidden}x{heads}",
    "vocab",
    len(tok),
    tok.tokenize("get_dovira Kelumo"),
    flush=True,
)

torch.manual_seed(0)
config = LlamaConfig(
    vocab_size=len(tok),
    hidden_size=hidden,
    intermediate_size=4 * hidden,
    num_hidden_layers=layers,
    num_attention_heads=heads,
    num_key_value_heads=heads,
    max_position_embeddings=1024,
    bos_token_id=None,
    eos_token_id=tok.eos_token_id,
    pad_token_id=tok.pad_token_id,
    tie_word_embeddings=True,
)
model = LlamaForCausalLM(config)


def tools(rng):
    d = make_dialogue(rng)
    return encode_chat(tok, d.messages, tools=d.tools)


example_fn = tools
if variant == "mixed":  # the shipped tokenizer; half own arithmetic traces, half tool dialogues
    from langchain_rankguide.demo.mixture import Mixture
    from langchain_rankguide.demo.train import SYSTEM_PROMPTS

    example_fn = Mixture(
        tok, {"own": 0.5, "tools": 0.5}, keyed_checks=True, system_prompts=SYSTEM_PROMPTS
    )
stream = BatchStream(tok, seed=777, batch=batch, system_rate=0.0, example_fn=example_fn)
opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
loaded = types.SimpleNamespace(tokenizer=tok, model=model)


def copied_values(n=40, seed=99):
    """Share of expected argument values that appear in the model's call, whatever its name."""
    import random

    rng = random.Random(f"rankguide-demo:tool-eval:{seed}")
    found = total = 0
    for _ in range(n):
        d = make_dialogue(rng, with_result=False)
        prompt = tok.apply_chat_template(
            d.messages[:1], tools=d.tools, tokenize=False, add_generation_prompt=True
        )
        call = skills.parse_call(skills._reply_alone(loaded, prompt, d.tools, 90))
        values = list(call["arguments"].values()) if call else []
        for value in d.call["arguments"].values():
            total += 1
            found += value in values
    return found, total


def evaluate(step):
    model.eval()
    t = time.time()
    rates = skills.tool_call_rates(loaded, 40, 99, max_new_tokens=90)
    found, total = copied_values()
    print(
        f"EVAL step {step} exact {rates['exact']} name {rates['name']} "
        f"values copied {found}/{total} ({time.time() - t:.0f}s)",
        flush=True,
    )
    model.train()


model.train()
began = time.process_time()
running = 0.0
for step in range(1, steps + 1):
    f = min(1, step / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
    for g in opt.param_groups:
        g["lr"] = lr * f
    ids, mask, labels = stream.next()
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    running = loss.item() if step == 1 else 0.95 * running + 0.05 * loss.item()
    if step % 100 == 0 or step == 1:
        cpu = time.process_time() - began
        print(f"step {step} loss {running:.4f} cpu {cpu:.0f}s width {ids.shape[1]}", flush=True)
    if step % eval_every == 0:
        evaluate(step)
