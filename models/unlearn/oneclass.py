"""ARCANE's one-class learners and how their scores are aggregated (Yan et al., "ARCANE: An
Efficient Architecture for Exact Machine Unlearning", IJCAI 2022, Section "Architecture" and
Figure 2: one sub-model per class, trained on that class alone, and an aggregation of the
sub-models' outputs into the decision output).

The paper fixes that sub-model k reads only class k's data (which is what makes a deletion
retrain one sub-model) and that the decision aggregates the sub-models' outputs; the learner
and the aggregation rule below are our choices within that design. Every statistic a score
uses is read on the sub-model's own training data, so each keeps the
one-deletion-one-sub-model property.

Learners (``ExactConfig.learner``):

- ``ae``: an MLP autoencoder (``arch_params`` ``hidden``/``code``, default 64/16); its loss is
  the mean squared reconstruction error.
- ``made``: a masked autoregressive density estimator (Germain, Gregor, Murray, Larochelle,
  "MADE: Masked Autoencoder for Distribution Estimation", ICML 2015, Section 4 and Eq. 13-14
  for the masks) with a Gaussian conditional per feature: its loss is the exact negative
  log-likelihood -log p_k(x) = -sum_d log N(x_d; mu_d(x_<d), sigma_d(x_<d)^2). The standard
  deviation is floored at exp(``min_log_std``) (default exp(-1.5) = 0.22) so that a one-hot
  column that is constant within one class cannot make its density unbounded.

Aggregations (``ExactConfig.aggregation`` of an ARCANE config):

- ``raw``: the score of class k is minus sub-model k's own loss on x (reconstruction error,
  or negative log-likelihood, i.e. the log-density of x under class k's model); predict the
  argmax. On images this is the rule that works (``bench/arcane_ablation.py``).
- ``mean``: minus the reconstruction error divided by the sub-model's mean error on its own
  training data (the rule every ARCANE bundle written before the option existed uses; such
  bundles store ``aggregation="softmax"``, the dataclass default, which ARCANE reads as
  ``mean``). It favours the classes that are hard to reconstruct: on mnist5k it costs 7
  points against ``raw`` (``bench/results/arcane_ablation.json``).

The class prior (log of a class's count) is not added: it is exact to keep (a sub-model's own
count), but on adult it lowered accuracy with both learners. Nor is a learned aggregation (a
logistic regression over the k scores fitted on all training rows, refit on each deletion): on
adult with MADE it reached 83.40 % against 83.35 % for ``raw`` (``bench/arcane_ablation.py``,
``calibrated``).
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

LEARNERS = ("ae", "made")
AGGREGATIONS = ("raw", "mean")
LEGACY = ("ae", "mean")  # a bundle whose config names no learner was written with these


class OneClassAE(nn.Module):
    """An autoencoder trained on one class only. ``forward`` is the legacy ``mean`` score:
    minus the reconstruction error relative to the mean error on its own training data (a
    buffer, so it travels with the weights)."""

    def __init__(self, input_shape, hidden: int = 64, code: int = 16):
        super().__init__()
        d = math.prod(int(s) for s in input_shape)
        self.enc = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, code), nn.ReLU())
        self.dec = nn.Sequential(nn.Linear(code, hidden), nn.ReLU(), nn.Linear(hidden, d))
        self.register_buffer("err_scale", torch.ones(()))

    def errors(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return ((self.dec(self.enc(flat)) - flat) ** 2).mean(1)

    @torch.no_grad()
    def calibrate(self, errors: torch.Tensor) -> None:
        self.err_scale.copy_(errors.mean().clamp_min(1e-8))

    def score(self, x: torch.Tensor, aggregation: str) -> torch.Tensor:
        if aggregation == "raw":
            return -self.errors(x)
        return -self.errors(x) / self.err_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(x, "mean")


class OneClassMADE(nn.Module):
    """MADE with Gaussian conditionals (module docstring). ``errors`` is the per-row negative
    log-likelihood; ``forward`` the log-density. The masks are buffers drawn from a generator
    seeded by ``mask_seed`` (the same for every class), so they hold no training data."""

    def __init__(self, input_shape, hidden: int = 256, layers: int = 2, min_log_std: float = -1.5,
                 mask_seed: int = 0):
        super().__init__()
        d = math.prod(int(s) for s in input_shape)
        g = torch.Generator().manual_seed(int(mask_seed))
        deg_in = torch.arange(1, d + 1)
        prev_deg, prev = deg_in, d
        self.hidden = nn.ModuleList()
        for i in range(int(layers)):
            deg = torch.randint(1, max(2, d), (int(hidden),), generator=g)  # MADE Eq. 13: m(k) in [1, D-1]
            self.register_buffer(f"mask{i}", (deg[:, None] >= prev_deg[None, :]).float())  # Eq. 13
            self.hidden.append(nn.Linear(prev, int(hidden)))
            prev_deg, prev = deg, int(hidden)
        self.register_buffer("mask_out", (deg_in[:, None] > prev_deg[None, :]).float())  # Eq. 14: strict
        self.mu = nn.Linear(prev, d)
        self.log_std = nn.Linear(prev, d)
        self.min_log_std = float(min_log_std)

    def errors(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        h = flat
        for i, lin in enumerate(self.hidden):
            h = F.relu(F.linear(h, lin.weight * getattr(self, f"mask{i}"), lin.bias))
        mu = F.linear(h, self.mu.weight * self.mask_out, self.mu.bias)
        log_std = F.linear(h, self.log_std.weight * self.mask_out, self.log_std.bias).clamp_min(self.min_log_std)
        z = (flat - mu) * torch.exp(-log_std)
        return (0.5 * z ** 2 + log_std + 0.5 * math.log(2 * math.pi)).sum(1)

    def calibrate(self, errors: torch.Tensor) -> None:  # no statistic of its own data
        return None

    def score(self, x: torch.Tensor, aggregation: str) -> torch.Tensor:
        if aggregation != "raw":
            raise ValueError(f"the made learner's score is its log-density ('raw'), not {aggregation!r}")
        return -self.errors(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(x, "raw")


_PARAMS = {"ae": ("hidden", "code"), "made": ("hidden", "layers", "min_log_std", "mask_seed")}


def build(learner: str, input_shape, arch_params: dict | None) -> nn.Module:
    """The learner ``learner`` for inputs of ``input_shape``; ``arch_params`` keys that are not
    the learner's own are ignored (the recipe may carry others)."""
    if learner not in _PARAMS:
        raise ValueError(f"unknown ARCANE learner {learner!r}; one of {list(LEARNERS)}")
    params = {k: v for k, v in (arch_params or {}).items() if k in _PARAMS[learner]}
    if learner == "ae":
        return OneClassAE(input_shape, **{k: int(v) for k, v in params.items()})
    return OneClassMADE(input_shape, **params)


