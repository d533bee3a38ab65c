"""Quickstart: wrap your own two models (same architecture, images -> logits) in AdaWiSE. Seconds on CPU."""
import copy

import torch

import adawise

torch.manual_seed(0)
zs = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10))  # your zero-shot model
ft = copy.deepcopy(zs)  # your fine-tuned model (here: a perturbed copy)
with torch.no_grad():
    [p.add_(0.05 * torch.randn_like(p)) for p in ft.parameters()]
engine = adawise.AdaWiSE(zs, ft)  # one live interpolated model; zs and ft are never modified
for t in range(3):
    logits = engine(torch.rand(32, 3, 16, 16))  # picks alpha on this batch, predicts at it, keeps its state
    print(f"batch {t}: alpha={engine.alpha:.3f} logits={tuple(logits.shape)} info={engine.info}")
