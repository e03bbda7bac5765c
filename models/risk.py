"""Per-row membership risk of one exact model version, and the threshold above which an
approximate unlearning method cannot make a row's deletion indistinguishable from retraining.

Risk (LiRA's offline calibration, Carlini et al., "Membership Inference Attacks From First
Principles", IEEE S&P 2022, §IV-B/C): ``n_reference`` reference models train on complementary
random halves of the version's training set, so every row is "in" half of them and "out" of the
other half. Per row, the logit-scaled confidence phi (``metrics.logit_confidence``) is averaged
in each group:

    gap(x)  = mu_in(x) - mu_out(x)                                (logit units; LiRA Eq. 4's means)
    risk(x) = gap(x) / sqrt((s_in^2 + s_out^2) / 2)               (s: the pooled "global" variance)

``risk`` is the effect size of membership for that row: how far apart, in standard deviations of
the models' own noise, the confidence of a model trained on x sits from one never trained on it.
A row with a large risk is one the model memorised (an outlier, a rare record): the attack of
Hayes et al. (SaTML 2025, arXiv 2403.01218) tells "unlearned" from "never seen" for such rows
unless the unlearned model really lost what training on them gave. ``gap`` is the row's own
target drop for the approximate method (``UnlearnRequest.reference_gap``).

Cost: ``n_reference`` trainings on half the data, i.e. about n_reference / 2 training runs of the
version (reported by the caller as a multiple of one run).

Threshold (``calibrate_threshold``): from full U-LiRA runs (``models/ulira.py``) of the
approximate method and of retraining on the same shadows, the risk above which the approximate
method's U-LiRA AUC exceeds retraining's by more than ``tol`` (0.05), judged per risk band: rows
below it may go approximate, a deletion holding any row at or above it goes to an exact path.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .metrics import ShadowBank, auc

MIN_REFERENCE_MODELS = 4  # two "in" and two "out" per row: the least that gives a pooled variance


@dataclass
class MembershipRisk:
    gap: np.ndarray       # (n,) mu_in - mu_out of phi, logit units
    risk: np.ndarray      # (n,) gap / pooled sd: the effect size
    sd: float             # the pooled sd the risk is scaled by
    n_reference: int

    def summary(self, threshold: float | None = None) -> dict:
        """What a model card shows: the distribution of risk over rows (and the share above a threshold)."""
        q = np.quantile(self.risk, [0.5, 0.9, 0.99]) if len(self.risk) else [float("nan")] * 3
        out = {"rows": int(len(self.risk)), "reference_models": self.n_reference, "sd": self.sd,
               "risk_median": float(q[0]), "risk_p90": float(q[1]), "risk_p99": float(q[2]),
               "risk_max": float(self.risk.max()) if len(self.risk) else float("nan")}
        if threshold is not None:
            out["threshold"] = float(threshold)
            out["rows_above_threshold"] = int((self.risk >= threshold).sum())
        return out


def membership_risk(train_fn, x: torch.Tensor, y: torch.Tensor, n_reference: int = MIN_REFERENCE_MODELS,
                    seed: int = 0) -> MembershipRisk:
    """`train_fn(x, y, seed) -> model` is the version's own recipe; returns every row's gap and risk."""
    if n_reference < MIN_REFERENCE_MODELS or n_reference % 2:
        raise ValueError(f"n_reference must be even and >= {MIN_REFERENCE_MODELS} (complementary halves, "
                         "two models per side for a variance)")
    if len(x) < 4:
        raise ValueError("membership risk needs at least 4 training rows")
    bank = ShadowBank.train(train_fn, x, y, n_reference, seed=seed)
    gap = bank.mu_in - bank.mu_out
    sd = float(np.sqrt((bank.sd_in ** 2 + bank.sd_out ** 2) / 2))
    return MembershipRisk(gap, gap / sd, sd, n_reference)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (ties get their mean rank)."""
    def ranks(v):
        v = np.asarray(v, dtype=np.float64)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for u in np.unique(v):  # mean rank of ties
            m = v == u
            if m.sum() > 1:
                r[m] = r[m].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _pooled_auc(lr: np.ndarray, member: np.ndarray, ok: np.ndarray, cols: np.ndarray) -> float:
    sel = ok & cols[None, :]
    return auc(lr[sel & member], lr[sel & ~member])


def band_excess(risk: np.ndarray, lr_approx: np.ndarray, lr_exact: np.ndarray, member: np.ndarray,
                ok: np.ndarray, edges) -> list[dict]:
    """Per risk band [lo, hi): U-LiRA AUC of the approximate method and of retraining on the band's
    examples (pairs pooled over shadows) and its excess. `risk` (n_examples,), the others
    (n_shadows, n_examples): per-pair log-likelihood ratios (``ulira.pair_scores``)."""
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        cols = (risk >= lo) & (risk < hi)
        a, e = _pooled_auc(lr_approx, member, ok, cols), _pooled_auc(lr_exact, member, ok, cols)
        out.append({"lo": float(lo), "hi": float(hi), "examples": int(cols.sum()), "approx_auc": a,
                    "exact_auc": e, "excess": a - e})
    return out


BAND_QUANTILES = (0.0, 0.5, 0.75, 0.9, 1.0)


def calibrate_threshold(risk: np.ndarray, lr_approx: np.ndarray, lr_exact: np.ndarray, member: np.ndarray,
                        ok: np.ndarray, tol: float = 0.05, quantiles=BAND_QUANTILES) -> dict:
    """The risk above which the approximate method's per-example U-LiRA AUC exceeds retraining's
    by more than `tol`: the examples are cut into risk bands (quantiles of `risk`; bands, not single
    examples, because one example's AUC over a few shadows is noise of +-0.2); the threshold is the
    lower edge of the lowest band from which every band up exceeds `tol`; +inf when the top band
    does not (nothing to send exact), the lowest risk when every band does (everything exact)."""
    risk = np.asarray(risk, dtype=np.float64)
    edges = np.quantile(risk, quantiles)
    edges[-1] = np.nextafter(edges[-1], np.inf)
    bands = band_excess(risk, lr_approx, lr_exact, member, ok, edges)
    threshold = float("inf")
    for b in reversed(bands):
        if not b["excess"] > tol:
            break
        threshold = b["lo"]
    return {"threshold": threshold, "tol": tol, "bands": bands}