def defaults(input_shape) -> dict:
    """The default learner for data of ``input_shape``, and the epochs and learning rate it is
    measured with (``epochs``/``lr``: what a caller passes in ``ExactConfig`` unless it has its own): images (C, H, W) get a
    512/64 autoencoder compared by its raw error, trained 30 epochs (``bench/arcane_ablation.py``:
    on mnist5k the 64/16 autoencoder with the ``mean`` rule is 12 points below the CNN, 256/32
    with ``raw`` 4, 512/64 with ``raw`` and 30 epochs within 1); flat (tabular) rows get MADE,
    whose score is a log-density (an autoencoder's error never exceeded 82.6 % on adult against
    the monolithic 85.7 %)."""
    if len(tuple(input_shape)) >= 2:
        return {"learner": "ae", "aggregation": "raw", "arch_params": {"hidden": 512, "code": 64}, "epochs": 30,
                "lr": 3e-3}
    return {"learner": "made", "aggregation": "raw",
            "arch_params": {"hidden": 256, "layers": 2, "min_log_std": -1.5, "mask_seed": 0}, "epochs": 6, "lr": 3e-3}


def resolve(learner: str | None, aggregation: str | None) -> tuple[str, str]:
    """(learner, aggregation) a stored config means: no learner = a bundle written before the
    option existed (legacy ``ae`` + ``mean``); SISA's ``softmax`` default = ``mean`` for
    ``ae``. Raises ValueError for a pair that does not fit."""
    if learner is None:
        return LEGACY
    if learner not in LEARNERS:
        raise ValueError(f"unknown ARCANE learner {learner!r}; one of {list(LEARNERS)}")
    agg = aggregation if aggregation in AGGREGATIONS else ("mean" if aggregation in (None, "softmax") else None)
    if agg is None:
        raise ValueError(f"unknown ARCANE aggregation {aggregation!r}; one of {list(AGGREGATIONS)}")
    if learner == "made" and agg != "raw":
        raise ValueError("the made learner's score is a log-density: its aggregation is 'raw'")
    return learner, agg
