"""The field's baselines, behind the same interface as every method, plus exact
retraining from scratch.

Each takes (model, UnlearnRequest, progress) and returns a new model; the input model is never
modified. All need the retained data D_r. Definitions and defaults:

- ``finetune`` (FT): keep training on D_r only and let catastrophic forgetting erase D_f
  (Warnecke et al. 2023; the FT baseline of Jia et al., NeurIPS 2023, and of SalUn, ICLR 2024;
  their CIFAR-10 scripts: SGD lr 0.01, momentum 0.9, 10 epochs).
- ``neggrad_plus`` (NegGrad+; Kurmanji et al., "Towards Unbounded Machine Unlearning",
  NeurIPS 2023, §5): every step descends on a D_r batch while ascending on a D_f batch,
  L = beta * CE(D_r) - (1 - beta) * CE(D_f).
- ``random_labels`` (RL; Golatkar et al. 2020, as run by SalUn's code, unlearn/RL.py): train
  D_f towards uniformly random labels, then a pass over D_r with true labels, per epoch.
- ``l1_sparse`` (Jia et al., "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023,
  eq. 4 and their FT_l1 code): fine-tune on D_r with an l1 penalty gamma_t * ||theta||_1 whose
  weight decays linearly to 0 over the run, gamma_t = gamma * (1 - t/T).
- ``scrub`` (SCRUB; Kurmanji et al. 2023, Alg. 1 and the public code meghdadk/SCRUB): a student
  copied from the original (the teacher); per epoch, while epoch < msteps, a "max-step" pass over
  D_f that *raises* KL(teacher || student) at temperature T, then a "min-step" pass over D_r
  minimising alpha * KL + gamma * CE. Code defaults: T=4, alpha=0.001, gamma=0.99, SGD lr 5e-4,
  momentum 0.9, weight decay 5e-4.
- ``salun`` (SalUn; Fan et al., ICLR 2024, eq. 3-5 and unlearn/RL.py): a weight-saliency mask
  m = 1(|grad_theta l_f(theta; D_f)| >= gamma) from the gradient of the forgetting loss (gradient
  ascent on D_f), gamma the median (the paper's 50 % sparsity), then random-label unlearning
  that updates only the salient weights. Code: SGD lr 0.013, 10 epochs (CIFAR-10, 10 %).
  (Their generate_mask.py ranks in ascending order; we follow the paper's text: the largest
  gradients are the salient ones.)
- ``retrain``: exact unlearning by construction: a fresh model of the same architecture trained
  from scratch on D_r with the served recipe (models/train.py). The completion planner uses it
  where it is cheaper than an approximate method.

Budget: the papers run 5-10 epochs of a ~180-epoch CIFAR schedule (3-5 % of training). Our
models train for 6-8 epochs, so every baseline here defaults to ONE pass over D_r (about
1/8-1/6 of retraining; the smallest whole pass). `options={"epochs": ...}` changes it
(fractions allowed).
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..architectures import head_of
from ..train import Recipe, default_recipe, train_model
from .registry import ProgressFn, UnlearnRequest, UnlearnResult


@dataclass
class BaselineConfig:
    epochs: float = 1.0          # passes over D_r (see the module docstring)
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    forget_batch: int = 16
    clip_norm: float = 5.0       # keeps gradient ascent finite
    beta: float = 0.99           # NegGrad+: weight of the retained loss
    l1_gamma: float = 5e-4       # l1-sparse: initial weight of ||theta||_1
    kd_temperature: float = 4.0  # SCRUB
    scrub_alpha: float = 0.001
    scrub_gamma: float = 0.99
    msteps: int = 1              # SCRUB: epochs with a max-step
    saliency_sparsity: float = 0.5  # SalUn: share of weights left unmasked


def _needs_retained(req: UnlearnRequest, name: str) -> None:
    if req.retain_x is None or len(req.retain_x) == 0:
        raise ValueError(f"the '{name}' method trains on retained data; none was given")


def _batches(n: int, batch_size: int, gen: torch.Generator, passes: float):
    """Index batches covering `passes` epochs of n items (fractions allowed, at least one batch)."""
    total = max(1, int(round(passes * max(1, -(-n // batch_size)))))
    it = (b for _ in itertools.count() for b in torch.randperm(n, generator=gen).split(batch_size))
    return list(itertools.islice(it, total))


def _random_other_labels(y: torch.Tensor, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    return (y + torch.randint(1, num_classes, y.shape, generator=gen).to(y.device)) % num_classes


class _Run:
    """A working copy, its SGD optimiser and the device tensors one baseline needs."""

    def __init__(self, model: nn.Module, req: UnlearnRequest, cfg: BaselineConfig, name: str, lr: float | None = None):
        _needs_retained(req, name)
        self.t0 = time.perf_counter()
        self.model = copy.deepcopy(model)
        self.model.train()
        for m in self.model.modules():  # tiny batches would corrupt BatchNorm statistics
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        self.dev = next(self.model.parameters()).device
        self.cfg, self.gen = cfg, torch.Generator().manual_seed(req.seed)
        self.xf, self.yf = req.forget_x, req.forget_y
        self.xr, self.yr = req.retain_x, req.retain_y
        self.num_classes = head_of(self.model).out_features
        self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg.lr if lr is None else lr,
                                   momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.mask: dict | None = None
        self.steps = 0

    def retain(self, idx):
        return self.xr[idx].to(self.dev), self.yr[idx].to(self.dev)

    def forget(self, idx):
        return self.xf[idx].to(self.dev), self.yf[idx].to(self.dev)

    def step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.mask is not None:  # SalUn: only the salient weights move
            for n, p in self.model.named_parameters():
                if p.grad is not None:
                    p.grad.mul_(self.mask[n])
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm)
        self.opt.step()
        if self.mask is not None:  # weight decay and momentum act outside the gradient: undo them too
            self._restore_unsalient()
        self.steps += 1

    def set_mask(self, mask: dict[str, torch.Tensor]) -> None:
        self.mask = mask
        self.theta0 = {n: p.detach().clone() for n, p in self.model.named_parameters()}

    @torch.no_grad()
    def _restore_unsalient(self) -> None:
        for n, p in self.model.named_parameters():
            m = self.mask[n]
            p.mul_(m).add_(self.theta0[n] * (1 - m))
            buf = self.opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                buf.mul_(m)

    def done(self, **extra) -> UnlearnResult:
        self.model.eval()
        finite = all(bool(torch.isfinite(p).all()) for p in self.model.parameters())
        stats = {"method_family": "baseline", "steps": self.steps, "finite": finite,
                 # a fixed budget, no goal: "converged" means it ran its budget and stayed finite
                 "converged": finite, "seconds": time.perf_counter() - self.t0, **extra}
        return UnlearnResult(self.model, stats)


def _config(req: UnlearnRequest, **paper_defaults) -> BaselineConfig:
    return BaselineConfig(**{**paper_defaults, **req.options})


def _report(progress, stage, i, n):
    if progress:
        progress(stage, min((i + 1) / max(n, 1), 1.0))


def finetune(model, req, progress: ProgressFn | None = None):
    """FT: SGD on D_r only (Jia et al. 2023 / SalUn baseline; lr 0.01)."""
    run = _Run(model, req, _config(req, lr=0.01), "finetune")
    batches = _batches(len(run.xr), run.cfg.batch_size, run.gen, run.cfg.epochs)
    for i, b in enumerate(batches):
        x, y = run.retain(b)
        run.step(F.cross_entropy(run.model(x), y))
        _report(progress, "finetune", i, len(batches))
    return run.done()


def neggrad_plus(model, req, progress: ProgressFn | None = None):
    """NegGrad+ (Kurmanji et al. 2023): beta * CE(D_r) - (1 - beta) * CE(D_f) per step."""
    run = _Run(model, req, _config(req, lr=0.01), "neggrad_plus")
    batches = _batches(len(run.xr), run.cfg.batch_size, run.gen, run.cfg.epochs)
    fb = itertools.cycle(_batches(len(run.xf), run.cfg.forget_batch, run.gen, 1.0))
    beta = run.cfg.beta
    for i, b in enumerate(batches):
        xr, yr = run.retain(b)
        xf, yf = run.forget(next(fb))
        run.step(beta * F.cross_entropy(run.model(xr), yr) - (1 - beta) * F.cross_entropy(run.model(xf), yf))
        _report(progress, "neggrad_plus", i, len(batches))
    return run.done()


def _random_label_epochs(run: _Run, progress, stage: str) -> None:
    """Per epoch: D_f with uniformly random other labels, then D_r with true labels (SalUn's RL.py)."""
    passes, whole = run.cfg.epochs, max(1, int(round(run.cfg.epochs)))
    for e in range(whole):
        for b in _batches(len(run.xf), run.cfg.forget_batch, run.gen, 1.0):
            x, y = run.forget(b)
            run.step(F.cross_entropy(run.model(x), _random_other_labels(y, run.num_classes, run.gen)))
        batches = _batches(len(run.xr), run.cfg.batch_size, run.gen, passes / whole)
        for i, b in enumerate(batches):
            x, y = run.retain(b)
            run.step(F.cross_entropy(run.model(x), y))
        _report(progress, stage, e, whole)


def random_labels(model, req, progress: ProgressFn | None = None):
    """RL: random labels on D_f, replay of D_r (SalUn's baseline; lr 0.01)."""
    run = _Run(model, req, _config(req, lr=0.01), "random_labels")
    _random_label_epochs(run, progress, "random_labels")
    return run.done()


def l1_sparse(model, req, progress: ProgressFn | None = None):
    """l1-sparse (Jia et al. 2023, eq. 4): FT on D_r + gamma_t ||theta||_1, gamma_t = gamma (1 - t/T)."""
    run = _Run(model, req, _config(req, lr=0.01), "l1_sparse")
    batches = _batches(len(run.xr), run.cfg.batch_size, run.gen, run.cfg.epochs)
    for i, b in enumerate(batches):
        x, y = run.retain(b)
        gamma = run.cfg.l1_gamma * (1 - i / len(batches))
        l1 = sum(p.abs().sum() for p in run.model.parameters())
        run.step(F.cross_entropy(run.model(x), y) + gamma * l1)
        _report(progress, "l1_sparse", i, len(batches))
    return run.done()


def _kl(student_logits, teacher_logits, T):
    return F.kl_div(F.log_softmax(student_logits / T, 1), F.softmax(teacher_logits / T, 1),
                    reduction="batchmean") * T * T


def scrub(model, req, progress: ProgressFn | None = None):
    """SCRUB (Kurmanji et al. 2023, Alg. 1): max-steps away from the teacher on D_f, min-steps
    towards it (plus the task loss) on D_r."""
    run = _Run(model, req, _config(req, lr=5e-4), "scrub")
    teacher = copy.deepcopy(model).eval()
    cfg = run.cfg
    whole = max(1, int(round(cfg.epochs)))
    for e in range(whole):
        if e < cfg.msteps:
            for b in _batches(len(run.xf), cfg.forget_batch, run.gen, 1.0):
                x, _ = run.forget(b)
                with torch.no_grad():
                    t = teacher(x)
                run.step(-_kl(run.model(x), t, cfg.kd_temperature))
        for b in _batches(len(run.xr), cfg.batch_size, run.gen, cfg.epochs / whole):
            x, y = run.retain(b)
            with torch.no_grad():
                t = teacher(x)
            out = run.model(x)
            run.step(cfg.scrub_alpha * _kl(out, t, cfg.kd_temperature) + cfg.scrub_gamma * F.cross_entropy(out, y))
        _report(progress, "scrub", e, whole)
    return run.done()


def saliency_mask(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sparsity: float = 0.5,
                  batch_size: int = 64) -> dict[str, torch.Tensor]:
    """SalUn eq. 3: m = 1(|grad of the forgetting loss on D_f| >= gamma), gamma the (1 - sparsity)
    quantile over all weights; the forgetting loss is gradient ascent, -CE on D_f."""
    model = copy.deepcopy(model).eval()
    dev = next(model.parameters()).device
    model.zero_grad(set_to_none=True)
    for i in range(0, len(x), batch_size):
        (-F.cross_entropy(model(x[i:i + batch_size].to(dev)), y[i:i + batch_size].to(dev), reduction="sum")
         / len(x)).backward()
    grads = {n: (p.grad.abs() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}
    flat = torch.cat([g.flatten() for g in grads.values()])
    k = max(1, int(round(sparsity * len(flat))))
    gamma = flat.kthvalue(len(flat) - k + 1).values
    return {n: (g >= gamma).float() for n, g in grads.items()}


def salun(model, req, progress: ProgressFn | None = None):
    """SalUn (Fan et al., ICLR 2024): random-label unlearning on the salient weights only (lr 0.013)."""
    run = _Run(model, req, _config(req, lr=0.013), "salun")
    run.set_mask(saliency_mask(model, req.forget_x, req.forget_y, run.cfg.saliency_sparsity))
    _random_label_epochs(run, progress, "salun")
    share = float(sum(m.sum() for m in run.mask.values()) / sum(m.numel() for m in run.mask.values()))
    return run.done(salient_share=share)


def _arch_of(model: nn.Module) -> str:
    """The registry name a model was built under (models.architectures.build_model records it)."""
    arch = getattr(model, "lethe_arch", None)
    if arch is None:
        raise ValueError(f"'retrain' rebuilds models made by models.architectures.build_model; "
                         f"{type(model).__name__} was not")
    return arch


def retrain(model, req, progress: ProgressFn | None = None):
    """Exact unlearning: train the same architecture (with its constructor parameters) from
    scratch on D_r with the model's stored recipe (``model.lethe_recipe``: its trainer,
    models/trainers.py, with that trainer's parameters and the seed), from the model's
    starting weights when it names some (``model.lethe_start``: fine-tuning's "from
    scratch"), all attached by the worker from the registry; else the demo recipe (models/train.py; options: train_seed, epochs
    override it). The held-out rows (``holdout_x``) are the trainer's early-stopping split.
    Exact by construction when the served model was trained that way; otherwise it is still
    a model that never saw D_f."""
    _needs_retained(req, "retrain")
    heldout = (req.holdout_x, req.holdout_y) if req.holdout_x is not None and len(req.holdout_x) else None
    return retrain_from_scratch(model, req.retain_x, req.retain_y, options=req.options, progress=progress,
                                heldout=heldout)


def retrain_from_scratch(model, retain_x, retain_y, *, options: dict | None = None,
                         progress: ProgressFn | None = None, heldout=None) -> UnlearnResult:
    """``retrain`` without a forget set: what a consolidation runs when it serves no new
    request (the data to leave out is already out of ``retain_x``)."""
    options = options or {}
    t0 = time.perf_counter()
    arch = _arch_of(model)
    stored = getattr(model, "lethe_recipe", None)
    recipe = Recipe.from_dict(stored, arch=arch) if stored else default_recipe(arch)
    overrides = {k: options[o] for k, o in (("seed", "train_seed"), ("epochs", "epochs")) if o in options}
    recipe = dataclasses.replace(recipe, **overrides)
    start = getattr(model, "lethe_start", None)  # train_model refuses a recipe's start without its weights
    new = train_model(arch, retain_x, retain_y, input_shape=tuple(retain_x.shape[1:]),
                      num_classes=head_of(model).out_features, recipe=recipe,
                      arch_params=getattr(model, "lethe_arch_params", None),
                      device=next(model.parameters()).device, progress=progress, start=start, heldout=heldout)
    for attr in ("lethe_recipe", "lethe_start"):  # a retrain of the retrain trains the same way
        if hasattr(model, attr):
            setattr(new, attr, getattr(model, attr))
    return UnlearnResult(new, {"method_family": "exact", "steps": 0, "converged": True, "exact": True,
                               "trainer": recipe.trainer,
                               "trainer_metrics": getattr(new, "lethe_train_metrics", {}),
                               "seconds": time.perf_counter() - t0})
