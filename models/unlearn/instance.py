"""Instance-wise unlearning (Cha et al., "Learning to Unlearn: Instance-wise Unlearning for
Pre-trained Classifiers", AAAI 2024, arXiv 2301.11578).

Two families live here, behind the one method interface:

``paper_ga``, ``paper_ga_adv``, ``paper_full``: the published recipe and its ablations, for
models whose training data Lethe does not hold. Per SGD step (NOTES §1, public code L2UL):

    L = -CE(f(x_f), y_f) * |B_f| / (|B_f| + |B_adv|)          (gradient ascent on D_f)
        + CE(f(x_adv), y_adv) * |B_adv| / (|B_f| + |B_adv|)    (adversarial examples, target labels)
        + lambda * sum_i W_i (theta_i - theta0_i)^2 / 2          (inverted MAS importance anchor)

stopping as soon as every forget instance is misclassified (checked after every step).
For ``relabel`` the first term becomes +CE(f(x_f), y_target) (the paper's second objective).

``lethe`` (the service default): the catalogue holds the remaining data, so the method
can replay it. Choices (each measured; bench/instance.py runs the ablations):
  * bounded objective: each forget instance is trained *towards* a label (its runner-up
    class for ``misclassify``: the nearest wrong class, the smallest boundary move) with
    cross-entropy, never unbounded ascent, so the loss cannot blow up (no NaN);
  * per-instance stopping: an instance leaves the forget loss once it is misclassified
    with a margin, so flipped instances are not pushed further than needed;
  * teacher replay: every step also matches the *original* model's logits (KL at T=2) on a
    batch of retained data. Labels alone give almost no gradient on training data the model
    already fits, so a CE replay only pushes back after the damage is done (measured on
    mnist5k k=32, stop at the flip: CE replay -5.6 pt test accuracy, teacher replay -1.2);
  * focused replay: half of each replay batch comes from the 16 nearest retained neighbours
    (input space) of each forget instance: flipping an instance moves the boundary for its
    look-alikes first, so that is where replay must hold it (k=32: -1.2 -> +0.4 pt);
  * two phases: first only the tail of the network (models/nets.py: fc + head of the CNN,
    last hidden layer + head of the MLP, last block + head of ResNet-18) trains, on trunk
    outputs computed once, ~10x cheaper a step; the whole network trains only when the tail
    could not reach the goal or lost guard accuracy (in practice large k);
  * the paper's adversarial examples (cheap PGD) and importance anchor stay available as
    options, off by default (see the ablation rows);
  * a guard: accuracy on a slice of retained data is checked every few steps; a step
    that loses more than ``guard_drop`` points is rolled back and the learning rate halved;
    once the goal holds, replay continues until guard accuracy is back within ``repair_tol``.
``retrain_like`` replaces "flip every instance" by a privacy-calibrated target: each forget
instance's loss is pushed up only to a matching quantile of the losses on held-out data,
and the method stops when a loss-threshold attack can no longer tell D_f from held-out
data (AUC <= 0.5 + tol) — what a model retrained without D_f looks like.
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
from ..metrics import auc
from .registry import ProgressFn, UnlearnRequest, UnlearnResult


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _freeze_batchnorm(model: nn.Module) -> None:
    """Tiny forget batches would corrupt BatchNorm running statistics: keep them fixed."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _input_clip(x: torch.Tensor) -> tuple[float, float] | None:
    """Images live in [0, 1]; standardised tabular data has no box."""
    return (0.0, 1.0) if x.dim() == 4 and float(x.min()) >= 0.0 and float(x.max()) <= 1.0 else None


@torch.no_grad()
def _logits(model, x):
    was = model.training
    model.eval()
    out = model(x)
    model.train(was)
    return out


