"""An example trainer plug-in for Lethe: a team's own training loop.

- augmentation: Gaussian input noise (rows of features) or random horizontal flips and
  padded random crops (images), drawn from the run's seeded generator;
- a cosine learning-rate schedule with linear warm-up (Loshchilov & Hutter, "SGDR", ICLR
  2017, eq. 5, without restarts), stepped every batch;
- label smoothing (Szegedy et al., "Rethinking the Inception Architecture", CVPR 2016, §7:
  q'(k) = (1 - eps) q(k) + eps / K);
- AdamW (Loshchilov & Hutter, ICLR 2019) and early stopping on the held-out split (the
  best epoch's weights are kept).

Lethe finds it through the entry point ``augmented = "lethe_augtrain:augmented"`` in the
group ``lethe.trainers``. The function receives a ``models.trainers.TrainContext`` and
returns its metrics; ``Params`` (pydantic) validates its parameters when a model is
registered with ``"recipe": {"trainer": "augmented", "trainer_params": {...}}``.
"""
from __future__ import annotations

import copy
import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(10, ge=1, le=500)
    batch_size: int = Field(64, ge=1, le=65536)
    lr: float = Field(3e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0)
    warmup_epochs: int = Field(1, ge=0, le=100)
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    augment: Literal["none", "noise", "flip_crop"] = "noise"
    noise_std: float = Field(0.05, ge=0.0, le=5.0)
    patience: int | None = Field(None, ge=1, description="stop after this many epochs without a better "
                                                          "held-out accuracy (None: train every epoch)")


def _augment(x: torch.Tensor, p: Params, g: torch.Generator) -> torch.Tensor:
    if p.augment == "noise" and p.noise_std > 0:
        return x + p.noise_std * torch.randn(x.shape, generator=g)
    if p.augment == "flip_crop" and x.ndim == 4:
        flip = torch.rand(len(x), generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        pad = 2
        padded = F.pad(x, (pad, pad, pad, pad))
        dx, dy = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=g))
        return padded[:, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]
    return x


@torch.no_grad()
def _accuracy(model, source, device) -> float:
    model.eval()
    right = total = 0
    for xb, yb in source.batches(1024, shuffle=False):
        right += int((model(xb.to(device)).argmax(1).cpu() == yb).sum())
        total += len(yb)
    model.train()
    return 100.0 * right / max(1, total)


def augmented(ctx) -> dict:
    """AdamW + cosine schedule with warm-up, label smoothing, augmentation, early stopping."""
    p: Params = ctx.params
    model, device, g = ctx.model, ctx.device, ctx.generator
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    per_epoch = max(1, math.ceil(len(ctx.data) / p.batch_size))
    total, warm = p.epochs * per_epoch, p.warmup_epochs * per_epoch

    def lr_at(step: int) -> float:
        if step < warm:
            return p.lr * (step + 1) / warm
        return 0.5 * p.lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    best, best_state, since, step, epoch = -1.0, None, 0, 0, 0
    model.train()
    for epoch in range(p.epochs):
        ctx.check_cancelled()
        for xb, yb in ctx.data.batches(p.batch_size, generator=g):
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            xb, yb = _augment(xb, p, g).to(device), yb.to(device)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb, label_smoothing=p.label_smoothing).backward()
            opt.step()
            step += 1
        ctx.progress("train", (epoch + 1) / p.epochs)
        if p.patience and ctx.heldout is not None and len(ctx.heldout):
            acc = _accuracy(model, ctx.heldout, device)
            if acc > best:
                best, best_state, since = acc, copy.deepcopy(model.state_dict()), 0
            else:
                since += 1
                if since >= p.patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    return {"epochs_run": epoch + 1, "steps": step, "best_heldout_accuracy": best if best >= 0 else None,
            "final_lr": lr_at(max(0, step - 1))}


augmented.Params = Params


def broken(ctx) -> dict:
    """A trainer that fails after its first step (tests: a failed run publishes nothing)."""
    opt = torch.optim.SGD(ctx.model.parameters(), lr=0.1)
    for xb, yb in ctx.data.batches(32, generator=ctx.generator):
        opt.zero_grad()
        F.cross_entropy(ctx.model(xb.to(ctx.device)), yb.to(ctx.device)).backward()
        opt.step()
        raise RuntimeError("out of memory on the team's loader (simulated)")
    return {}


def diverging(ctx) -> dict:
    """A trainer whose weights blow up (tests: non-finite weights are refused)."""
    with torch.no_grad():
        for p in ctx.model.parameters():
            p.mul_(float("inf"))
    return {"loss": float("nan")}
