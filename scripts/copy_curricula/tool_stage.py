"""Experiment: can the shipped LRM learn to copy tool calls? Variants of a tools-heavy stage."""

import math
import sys
import time
import types

import torch

torch.set_num_threads(1)
from transformers import AutoModelForCausalLM

from langchain_rankguide.demo import skills
from langchain_rankguide.demo.mixture import Mixture, encode_chat
from langchain_rankguide.demo.tokenizer import build_tokenizer
from langchain_rankguide.demo.tools import _string_value, made_up_word, make_dialogue
from langchain_rankguide.demo.train import SYSTEM_PROMPTS, BatchStream, default_models_dir

variant, steps, lr, batch = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
src = sys.argv[5] if len(sys.argv) > 5 else str(default_models_dir() / "lrm")
tok = build_tokenizer()
model = AutoModelForCausalLM.from_pretrained(src)
torch.manual_seed(0)


def echo(rng):
    parts = []
    for _ in range(rng.randint(1, 4)):
        r = rng.random()
        parts.append(
            made_up_word(rng, (1, 3)) + ("_" + made_up_word(rng) if rng.random() < 0.3 else "")
            if r < 0.5
            else str(rng.randint(0, 999))
            if r < 0.7
            else _string_value(rng, made_up=True)
        )
    x = " ".join(parts)
    return encode_chat(
        tok, [{"role": "user", "content": f"Repeat: {x}"}, {"role": "assistant", "content": x}]
    )


mix = Mixture(
    tok,
    {"own": 0.35, "tools": 0.5, "takeover_checks": 0.15},
    keyed_checks=True,
    system_prompts=SYSTEM_PROMPTS,
)


def tools(rng):
    d = make_dialogue(rng)
    return encode_chat(tok, d.messages, tools=d.tools)


from echo_data import make_echo

mix3 = Mixture(
    tok,
    {"own": 0.25, "tools": 0.3, "takeover_checks": 0.05},
    keyed_checks=True,
    system_prompts=SYSTEM_PROMPTS,
)


def echo_ctx(rng):
    ctx = make_dialogue(rng, with_result=False).tools if rng.random() < 0.7 else None
    return encode_chat(tok, make_echo(rng), tools=ctx)


fns = {
    "tools": tools,
    "e3": lambda rng: echo_ctx(rng) if rng.random() < 0.4 else mix3(rng),
    "echo": lambda rng: echo(rng) if rng.random() < 0.5 else tools(rng),
    "mixed": mix,
    "mixecho": lambda rng: echo(rng) if rng.random() < 0.1 else mix(rng),
}
stream = BatchStream(tok, seed=777, batch=batch, system_rate=0.0, example_fn=fns[variant])
opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
loaded = types.SimpleNamespace(tokenizer=tok, model=model)


def evaluate(step):
    model.eval()
    t = time.time()
    r = skills.tool_call_accuracy(loaded, 40, seed=99, max_new_tokens=90)
    print(f"EVAL step {step} tool calls {r} ({time.time() - t:.0f}s)", flush=True)
    model.train()


model.train()
began = time.process_time()
running = 0
for step in range(1, steps + 1):
    f = min(1, step / 20) * 0.5 * (1 + math.cos(math.pi * step / steps))
    for g in opt.param_groups:
        g["lr"] = lr * f
    ids, _, labels = stream.next()
    loss = model(input_ids=ids, labels=labels).loss
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    running = loss.item() if step == 1 else 0.9 * running + 0.1 * loss.item()
    if step % 20 == 0 or step == 1:
        print(
            f"step {step} loss {running:.4f} cpu {time.process_time() - began:.0f}s width {ids.shape[1]}",
            flush=True,
        )
    if step % 300 == 0:
        evaluate(step)
from langchain_rankguide.demo.train import accuracy, greedy_traces, make_problems

model.eval()
probs = make_problems(128, seed=0, split="calibration")
print("ARITH", accuracy(probs, greedy_traces(model, tok, probs, max_new_tokens=360)), flush=True)
model.save_pretrained(sys.argv[6] if len(sys.argv) > 6 else f"out_{variant}_{lr}_{batch}")
