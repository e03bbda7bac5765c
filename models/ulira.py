"""Full U-LiRA: the per-example unlearning membership attack of Hayes et al., run *through* the
unlearning method under test.

Hayes, Shumailov, Triantafillou, Khalifa, Papernot, "Inexact Unlearning Needs More Careful
Evaluations to Avoid a False Sense of Privacy" (SaTML 2025, arXiv 2403.01218), §4: a per-example
U-MIA in the style of LiRA (Carlini et al., IEEE S&P 2022). The question it asks of each
example x that an unlearned model is claimed to have forgotten: *can an attacker tell "x was
trained on and then unlearned" from "x was never trained on"?* -- the two worlds an exact
unlearner makes identical.

Protocol (one run per method; ``train_shadows`` is shared by every method):

1. A target set T of 2k examples and a base pool B. Shadow i trains on a random half of B plus a
   random half T_i of T (shadows come in complementary pairs, so every target is trained on by
   exactly half the shadows).
2. The method unlearns T_i (|T_i| = k: the scenario's forget-set size) from shadow i, with the
   rest of its training set as retained data, giving u_i. Retraining's u_i is a model trained
   from scratch on the retained data alone; "no-op" leaves u_i = shadow i.
3. phi_i(x) = logit-scaled confidence of u_i on x (``metrics.logit_confidence``), for x in T.
4. Leave one out: for each i, per-example Gaussians are fitted on the other shadows --
   "unlearned" N(mu_u(x), s_u) over the u_j with x in T_j, "held out" N(mu_h(x), s_h) over the u_j
   with x never trained on -- with one variance per group pooled over examples (LiRA's global
   variance, for few shadows). u_i's examples are scored by the log-likelihood ratio.
5. Positives = T_i, negatives = T minus T_i, scored on u_i; pooled over i: AUC and TPR at 1 % FPR.

AUC 0.5 means the attacker cannot tell unlearned from never-seen (what exact retraining gives,
up to the noise of the shadows). The score is oriented by the fitted Gaussians themselves, so any
systematic difference between the two worlds raises the AUC above 0.5: unlearned examples that
still look trained on (under-unlearning) and unlearned examples pushed further than never-seen
ones ever are (over-unlearning, the Streisand effect) alike. That is what the population-level
audit (``metrics.ShadowBank``: trained-in vs never-seen shadows, the method not inside them)
cannot do, and why this one tells "no-op" from "retrain".

Cost: 2 x n_shadows trainings (shadows + retrained references) per target set, plus n_shadows
runs of each method; affordable for the small models of the benchmark (``bench/ulira.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .metrics import _log_normal, auc, complementary_halves, logit_confidence, tpr_at_fpr

Data = tuple[torch.Tensor, torch.Tensor]
TrainFn = Callable[[torch.Tensor, torch.Tensor, int], torch.nn.Module]          # (x, y, seed) -> model
UnlearnFn = Callable[[torch.nn.Module, Data, Data, int], torch.nn.Module]         # (model, forget, retain, seed)


@dataclass
class Shadows:
    """The trained shadows of one target set: models[i] trained on base[base_member[i]] and
    targets[target_member[i]]."""
    models: list
    base: Data
    targets: Data
    base_member: np.ndarray    # (n_shadows, |B|) bool
    target_member: np.ndarray  # (n_shadows, |T|) bool
    seed: int

    def forget(self, i: int) -> Data:
        m = torch.from_numpy(self.target_member[i])
        return self.targets[0][m], self.targets[1][m]

    def retain(self, i: int) -> Data:
        m = torch.from_numpy(self.base_member[i])
        return self.base[0][m], self.base[1][m]


def train_shadows(train_fn: TrainFn, base: Data, targets: Data, n_shadows: int, seed: int = 0) -> Shadows:
    """Step 1: shadow i trains on a random half of the base pool and a random half of T."""
    if len(targets[0]) < 2:
        raise ValueError("U-LiRA needs at least 2 targets (one trained on, one held out, per shadow)")
    if n_shadows < 4 or n_shadows % 2:
        raise ValueError("n_shadows must be even and >= 4 (complementary pairs, leave-one-out fits)")
    rng = np.random.default_rng(seed)
    bm = complementary_halves(len(base[0]), n_shadows, rng)
    tm = complementary_halves(len(targets[0]), n_shadows, rng)
    models = []
    for i in range(n_shadows):
        b, t = torch.from_numpy(bm[i]), torch.from_numpy(tm[i])
        x = torch.cat([base[0][b], targets[0][t]])
        y = torch.cat([base[1][b], targets[1][t]])
        models.append(train_fn(x, y, 10_000 * (seed + 1) + i))
    return Shadows(models, base, targets, bm, tm, seed)


def unlearned_confidences(shadows: Shadows, unlearn_fn: UnlearnFn) -> np.ndarray:
    """Steps 2-3: (n_shadows, |T|) phi of each shadow after the method unlearned its T_i."""
    out = []
    for i, model in enumerate(shadows.models):
        u = unlearn_fn(model, shadows.forget(i), shadows.retain(i), shadows.seed * 1000 + i)
        out.append(logit_confidence(u, *shadows.targets))
    return np.stack(out)


def _pooled_sd(phi: np.ndarray, member: np.ndarray, mu: np.ndarray, min_sd: float) -> float:
    dev = np.where(member, phi - mu, 0.0)
    dof = member.sum() - (member.sum(0) > 0).sum()
    return max(float(np.sqrt((dev ** 2).sum() / max(dof, 1))), min_sd)


def pair_scores(phi: np.ndarray, member: np.ndarray, min_sd: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """Step 4 on phi (n_shadows, |T|) and member (trained-then-unlearned) of the same shape:
    (lr, ok), the leave-one-out log-likelihood ratio of every (shadow, example) pair and whether
    the pair is scored (the example needs both worlds among the other shadows)."""
    phi = np.asarray(phi, dtype=np.float64)
    member = np.asarray(member, dtype=bool)
    n = len(phi)
    lr_all, ok_all = np.zeros_like(phi), np.zeros_like(member)
    for i in range(n):
        keep = np.arange(n) != i
        p, m = phi[keep], member[keep]
        n_u, n_h = m.sum(0), (~m).sum(0)
        ok_all[i] = (n_u > 0) & (n_h > 0)
        mu_u = np.where(m, p, 0).sum(0) / np.maximum(n_u, 1)
        mu_h = np.where(~m, p, 0).sum(0) / np.maximum(n_h, 1)
        s_u = _pooled_sd(p, m, mu_u, min_sd)
        s_h = _pooled_sd(p, ~m, mu_h, min_sd)
        lr_all[i] = _log_normal(phi[i], mu_u, s_u) - _log_normal(phi[i], mu_h, s_h)
    return lr_all, ok_all


def ulira_attack(phi: np.ndarray, member: np.ndarray, fpr: float = 0.01, min_sd: float = 1e-2) -> dict:
    """Steps 4-5 on phi (n_shadows, |T|) and member (trained-then-unlearned) of the same shape.

    Returns AUC and TPR at `fpr` of the pooled leave-one-out scores and the number of scored
    (model, example) pairs."""
    member = np.asarray(member, dtype=bool)
    lr, ok = pair_scores(phi, member, min_sd)
    pos, neg = lr[ok & member], lr[ok & ~member]
    return {"ulira_auc": auc(pos, neg), "ulira_tpr_at_1fpr": tpr_at_fpr(pos, neg, fpr),
            "pairs": int(len(pos) + len(neg))}


def run_ulira(shadows: Shadows, unlearn_fn: UnlearnFn, fpr: float = 0.01) -> dict:
    """Full U-LiRA of one method on trained shadows (steps 2-5)."""
    phi = unlearned_confidences(shadows, unlearn_fn)
    return ulira_attack(phi, shadows.target_member, fpr)
