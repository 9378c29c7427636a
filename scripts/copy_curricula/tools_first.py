"""Experiment: does a copy skill learned first survive the arithmetic that follows?

Phase A trains a fresh Llama (the LRM's width, 4 layers) on tool dialogues only, as
`tokenizer_ab.py chars` does, and saves it; phase B continues a saved phase-A model on own
arithmetic traces with a share `replay` of tool dialogues. Each phase has its own schedule
(warm-up 50, cosine). Exact tool calls (40 held-out dialogues, seed 99, greedy, model alone) and
greedy accuracy on 128 calibration problems are printed at each check.

    python tools_first.py A 3000 out_tools_first                 # phase A, saved
    python tools_first.py B 1000 out_tools_first 0.0 > tf_0.log  # arithmetic only
    python tools_first.py B 1000 out_tools_first 0.2 > tf_20.log # with 20% tool dialogues
"""

import math
import sys
import time
import types

import torch

torch.set_num_threads(1)
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from langchain_rankguide.demo import skills
from langchain_rankguide.demo.mixture import Mixture
from langchain_rankguide.demo.task import make_problems
from langchain_rankguide.demo.tokenizer import build_tokenizer
from langchain_rankguide.demo.train import SYSTEM_PROMPTS, BatchStream, accuracy, greedy_traces

phase, steps, folder = sys.argv[1], int(sys.argv[2]), sys.argv[3]
replay = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
checks = (steps // 2, steps) if phase == "B" else (2 * steps // 3, steps)

tok = build_tokenizer()
torch.manual_seed(0)
if phase == "A":
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=1024,
            bos_token_id=None,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            tie_word_embeddings=True,
        )
    )
    kinds, batch, seed = {"tools": 1.0}, 16, 777
else:
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    kinds = {"own": 1.0 - replay, "tools": replay} if replay > 0 else {"own": 1.0}
    batch, seed = 32, 778
loaded = types.SimpleNamespace(tokenizer=tok, model=model)
problems = make_problems(128, seed=0, split="calibration")
began = time.process_time()


def evaluate(step):
    model.eval()
    rates = skills.tool_call_rates(loaded, 40, 99, max_new_tokens=90)
    acc = accuracy(problems, greedy_traces(model, tok, problems, max_new_tokens=360))
    cpu = time.process_time() - began
    print(
        f"EVAL {phase} step {step} exact {rates['exact']} name {rates['name']} "
        f"arithmetic {acc:.3f} cpu {cpu:.0f}s",
        flush=True,
    )
    model.train()


mixture = Mixture(tok, kinds, keyed_checks=True, system_prompts=SYSTEM_PROMPTS)
stream = BatchStream(tok, seed=seed, batch=batch, system_rate=0.0, example_fn=mixture)
opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0, betas=(0.9, 0.95))
model.train()
if phase == "B":
    evaluate(0)
running = 0.0
for step in range(1, steps + 1):
    f = min(1, step / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
    for g in opt.param_groups:
        g["lr"] = 2e-3 * f
    ids, _mask, labels = stream.next()
    loss = model(input_ids=ids, labels=labels).loss
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    running = loss.item() if step == 1 else 0.95 * running + 0.05 * loss.item()
    if step % 100 == 0:
        cpu = time.process_time() - began
        print(f"{phase} step {step} loss {running:.4f} cpu {cpu:.0f}s", flush=True)
    if step in checks:
        evaluate(step)
if phase == "A":
    model.save_pretrained(folder)
