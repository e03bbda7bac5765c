"""Cha et al.'s recipe, as published: instance-wise unlearning for models whose training data
Lethe does not hold (Cha, Cho, Hwang, Lee, Moon, Lee, "Learning to Unlearn: Instance-wise
Unlearning for Pre-trained Classifiers", AAAI 2024, arXiv 2301.11578).

Per SGD step, the loss of the paper's method (its public code, github.com/csm9493/L2UL,
main_unlearn_cifar10_mixed_label_resnet18.py):

    L = -CE(f(x_f), y_f) * |B_f| / (|B_f| + |B_adv|)          (gradient ascent on D_f)
        + CE(f(x_adv), y_adv) * |B_adv| / (|B_f| + |B_adv|)    (adversarial examples, target labels)
        + lambda * sum_i W_i (theta_i - theta0_i)^2 / 2          (inverted MAS importance anchor)

stopping as soon as every forget instance is misclassified (checked after every step). The
adversarial examples are targeted L2 PGD from the original model towards random other
classes (models/attacks.py); W is the MAS importance of each weight on D_f, min-max
normalised and inverted (models/importance.py), so the weights that carry D_f move freely.
For ``relabel`` the first term becomes +CE(f(x_f), y_target) (the paper's second objective).

``paper_full`` is the method; ``paper_ga`` (ascent only) and ``paper_ga_adv`` (no anchor)
are the paper's ablations. Lethe's own method, for models whose data it holds, is
``models/unlearn/lethe.py``.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from ..attacks import random_targets, scaled_eps, targeted_l2_pgd
from ..importance import anchor_penalty, inverted_normalised, mas_importance
from .common import device_of, freeze_batchnorm, input_clip, logits_of, num_classes, runner_up
from .registry import ProgressFn, UnlearnRequest, UnlearnResult


@dataclass
class PaperConfig:
    """Defaults of the paper's public CIFAR-10 run (github.com/csm9493/L2UL, run_unlearn_cifar_imagenet.sh:
    --unlearn-lr 0.001 --reg-lamb 1.0 --pgd-eps 4.0 --num-adv-images 20; SGD momentum 0.9, weight decay
    1e-4, forget batch 32, adversarial batch 256, 100 PGD iterations)."""

    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    forget_batch: int = 32
    adv_batch: int = 256
    adv_per_instance: int = 20
    pgd_steps: int = 100
    eps_at_cifar: float = 4.0  # scaled to the input size by attacks.scaled_eps
    lam: float = 1.0
    max_steps: int = 500
    use_adv: bool = True
    use_importance: bool = True


def make_adversarial(model, x, y, *, per_instance, pgd_steps, eps, step_size=None, seed=0):
    """Adversarial examples from the *original* model, each labelled with its target class."""
    gen = torch.Generator().manual_seed(seed)
    targets = random_targets(y, num_classes(model), per_instance, gen).to(x.device)
    x_rep = x.repeat_interleave(per_instance, dim=0)
    x_adv = targeted_l2_pgd(model, x_rep, targets, eps=eps, steps=pgd_steps, step_size=step_size,
                            clip=input_clip(x), generator=gen)
    return x_adv, targets


def paper_unlearn(model: nn.Module, req: UnlearnRequest, cfg: PaperConfig,
                  progress: ProgressFn | None = None) -> UnlearnResult:
    t0 = time.perf_counter()
    model = copy.deepcopy(model)
    dev = device_of(model)
    xf, yf = req.forget_x.to(dev), req.forget_y.to(dev)
    relabel = req.objective == "relabel"
    gen = torch.Generator().manual_seed(req.seed)
    if relabel:
        targets = (req.target_labels.to(dev) if req.target_labels is not None
                   else runner_up(logits_of(model, xf), yf))

    stats = {"method_family": "paper", "adv_examples": 0}
    x_adv = y_adv = None
    if cfg.use_adv:
        if progress:
            progress("adversarial examples", 0.0)
        x_adv, y_adv = make_adversarial(model, xf, yf, per_instance=cfg.adv_per_instance,
                                        pgd_steps=cfg.pgd_steps, eps=scaled_eps(xf.shape[1:], cfg.eps_at_cifar),
                                        seed=req.seed)
        stats["adv_examples"] = len(x_adv)
    weights = anchor = None
    if cfg.use_importance:
        if progress:
            progress("weight importance", 0.0)
        weights = inverted_normalised(mas_importance(model, xf))
        anchor = {n: p.detach().clone() for n, p in model.named_parameters()}

    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    model.train()
    freeze_batchnorm(model)

    def done() -> bool:
        pred = logits_of(model, xf).argmax(1)
        return bool((pred == targets).all()) if relabel else bool((pred != yf).all())

    steps = 0
    while not done() and steps < cfg.max_steps:
        order = torch.randperm(len(xf), generator=gen)
        for start in range(0, len(xf), cfg.forget_batch):
            idx = order[start:start + cfg.forget_batch].to(dev)
            bf = len(idx)
            out_f = model(xf[idx])
            loss_f = F.cross_entropy(out_f, targets[idx]) if relabel else -F.cross_entropy(out_f, yf[idx])
            loss = loss_f
            if x_adv is not None:
                a_idx = torch.randint(0, len(x_adv), (min(cfg.adv_batch, len(x_adv)),), generator=gen).to(dev)
                ba = len(a_idx)
                loss = loss_f * bf / (bf + ba) + F.cross_entropy(model(x_adv[a_idx]), y_adv[a_idx]) * ba / (bf + ba)
            if weights is not None:
                loss = loss + cfg.lam * anchor_penalty(model, anchor, weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            if progress:
                progress("unlearning", min(steps / cfg.max_steps, 1.0))
            if done() or steps >= cfg.max_steps:
                break
    model.eval()
    finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    stats.update({"steps": steps, "converged": done() if finite else False, "finite": finite,
                  "seconds": time.perf_counter() - t0})
    return UnlearnResult(model, stats)


def paper_ga(model, req, progress=None):
    """Ablation: gradient ascent on D_f only."""
    return paper_unlearn(model, req, PaperConfig(use_adv=False, use_importance=False, **req.options), progress)


def paper_ga_adv(model, req, progress=None):
    """Ablation: gradient ascent + adversarial examples."""
    return paper_unlearn(model, req, PaperConfig(use_importance=False, **req.options), progress)


def paper_full(model, req, progress=None):
    """The full published method: gradient ascent + adversarial examples + MAS importance."""
    return paper_unlearn(model, req, PaperConfig(**req.options), progress)