def _runner_up(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    masked = logits.clone()
    masked[torch.arange(len(y)), y] = float("-inf")
    return masked.argmax(1)


def _num_classes(model: nn.Module) -> int:
    return model.head.out_features


# --------------------------------------------------------------------------- paper recipe


@dataclass
class PaperConfig:
    """Defaults of the paper's public CIFAR-10 scripts (NOTES §1)."""

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
    targets = random_targets(y, _num_classes(model), per_instance, gen).to(x.device)
    x_rep = x.repeat_interleave(per_instance, dim=0)
    x_adv = targeted_l2_pgd(model, x_rep, targets, eps=eps, steps=pgd_steps, step_size=step_size,
                            clip=_input_clip(x), generator=gen)
    return x_adv, targets


def paper_unlearn(model: nn.Module, req: UnlearnRequest, cfg: PaperConfig,
                  progress: ProgressFn | None = None) -> UnlearnResult:
    t0 = time.perf_counter()
    model = copy.deepcopy(model)
    dev = _device_of(model)
    xf, yf = req.forget_x.to(dev), req.forget_y.to(dev)
    relabel = req.objective == "relabel"
    gen = torch.Generator().manual_seed(req.seed)
    if relabel:
        targets = (req.target_labels.to(dev) if req.target_labels is not None
                   else _runner_up(_logits(model, xf), yf))

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
    _freeze_batchnorm(model)

    def done() -> bool:
        pred = _logits(model, xf).argmax(1)
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


# --------------------------------------------------------------------------- Lethe's default


@dataclass
class LetheConfig:
    lr: float = 3e-2                 # SGD + momentum (Adam's sign-like first steps jolt every
    momentum: float = 0.9            # weight of a converged model by ~lr: measured -9 pt at k=1)
    forget_batch: int = 32
    replay_batch: int = 64
    forget_weight: float = 1.0       # on top of the size share (see the loss below)
    margin: float = 1.0              # logit margin an instance must reach to leave the loss
    # phase 1: edit only the tail (models/nets.py) on cached trunk outputs: ~50x cheaper a step
    tail_steps: int = 300            # 0 skips phase 1
    tail_lr: float = 1e-1            # the tail alone tolerates a larger step (measured: fewer steps, same TA)
    tail_clip_norm: float = 1.0
    tail_replay_batch: int = 128
    replay_pool: int = 512           # random retained instances cached for phase 1
    # phase 2 (only when phase 1 did not finish): the whole network
    max_steps: int = 400
    consolidate_steps: int = 0       # repair steps that run after the goal first holds, at least
    replay_loss: str = "kd"          # "kd": match the original model's logits; "ce": labels
    kd_temperature: float = 2.0
    replay_focus: float | None = None  # share of each replay batch drawn from the focus pool;
                                     # None = 0.5 to flip (misclassify/relabel), 0 for retrain_like: the
                                     # look-alikes' teacher logits hold D_f's own loss down (measured:
                                     # digits k=1 never reached the goal in 700 steps; 51 without focus)
    focus_neighbours: int = 16       # focus pool: nearest retained neighbours of each forget
                                     # instance (input space); 0 = retained data of the classes involved
    use_adv: bool = False            # paper's adversarial examples (see ablation)
    adv_per_instance: int = 4
    pgd_steps: int = 10
    eps_at_cifar: float = 4.0
    adv_weight: float = 0.5
    use_importance: bool = False     # paper's MAS anchor (see ablation)
    lam: float = 1.0
    clip_norm: float = 1.0           # a confident instance's first gradient is ~70x a replay batch's
    guard_every: int = 5
    guard_size: int = 256
    repair_lr_factor: float = 0.3
    repair_tol: float = 1.0          # after the goal holds, repair until guard accuracy is back within this
    guard_drop: float = 25.0         # a step that loses this much is rolled back, lr halved
    auc_tol: float = 0.02            # retrain_like: stop when AUC(D_f vs holdout) <= 0.5 + tol
    holdout_size: int = 512


class _FullView:
    """Phase 2: every logit through the whole network; replay from all retained data."""

    def __init__(self, model, xf, xr, yr, xg, xh, teacher, focus_pool, dev):
        self.model, self.xf, self.xr, self.yr, self.xg, self.xh = model, xf, xr, yr, xg, xh
        self.teacher, self.focus_pool, self.dev = teacher, focus_pool, dev

    def params(self):
        return list(self.model.parameters())

    def forget(self, idx=None):
        return self.model(self.xf if idx is None else self.xf[idx])

    def guard(self):
        return _logits(self.model, self.xg)

    def holdout(self):
        return _logits(self.model, self.xh)

    def replay(self, n_random, n_focus, gen):
        r_idx = torch.randint(0, len(self.xr), (n_random,), generator=gen)
        if n_focus:
            r_idx = torch.cat([r_idx, self.focus_pool[torch.randint(0, len(self.focus_pool), (n_focus,), generator=gen)]])
        xb = self.xr[r_idx].to(self.dev)
        teacher = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher = self.teacher(xb)
        return self.model(xb), teacher, self.yr[r_idx].to(self.dev)


class _TailView:
    """Phase 1: the trunk is frozen, so its outputs are computed once and only the tail
    trains; replay comes from a cached pool (random retained instances + the focus pool)."""

    def __init__(self, model, xf, xr, yr, xg, xh, focus_pool, pool_size, gen, dev):
        self.model = model
        rnd = torch.randperm(len(xr), generator=gen)[:pool_size]
        self.n_rnd = len(rnd)
        idx = torch.cat([rnd, focus_pool]) if focus_pool is not None else rnd
        with torch.no_grad():
            self.zf = model.trunk(xf)
            self.zp = torch.cat([model.trunk(xr[idx[i:i + 512]].to(dev)) for i in range(0, len(idx), 512)])
            self.tp = model.tail(self.zp)  # the original model's logits: the replay teacher
            self.zg = model.trunk(xg)
            self.zh = model.trunk(xh) if xh is not None else None
        self.yp = yr[idx].to(dev)
        self.n_focus_pool = len(idx) - self.n_rnd

    def params(self):
        return [p for m in self.model.tail_modules() for p in m.parameters()]

    def forget(self, idx=None):
        return self.model.tail(self.zf if idx is None else self.zf[idx])

    def guard(self):
        with torch.no_grad():
            return self.model.tail(self.zg)

    def holdout(self):
        with torch.no_grad():
            return self.model.tail(self.zh)

    def replay(self, n_random, n_focus, gen):
        b = torch.randint(0, self.n_rnd, (n_random,), generator=gen)
        if n_focus and self.n_focus_pool:
            b = torch.cat([b, self.n_rnd + torch.randint(0, self.n_focus_pool, (n_focus,), generator=gen)])
        b = b.to(self.zp.device)
        return self.model.tail(self.zp[b]), self.tp[b], self.yp[b]


def lethe_unlearn(model: nn.Module, req: UnlearnRequest, cfg: LetheConfig,
                  progress: ProgressFn | None = None) -> UnlearnResult:
    if req.retain_x is None or len(req.retain_x) == 0:
        raise ValueError("the 'lethe' method replays retained data; none was given "
                         "(use 'paper_full' for models whose training data is not held)")
    retrain_like = req.objective == "retrain_like"
    if retrain_like and (req.holdout_x is None or len(req.holdout_x) == 0):
        raise ValueError("objective 'retrain_like' needs held-out data (holdout_x/holdout_y) to calibrate against")
    if cfg.replay_loss not in ("kd", "ce"):
        raise ValueError(f"replay_loss must be 'kd' or 'ce', not {cfg.replay_loss!r}")
    t0 = time.perf_counter()
    original = model
    model = copy.deepcopy(model)
    model.eval()  # BatchNorm statistics and dropout stay as served: tiny batches would corrupt them
    dev = _device_of(model)
    gen = torch.Generator().manual_seed(req.seed)
    xf, yf = req.forget_x.to(dev), req.forget_y.to(dev)
    xr, yr = req.retain_x, req.retain_y
    orig_logits = _logits(model, xf)
    if req.objective == "relabel" and req.target_labels is not None:
        targets = req.target_labels.to(dev)
    else:
        targets = _runner_up(orig_logits, yf)

    # guard set: a fixed slice of retained data, scored before and during unlearning
    g_idx = torch.randperm(len(xr), generator=gen)[:cfg.guard_size]
    xg, yg = xr[g_idx].to(dev), yr[g_idx].to(dev)
    xh = yh = None
    if retrain_like:
        h_idx = torch.randperm(len(req.holdout_x), generator=gen)[:cfg.holdout_size]
        xh, yh = req.holdout_x[h_idx].to(dev), req.holdout_y[h_idx].to(dev)

    # focus pool: the retained instances nearest to each forget instance. Flipping an instance
    # moves the boundary for its look-alikes first, so that is where replay must hold it.
    if cfg.focus_neighbours > 0:
        flat_r = xr.reshape(len(xr), -1).float()
        dist = torch.cdist(req.forget_x.reshape(len(xf), -1).float().cpu(), flat_r.cpu())
        focus_pool = torch.unique(dist.topk(min(cfg.focus_neighbours, len(xr)), largest=False).indices.flatten())
    else:
        involved = torch.unique(torch.cat([yf.cpu(), targets.cpu()]))
        focus_pool = torch.isin(yr, involved).nonzero().flatten()
    if cfg.replay_focus is None:
        cfg.replay_focus = 0.0 if retrain_like else 0.5
    n_focus = int(round(cfg.replay_focus * cfg.replay_batch)) if len(focus_pool) else 0

    x_adv = y_adv = None
    if cfg.use_adv:
        if progress:
            progress("adversarial examples", 0.0)
        eps = scaled_eps(xf.shape[1:], cfg.eps_at_cifar)
        x_adv, y_adv = make_adversarial(model, xf, yf, per_instance=cfg.adv_per_instance, pgd_steps=cfg.pgd_steps,
                                        eps=eps, step_size=eps / 4, seed=req.seed)
    weights = anchor = None
    if cfg.use_importance:
        weights = inverted_normalised(mas_importance(model, xf))
        anchor = {n: p.detach().clone() for n, p in model.named_parameters()}

    base_guard = float((_logits(model, xg).argmax(1) == yg).float().mean() * 100)
    stats = {"method_family": "lethe", "guard_acc_before": base_guard, "rollbacks": 0}

    def goal(view, holdout_losses):
        """(mask of instances still in the forget loss, per-instance loss targets, done?, AUC)"""
        with torch.no_grad():
            logits = view.forget()
        if retrain_like:
            lf = F.cross_entropy(logits, yf, reduction="none")
            lh = holdout_losses
            # rank-matched targets: the i-th smallest forget loss should reach the
            # ((i + 0.5) / k)-quantile of held-out losses
            q = torch.quantile(lh, (torch.arange(len(lf), device=dev, dtype=torch.float32) + 0.5) / len(lf))
            tgt = torch.empty_like(lf)
            tgt[lf.argsort()] = q
            member_auc = auc(-lf.cpu().numpy(), -lh.cpu().numpy())
            return lf < tgt, tgt, member_auc <= 0.5 + cfg.auc_tol, member_auc
        idx = torch.arange(len(yf), device=dev)
        if req.objective == "relabel":
            other = logits.clone()
            other[idx, targets] = float("-inf")
            margin = logits[idx, targets] - other.max(1).values
            return margin < cfg.margin, None, bool((logits.argmax(1) == targets).all()), None
        other = logits.clone()
        other[idx, yf] = float("-inf")
        margin = other.max(1).values - logits[idx, yf]
        return margin < cfg.margin, None, bool((logits.argmax(1) != yf).all()), None

    def run_phase(view, max_steps, replay_batch, stage, n_focus_phase, lr, clip_norm):
        """One optimisation phase: bounded forget loss + replay, guarded; returns done?"""
        params = view.params()
        opt = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum)
        snapshot = copy.deepcopy(model.state_dict())
        steps, flipped_at, lh = 0, None, None

        def guard_acc():
            return float((view.guard().argmax(1) == yg).float().mean() * 100)

        def holdout_losses():
            return F.cross_entropy(view.holdout(), yh, reduction="none") if retrain_like else None

        lh = holdout_losses()
        active, tgt_loss, done, member_auc = goal(view, lh)
        while steps < max_steps:
            if done and flipped_at is None:
                flipped_at = steps
                for group in opt.param_groups:  # repair gently: the flip is made, now settle
                    group["lr"] *= cfg.repair_lr_factor
            # once the goal holds, keep replaying until retained accuracy is back (within
            # repair_tol) and at least consolidate_steps have passed
            if done and steps - flipped_at >= cfg.consolidate_steps and guard_acc() >= base_guard - cfg.repair_tol:
                break
            a_idx = active.nonzero().flatten()
            if len(a_idx) == 0:  # all past the margin: keep replaying so the boundary settles
                a_idx = torch.arange(len(xf), device=dev)
            pick = a_idx[torch.randperm(len(a_idx), generator=gen)[:cfg.forget_batch].to(dev)]
            out_f = view.forget(pick)
            if retrain_like:
                lf = F.cross_entropy(out_f, yf[pick], reduction="none")
                loss_f = F.relu(tgt_loss[pick] - lf).mean()  # bounded ascent, only up to the target
            else:
                loss_f = F.cross_entropy(out_f, targets[pick])
            out_r, teacher_r, y_r = view.replay(replay_batch - n_focus_phase, n_focus_phase, gen)
            if cfg.replay_loss == "kd":
                T = cfg.kd_temperature
                loss_r = F.kl_div(F.log_softmax(out_r / T, 1), F.log_softmax(teacher_r / T, 1), log_target=True,
                                  reduction="batchmean") * T * T
            else:
                loss_r = F.cross_entropy(out_r, y_r)
            # the paper's size weighting: the forget batch counts by its share of the instances in
            # the step, so a few forget instances cannot outweigh the whole replay batch
            share = len(pick) / (len(pick) + replay_batch)
            loss = cfg.forget_weight * share * loss_f + (1 - share) * loss_r
            if x_adv is not None and isinstance(view, _FullView):
                adv_idx = torch.randint(0, len(x_adv), (min(replay_batch, len(x_adv)),), generator=gen).to(dev)
                loss = loss + cfg.adv_weight * F.cross_entropy(model(x_adv[adv_idx]), y_adv[adv_idx])
            if weights is not None:
                loss = loss + cfg.lam * anchor_penalty(model, anchor, weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
            opt.step()
            steps += 1
            if steps % cfg.guard_every == 0:
                finite = all(bool(torch.isfinite(p).all()) for p in params)
                if not finite or guard_acc() < base_guard - cfg.guard_drop:
                    model.load_state_dict(snapshot)  # roll back the damaging steps, go gentler
                    for group in opt.param_groups:
                        group["lr"] *= 0.5
                    opt.state.clear()
                    stats["rollbacks"] += 1
                else:
                    snapshot = copy.deepcopy(model.state_dict())
                if retrain_like:  # held-out losses drift slowly: refresh them with the guard
                    lh = holdout_losses()
            # the goal needs a forward pass over all of D_f: every step while D_f fits in one
            # forget batch, else with the guard (a larger D_f flips over many steps anyway)
            if len(xf) <= cfg.forget_batch or steps % cfg.guard_every == 0:
                active, tgt_loss, done, member_auc = goal(view, lh)
            if progress:
                progress(stage, min(steps / max_steps, 1.0))
        stats[f"{stage}_steps"] = steps
        if retrain_like:
            stats["member_auc_holdout"] = member_auc
        return done

    for p in model.parameters():
        p.requires_grad_(False)
    done = False
    if cfg.tail_steps > 0 and hasattr(model, "tail_modules") and x_adv is None and weights is None:
        for m in model.tail_modules():
            m.requires_grad_(True)
        view = _TailView(model, xf, xr, yr, xg, xh, focus_pool if n_focus else None, cfg.replay_pool, gen, dev)
        n_focus_tail = int(round(cfg.replay_focus * cfg.tail_replay_batch)) if n_focus else 0
        done = run_phase(view, cfg.tail_steps, cfg.tail_replay_batch, "tail", n_focus_tail,
                         cfg.tail_lr, cfg.tail_clip_norm)
        stats["phase"] = "tail"
    if not done or float((_logits(model, xg).argmax(1) == yg).float().mean() * 100) < base_guard - cfg.repair_tol:
        for p in model.parameters():
            p.requires_grad_(True)
        teacher = original if cfg.replay_loss == "kd" else None
        view = _FullView(model, xf, xr, yr, xg, xh, teacher, focus_pool, dev)
        done = run_phase(view, cfg.max_steps, cfg.replay_batch, "full", n_focus, cfg.lr, cfg.clip_norm)
        stats["phase"] = "tail+full" if "phase" in stats else "full"
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    stats.update({"steps": stats.get("tail_steps", 0) + stats.get("full_steps", 0), "converged": bool(done),
                  "guard_acc_after": float((_logits(model, xg).argmax(1) == yg).float().mean() * 100),
                  "seconds": time.perf_counter() - t0})
    return UnlearnResult(model, stats)


def lethe(model, req, progress=None):
    """Lethe's default: a guarded tail edit with teacher replay, the whole network if needed."""
    return lethe_unlearn(model, req, LetheConfig(**req.options), progress)
