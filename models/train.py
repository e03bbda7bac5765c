"""Deterministic trainer: the served base model and the retrain-from-scratch baseline
use the very same recipe, so "retrain without D_f" is a fair gold standard.

Same seed + same data => bit-identical weights on CPU (seeded init, seeded shuffling,
deterministic algorithms).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

from .device import get_device
from .nets import build_model

# epochs chosen so each dataset's default model is converged but quick on 2 CPU cores
DEFAULT_EPOCHS = {"cnn": 8, "mlp": 6, "resnet18": 15}


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def train_model(arch: str, x: torch.Tensor, y: torch.Tensor, *, input_shape, num_classes: int,
                seed: int = 0, epochs: int | None = None, batch_size: int = 64, lr: float = 1e-3,
                weight_decay: float = 0.0, device: torch.device | None = None,
                progress: Callable[[str, float], None] | None = None) -> nn.Module:
    """Train `arch` from scratch on (x, y) with Adam; returns the model in eval mode."""
    device = device or get_device()
    gen = seed_everything(seed)
    model = build_model(arch, input_shape, num_classes).to(device)
    epochs = epochs or DEFAULT_EPOCHS.get(arch, 8)
    fit(model, x, y, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        generator=gen, progress=progress)
    return model.eval()


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int = 64,
        lr: float = 1e-3, weight_decay: float = 0.0, generator: torch.Generator | None = None,
        progress: Callable[[str, float], None] | None = None) -> nn.Module:
    """Continue training `model` in place (also used by the exact methods on shards)."""
    device = next(model.parameters()).device
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(x)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
        if progress:
            progress("train", (epoch + 1) / epochs)
    return model.eval()


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits on CPU, computed in batches on the model's device, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = torch.cat([model(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]) \
        if len(x) else torch.empty(0)
    model.train(was_training)
    return out


def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return logits_of(model, x).argmax(1) if len(x) else torch.empty(0, dtype=torch.long)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy in percent (0.0 for an empty set)."""
    if len(x) == 0:
        return 0.0
    return float((predict(model, x) == y.cpu()).float().mean() * 100)
