"""What both instance-wise methods (``paper.py``, Cha et al.'s recipe; ``lethe.py``, Lethe's
method) need from a network: its device, its logits without touching BatchNorm or dropout,
the runner-up class, frozen BatchNorm statistics, and the input box for adversarial steps."""
from __future__ import annotations

import torch
from torch import nn

from ..architectures import head_of


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def freeze_batchnorm(model: nn.Module) -> None:
    """Tiny forget batches would corrupt BatchNorm running statistics: keep them fixed."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def input_clip(x: torch.Tensor) -> tuple[float, float] | None:
    """Images live in [0, 1]; standardised tabular data has no box."""
    return (0.0, 1.0) if x.dim() == 4 and float(x.min()) >= 0.0 and float(x.max()) <= 1.0 else None


@torch.no_grad()
def logits_of(model, x):
    was = model.training
    model.eval()
    out = model(x)
    model.train(was)
    return out


def runner_up(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    masked = logits.clone()
    masked[torch.arange(len(y)), y] = float("-inf")
    return masked.argmax(1)


def num_classes(model: nn.Module) -> int:
    return head_of(model).out_features
