"""PUMA: Performance Unchanged Model Augmentation (Wu, Hashemi, Srinivasa, AAAI 2022,
arXiv 2203.00846), on the last layer.

What the paper does (its section "Performance Unchanged Model Augmentation"; Fig. 1):
each training point i pulls the model along its own projection direction, the influence
direction -H^{-1} grad l_i of the reweighted optimum (the paper's Eq. 12, after the
influence functions of Koh & Liang, ICML 2017); removing the marked points alone moves the
model towards high loss of the performance criterion C (Fig. 1b); PUMA reweights the
remaining points so that their directions cancel that loss of C (Fig. 1c), and patches the
model linearly with the weighted sum of directions, without retraining. The paper claims the
result can "fool a membership attack" while keeping performance (abstract; its experiments).

Here, with per-example weights w (all 1 for the served model):
    J(theta; w) = sum_i w_i l(x_i, y_i; theta) + (mu/2) ||theta||^2
A small change dw moves the optimum by d theta = -H^{-1} sum_i dw_i grad l_i (Eq. 12's
directions, summed), H = Hessian of J at theta, kept at the original model (first order).
C (mean loss on the retained training data, or on a holdout set) then changes by
dC = sum_i dw_i I_i,  I_i = -grad C^T H^{-1} grad l_i, the influence of point i on C.

PUMA removes the marked points (dw_i = -1) and picks weights for the remaining data so
that C does not change: minimise ||dw_R||^2 subject to sum_R dw_j I_j = sum_F I_i and
|dw_j| <= box. We solve this equality-constrained least-norm problem in closed form and
enforce the box by clipping and redistributing (our choice of solver). The model is then
patched once, linearly: theta += -H^{-1} sum_i dw_i grad l_i. No retraining.

Approximations, stated: (1) only the final linear layer (``model.head``, or the layer
``lethe_head`` names) is patched, on the frozen penultimate features (``model.features``);
the paper patches the whole network. (2) The Hessian is the exact one of that layer's
convex problem, with damping mu > 0, not a network Hessian. (3) First order: H and the
gradients are taken at the original model.
For softmax cross-entropy on a linear layer the per-example gradients and the
Hessian-vector products have closed forms; H^{-1} v is solved by conjugate gradient.
On a convex problem (features fixed, theta at the optimum of J) the patch with
``reweight=False`` is the Newton step towards the exactly retrained model (tested).

Measured removal (full U-LiRA, ``bench/ulira.py``, docs/unlearning.md): the patched model
is not near retraining per example, so the catalogue marks PUMA ``serves_deletions=False``
and the planner serves a deletion that asks for it by exact retraining.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
import torch.nn.functional as F

from ..architectures import head_of
from .registry import UnlearnRequest, UnlearnResult


@torch.no_grad()
def _features(model: nn.Module, x: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    model.eval()
    dev = next(model.parameters()).device
    out = [model.features(x[i:i + batch].to(dev)).double().cpu() for i in range(0, len(x), batch)]
    h = torch.cat(out) if out else torch.empty(0, head_of(model).in_features, dtype=torch.float64)
    return torch.cat([h, torch.ones(len(h), 1, dtype=torch.float64)], 1)  # [h, 1]: bias as a column


def _theta(head: nn.Linear) -> torch.Tensor:
    return torch.cat([head.weight.detach().double().cpu(), head.bias.detach().double().cpu()[:, None]], 1)


def _probs(theta: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    return torch.softmax(h @ theta.T, 1)


def per_example_grads(theta, h, y) -> torch.Tensor:
    """grad of CE(theta h_i, y_i) wrt theta: (p_i - e_{y_i}) h_i^T, shape (n, C, d+1)."""
    r = _probs(theta, h)
    r[torch.arange(len(y)), y] -= 1.0
    return r[:, :, None] * h[:, None, :]


def mean_grad(theta, h, y) -> torch.Tensor:
    r = _probs(theta, h)
    r[torch.arange(len(y)), y] -= 1.0
    return r.T @ h / max(1, len(y))


def hvp(theta, h, mu: float):
    """v -> (sum_i Hessian of CE_i + mu I) v, closed form for softmax regression."""
    p = _probs(theta, h)

    def apply(v: torch.Tensor) -> torch.Tensor:
        z = h @ v.T                                  # (n, C)
        u = p * z - p * (p * z).sum(1, keepdim=True)  # (diag(p) - p p^T) z, row by row
        return u.T @ h + mu * v
    return apply


def conjugate_gradient(apply, b: torch.Tensor, iters: int = 200, tol: float = 1e-10) -> tuple[torch.Tensor, int]:
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum()
    b2 = (b * b).sum().clamp_min(1e-300)
    for k in range(iters):
        ap = apply(p)
        alpha = rs / (p * ap).sum()
        x += alpha * p
        r -= alpha * ap
        rs_new = (r * r).sum()
        if rs_new / b2 < tol:
            return x, k + 1
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x, iters


def min_norm_weights(I_r: torch.Tensor, target: float, box: float, rounds: int = 50) -> torch.Tensor:
    """argmin ||d||^2 s.t. d . I_r = target, |d_j| <= box (clip and redistribute)."""
    d = torch.zeros_like(I_r)
    free = torch.ones_like(I_r, dtype=torch.bool)
    for _ in range(rounds):
        rest = target - (d[~free] * I_r[~free]).sum()
        norm = (I_r[free] ** 2).sum()
        if norm <= 0:
            break
        d[free] = rest * I_r[free] / norm
        over = free & (d.abs() > box)
        if not bool(over.any()):
            break
        d[over] = box * d[over].sign()
        free &= ~over
    return d


def puma_delta(theta, h_r, y_r, h_f, y_f, *, mu: float, reweight: bool = True, box: float = 1.0,
               crit: tuple | None = None, cg_iters: int = 200):
    """The last-layer patch d theta and its diagnostics."""
    h_all, y_all = torch.cat([h_r, h_f]), torch.cat([y_r, y_f])
    H = hvp(theta, h_all, mu)
    g_r = per_example_grads(theta, h_r, y_r)
    g_f = per_example_grads(theta, h_f, y_f)
    dw_r = torch.zeros(len(y_r), dtype=theta.dtype)
    stats = {}
    if reweight and len(y_r):
        hc, yc = crit if crit is not None else (h_r, y_r)
        s, it_s = conjugate_gradient(H, mean_grad(theta, hc, yc), cg_iters)
        infl_r = -(g_r * s).sum((1, 2))           # I_j = -grad C^T H^-1 grad l_j
        infl_f = -(g_f * s).sum((1, 2))
        dw_r = min_norm_weights(infl_r, float(infl_f.sum()), box)
        stats.update(cg_iters_criterion=it_s, predicted_dc_removal=float(-infl_f.sum()),
                     predicted_dc_after=float(-infl_f.sum() + (dw_r * infl_r).sum()),
                     max_abs_weight_change=float(dw_r.abs().max()), reweighted=int((dw_r != 0).sum()))
    v = -g_f.sum(0) + (dw_r[:, None, None] * g_r).sum(0)   # sum_i dw_i grad l_i
    x, it = conjugate_gradient(H, v, cg_iters)
    stats["cg_iters_patch"] = it
    return -x, dw_r, stats


def puma_unlearn(model: nn.Module, request: UnlearnRequest, progress=None) -> UnlearnResult:
    """Options: damping (mu per training example, default 1e-3), reweight (True), box (1.0),
    criterion ("retain" | "holdout")."""
    if not (hasattr(model, "features") and isinstance(head_of(model), nn.Linear)):
        raise TypeError("PUMA patches the last layer: the model needs features(x) and a linear head")
    if request.retain_x is None:
        raise ValueError("PUMA needs the retained training data (its Hessian and reweighting use it)")
    opts = request.options
    if progress:
        progress("puma: features", 0.1)
    h_r, h_f = _features(model, request.retain_x), _features(model, request.forget_x)
    y_r, y_f = request.retain_y.cpu(), request.forget_y.cpu()
    crit = None
    if opts.get("criterion", "retain") == "holdout" and request.holdout_x is not None:
        crit = (_features(model, request.holdout_x), request.holdout_y.cpu())
    n = len(y_r) + len(y_f)
    mu = float(opts.get("damping", 1e-3)) * n
    theta = _theta(head_of(model))
    if progress:
        progress("puma: influence + patch", 0.4)
    delta, dw, stats = puma_delta(theta, h_r, y_r, h_f, y_f, mu=mu, reweight=bool(opts.get("reweight", True)),
                                  box=float(opts.get("box", 1.0)), crit=crit)
    new = copy.deepcopy(model)
    new_theta = theta + delta
    with torch.no_grad():
        head = head_of(new)
        head.weight.copy_(new_theta[:, :-1].to(head.weight.dtype))
        head.bias.copy_(new_theta[:, -1].to(head.bias.dtype))
    stats.update(mu=mu, patch_norm=float(delta.norm()), layer="head")
    if progress:
        progress("puma: done", 1.0)
    return UnlearnResult(model=new.eval(), stats=stats)


def ce_objective(theta, h, y, mu, w=None) -> torch.Tensor:
    """J(theta; w) for tests and benchmarks: sum_i w_i CE_i + mu/2 ||theta||^2."""
    losses = F.cross_entropy(h @ theta.T, y, reduction="none")
    w = torch.ones_like(losses) if w is None else w
    return (w * losses).sum() + 0.5 * mu * (theta ** 2).sum()
