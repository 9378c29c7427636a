"""CPU time of one training step of the LRM's shape (16 x 64) on tool dialogues, batch 16.

The mean over steps 11-40 of a fresh model (one thread); docs/demo.md, "What it would cost
the LRM".

    python lrm_step_cost.py
"""

import time

import torch

torch.set_num_threads(1)
from langchain_rankguide.demo.mixture import Mixture
from langchain_rankguide.demo.tokenizer import build_tokenizer
from langchain_rankguide.demo.train import LRM_RECIPE, BatchStream, _optimizer, build_model

tok = build_tokenizer()
torch.manual_seed(0)
model = build_model(LRM_RECIPE, tok)
model.train()
opt = _optimizer(model, LRM_RECIPE)
tools = Mixture(tok, {"tools": 1.0}, keyed_checks=True)
stream = BatchStream(tok, seed=777, batch=16, system_rate=0.0, example_fn=tools)
for step in range(1, 41):
    if step == 11:
        began = time.process_time()
    ids, _mask, labels = stream.next()
    loss = model(input_ids=ids, labels=labels).loss
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
print("16x64 tools batch 16: CPU-s a step", round((time.process_time() - began) / 30, 3))
