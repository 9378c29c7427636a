"""Echo-only curriculum: does induction (copying) form, and how fast?"""

import math
import random
import sys
import time

import torch

torch.set_num_threads(1)
from transformers import AutoModelForCausalLM
from echo_data import echo_phrase, make_echo

from langchain_rankguide.demo.mixture import encode_chat
from langchain_rankguide.demo.tokenizer import build_tokenizer
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


def echo(rng):
    return encode_chat(tok, make_echo(rng))


def echo_acc(n=60):
    rng = random.Random("echo-eval")
    hits = 0
    model.eval()
    for _ in range(n):
        x = echo_phrase(rng)
        p = tok.apply_chat_template(
            [{"role": "user", "content": f"Repeat: {x}"}],
            tokenize=False,
            add_generation_prompt=True,
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
        got = tok.decode(o[0, ids.shape[1] :], skip_special_tokens=True)
        hits += got.strip() == x
    model.train()
    return hits / n, got, x


stream = BatchStream(tok, seed=778, batch=batch, system_rate=0.0, example_fn=echo)
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
    if step % 50 == 0 or step == 1:
        print(f"step {step} loss {running:.4f} cpu {time.process_time() - began:.0f}s", flush=True)
    if step % 250 == 0:
        print("ECHO", step, echo_acc(), flush=True)
model.save_pretrained(out)
