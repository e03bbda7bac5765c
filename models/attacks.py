"""Targeted L2 projected gradient descent (Madry et al. 2018), as used by Cha et al.
(AAAI 2024, §"Adversarial examples") to hold the decision boundary: each adversarial
example is pushed towards a random target class != its true label and then trained
*with that target label*.

eps scaling: the paper uses eps = 4.0 (L2) on [0,1] pixels of 3x32x32 inputs (d = 3072),
i.e. a per-coordinate RMS perturbation of 4/sqrt(3072) = 0.072. We keep that RMS for any
input size: eps(d) = 4.0 * sqrt(d / 3072)  (MNIST 28x28: 2.02; digits 8x8: 0.58;
Adult's 108 standardised features: 0.75). The step is eps/40 (paper: 0.1 for eps 4).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PAPER_EPS = 4.0
PAPER_DIM = 3 * 32 * 32


def scaled_eps(input_shape, eps_at_cifar: float = PAPER_EPS) -> float:
    return eps_at_cifar * math.sqrt(math.prod(input_shape) / PAPER_DIM)


def random_targets(y: torch.Tensor, num_classes: int, per_instance: int, generator: torch.Generator) -> torch.Tensor:
    """`per_instance` uniformly random classes != y for each label (shape [n*per_instance])."""
    y = y.repeat_interleave(per_instance).cpu()
    # draw from the num_classes-1 other classes, then skip over the true label: uniform, never equal
    r = torch.randint(0, num_classes - 1, y.shape, generator=generator)
    return r + (r >= y).long()


def _l2_normalise(v: torch.Tensor) -> torch.Tensor:
    flat = v.flatten(1).norm(dim=1).clamp_min(1e-12)
    return v / flat.view(-1, *([1] * (v.dim() - 1)))


def targeted_l2_pgd(model, x: torch.Tensor, target: torch.Tensor, *, eps: float, steps: int = 100,
                    step_size: float | None = None, clip: tuple[float, float] | None = (0.0, 1.0),
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Minimise CE(f(x+delta), target) s.t. ||delta||_2 <= eps, random start in the ball."""
    step_size = step_size if step_size is not None else eps / 40
    was_training = model.training
    model.eval()
    device = x.device
    noise = torch.randn(x.shape, generator=generator).to(device)
    radius = torch.rand(len(x), generator=generator).to(device) * eps
    delta = _l2_normalise(noise) * radius.view(-1, *([1] * (x.dim() - 1)))
    for _ in range(steps):
        delta.requires_grad_(True)
        xa = x + delta
        if clip:
            xa = xa.clamp(*clip)
        loss = F.cross_entropy(model(xa), target)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = delta - step_size * _l2_normalise(grad)  # descend: move towards the target
            norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
            delta = delta * (eps / norms).clamp(max=1.0).view(-1, *([1] * (x.dim() - 1)))
    model.train(was_training)
    out = (x + delta).detach()
    return out.clamp(*clip) if clip else out
