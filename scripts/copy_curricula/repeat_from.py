"""Content-addressed copying: 'Repeat from <word>' must find the word in a text and continue."""

import math
import random
import sys
import time

import torch

torch.set_num_threads(1)
from transformers import AutoModelForCausalLM

from langchain_rankguide.demo.mixture import encode_chat
from langchain_rankguide.demo.tokenizer import build_tokenizer
from langchain_rankguide.demo.tools import _string_value, made_up_word, make_dialogue
from langchain_rankguide.demo.train import BatchStream

steps, lr, batch, src, out = (
    int(sys.argv[1]),
    float(sys.argv[2]),
    int(sys.argv[3]),
    sys.argv[4],
    sys.argv[5],
)
tok = build_tokenizer()
model = AutoModelForCausalLM.from_pretrained(src)
torch.manual_seed(0)


def word(rng):
    r = rng.random()
    if r < 0.6:
        w = made_up_word(rng, (1, 3))
        return w + ("_" + made_up_word(rng) if rng.random() < 0.3 else "")
    return (
        str(rng.randint(0, 999)) if r < 0.8 else _string_value(rng, made_up=True).replace(" ", "-")
    )


def task(rng):
    words = []
    while len(words) < rng.randint(4, 14):
        w = word(rng)
        if w not in words:
            words.append(w)
    k = rng.randrange(len(words) - 1)
    end = min(len(words), k + rng.randint(2, 4))
    tools = make_dialogue(rng, with_result=False).tools if rng.random() < 0.5 else None
    msgs = [
        {"role": "user", "content": f"Text: {' '.join(words)}\nRepeat from {words[k]}."},
        {"role": "assistant", "content": " ".join(words[k:end])},
    ]
    return msgs, tools, " ".join(words[k:end])


def enc(rng):
    msgs, tools, _ = task(rng)
    return encode_chat(tok, msgs, tools=tools)


def acc(n=40):
    rng = random.Random("ind-eval")
    hits = 0
    model.eval()
    for _ in range(n):
        msgs, tools, want = task(rng)
        p = tok.apply_chat_template(
            msgs[:1], tools=tools, tokenize=False, add_generation_prompt=True
        )
        ids = torch.tensor([tok.encode(p, add_special_tokens=False)])
        with torch.inference_mode():
            o = model.generate(
                input_ids=ids,
                max_new_tokens=60,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        got = tok.decode(o[0, ids.shape[1] :], skip_special_tokens=True).strip()
        hits += got == want
    model.train()
    return hits / n, got, want


stream = BatchStream(tok, seed=780, batch=batch, system_rate=0.0, example_fn=enc)
opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
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
    if step % 25 == 0 or step == 1:
        print(f"step {step} loss {running:.4f} cpu {time.process_time() - began:.0f}s", flush=True)
    if step % 200 == 0:
        print("IND", step, acc(), flush=True)
model.save_pretrained(out)
