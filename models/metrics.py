"""Verification metrics for an unlearned model (NOTES §5; Jia et al. NeurIPS 2023, SalUn ICLR 2024).

- UA  = 100 - accuracy on the forget set D_f        (unlearning accuracy)
- RA  = accuracy on retained training data
- TA  = accuracy on the test set
- MIA-efficacy: an SVC(C=3, gamma="auto", rbf) fitted on one feature, the softmax
  probability of the true label, members = retained data (a subset the size of the test
  set), non-members = test data; efficacy = % of D_f predicted non-member.
- loss_auc: AUC of a loss-threshold membership attack separating D_f (members) from test
  data (non-members): 0.5 means D_f looks unseen, as for a retrained model; the SVC
  measure reads near zero for any model that generalises well, this one does not.
- flip_rate: % of D_f whose prediction changed from the original model's.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .train import logits_of

MIA_MAX_POINTS = 2000  # per class of the SVC; keeps the fit to well under a second


def per_example_loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits_of(model, x), y.cpu(), reduction="none") if len(x) else torch.empty(0)


def true_label_confidence(model, x, y) -> np.ndarray:
    if len(x) == 0:
        return np.empty(0)
    p = torch.softmax(logits_of(model, x), 1)
    # a collapsed (NaN) model is scored as giving zero confidence, not crash the audit
    return np.nan_to_num(p[torch.arange(len(y)), y.cpu()].numpy(), nan=0.0)


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score_pos > score_neg) + 0.5 P(tie): the Mann-Whitney form of ROC AUC."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    neg_sorted = np.sort(neg)
    below = np.searchsorted(neg_sorted, pos, side="left")
    ties = np.searchsorted(neg_sorted, pos, side="right") - below
    return float((below + 0.5 * ties).sum() / (len(pos) * len(neg)))


def loss_auc(model, forget, test) -> float:
    """Loss-threshold attack: lower loss => member. AUC of D_f against test data."""
    lf = np.nan_to_num(per_example_loss(model, *forget).numpy(), nan=np.inf)
    lt = np.nan_to_num(per_example_loss(model, *test).numpy(), nan=np.inf)
    return auc(-lf, -lt)


def mia_efficacy(model, forget, retain, test, seed: int = 0) -> float:
    from sklearn.svm import SVC

    rng = np.random.default_rng(seed)
    n = min(len(test[0]), len(retain[0]), MIA_MAX_POINTS)
    if n == 0 or len(forget[0]) == 0:
        return float("nan")
    r_idx = torch.as_tensor(rng.choice(len(retain[0]), n, replace=False))
    t_idx = torch.as_tensor(rng.choice(len(test[0]), n, replace=False))
    members = true_label_confidence(model, retain[0][r_idx], retain[1][r_idx])
    nonmembers = true_label_confidence(model, test[0][t_idx], test[1][t_idx])
    feats = np.concatenate([members, nonmembers])[:, None]
    labels = np.concatenate([np.ones(n), np.zeros(n)])
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(feats, labels)
    pred = clf.predict(true_label_confidence(model, *forget)[:, None])
    return float((pred == 0).mean() * 100)


def evaluate(model, *, forget, retain, test, original_pred: torch.Tensor | None = None) -> dict:
    """All verification figures for (model, D_f, D_r, D_test) as a plain dict of floats."""
    fx, fy = forget
    f_pred = logits_of(model, fx).argmax(1) if len(fx) else torch.empty(0, dtype=torch.long)
    acc_f = float((f_pred == fy.cpu()).float().mean() * 100) if len(fx) else 0.0
    r_pred = logits_of(model, retain[0]).argmax(1)
    t_pred = logits_of(model, test[0]).argmax(1)
    out = {
        "ua": 100.0 - acc_f,
        "ra": float((r_pred == retain[1].cpu()).float().mean() * 100),
        "ta": float((t_pred == test[1].cpu()).float().mean() * 100),
        "mia_efficacy": mia_efficacy(model, forget, retain, test),
        "loss_auc": loss_auc(model, forget, test),
        "forget_size": int(len(fx)),
    }
    if original_pred is not None and len(fx):
        out["flip_rate"] = float((f_pred != original_pred.cpu()).float().mean() * 100)
    return out
