"""MAS weight importance on the forget set (Aljundi et al. ECCV 2018), as Cha et al.
(AAAI 2024) use it: Omega_i = mean over x in D_f of |d ||f(x)||_2 / d theta_i| (label-free),
min-max normalised per tensor and inverted, W = 1 - norm(Omega): parameters that carry D_f
may move, the rest are anchored by lambda * sum_i W_i (theta_i - theta0_i)^2 / 2.
"""
from __future__ import annotations

import torch


def mas_importance(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-parameter mean |gradient of the logits' L2 norm| over the instances in x."""
    was_training = model.training
    model.eval()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    omega = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(len(x)):  # per-instance gradients: the absolute value is taken per example
        norm = model(x[i:i + 1]).norm(p=2, dim=1).sum()
        grads = torch.autograd.grad(norm, list(params.values()), allow_unused=True)
        for (n, _), g in zip(params.items(), grads):
            if g is not None:
                omega[n] += g.abs()
    model.train(was_training)
    return {n: o / max(len(x), 1) for n, o in omega.items()}


def inverted_normalised(omega: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """W = 1 - (Omega - min) / (max - min), per tensor (a constant tensor gets W = 1)."""
    out = {}
    for n, o in omega.items():
        lo, hi = o.min(), o.max()
        norm = (o - lo) / (hi - lo) if hi > lo else torch.zeros_like(o)
        out[n] = 1.0 - norm
    return out


def anchor_penalty(model, anchor: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum_i W_i (theta_i - theta0_i)^2 / 2."""
    total = None
    for n, p in model.named_parameters():
        if n in weights:
            term = (weights[n] * (p - anchor[n]) ** 2).sum() / 2
            total = term if total is None else total + term
    return total if total is not None else torch.zeros(())
