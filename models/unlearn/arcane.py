"""ARCANE (Yan, Li, Guo, Li, Li, Lin, "ARCANE: An Efficient Architecture for Exact Machine
Unlearning", IJCAI 2022), implemented from the paper (it has no public code).

The multi-class task becomes one one-class task per class: sub-model k sees
only class k, so deleting an instance retrains only the sub-model of its class. Three
speed-ups, as the paper names them:

1. Representative data selection: train each sub-model on the most informative part of
   its class. The paper ranks samples by an entropy computed across classes; a criterion
   that reads other classes would make sub-model k depend on class j's data and break the
   one-deletion-one-sub-model property, so **our choice** is a within-class core-set:
   greedy k-center (farthest-point) selection on a fixed random projection of the inputs
   (the projection is seeded, not learned, so it holds no training data). The budget
   m_k = ceil(rho * n_k) is frozen at training time. Deleting a point that was not
   selected changes no pick (k-center picks are argmaxes the point never won), so it
   needs no retraining at all; deleting a selected point reruns the selection.
2. Training state saving: the selected data of a class is split into R blocks trained
   incrementally with a checkpoint after each, like SISA slices (same hash naming).
3. Sorting: data more likely to be deleted goes to the last blocks, where retraining it is
   cheapest. The likelihood is an input (``priority``: id -> likelihood, default 0 for
   all); ties keep the selection order. The paper does not say where the likelihood comes
   from; a service would derive it from, e.g., account age or past requests.

The one-class learner and the aggregation of the sub-models' scores (the paper's
"Architecture" section and Figure 2 leave both open) are ``ExactConfig.learner`` and
``ExactConfig.aggregation``, defined in ``oneclass.py``. ``train_arcane`` fills in the
default for the data when the config names no learner (``oneclass.defaults``: a 256/32
autoencoder compared by its raw reconstruction error for images, MADE's log-density for
tabular rows) and writes it into the config, so every bundle names its learner; a stored
bundle that names none predates the option and keeps its 64/16 autoencoder with the ``mean``
rule (``oneclass.resolve``).
"""
from __future__ import annotations

import math

import torch

from . import oneclass
from .shards import (DataFn, ExactConfig, MemoryStore, Plan, ShardedMethod, ShardedModel, SliceStore, data_from,
                     train_member)

PROJECTION_DIM = 32


def _project(x: torch.Tensor, seed: int) -> torch.Tensor:
    flat = x.flatten(1).float()
    g = torch.Generator().manual_seed(seed + 7919)
    proj = torch.randn(flat.shape[1], PROJECTION_DIM, generator=g) / math.sqrt(PROJECTION_DIM)
    return flat @ proj


def kcenter(z: torch.Tensor, m: int) -> list[int]:
    """Greedy k-center (farthest point first), starting from row 0; returns m row indices."""
    n = len(z)
    if m >= n:
        return list(range(n))
    picked = [0]
    d = ((z - z[0]) ** 2).sum(1)
    for _ in range(m - 1):
        j = int(d.argmax())
        picked.append(j)
        d = torch.minimum(d, ((z - z[j]) ** 2).sum(1))
    return picked


def select_and_block(config: ExactConfig, member: int, pool: list[str], data: DataFn,
                     priority: dict[str, float]) -> list[list[str]]:
    """Representative selection, sorting by deletion likelihood, R blocks (the three speed-ups)."""
    if not pool:
        return [[] for _ in range(config.slices)]
    budget = config.budgets[member] if config.budgets else len(pool)
    if budget < len(pool):
        x, _ = data(pool)
        chosen = [pool[k] for k in kcenter(_project(x, config.seed), budget)]
    else:
        chosen = list(pool)
    rank = {i: k for k, i in enumerate(chosen)}
    chosen.sort(key=lambda i: (priority.get(i, 0.0), rank[i]))  # likely deletions last
    n, R = len(chosen), config.slices
    bounds = [round(r * n / R) for r in range(R + 1)]
    return [chosen[bounds[r]:bounds[r + 1]] for r in range(R)]


def reslice(config: ExactConfig, plan: Plan, member: int, new_pool: list[str], data: DataFn) -> list[list[str]]:
    return select_and_block(config, member, new_pool, data, plan.priority)


def with_defaults(config: ExactConfig) -> ExactConfig:
    """Fill in (in place) the default learner, its arch_params and the aggregation for the
    config's input shape when the config names no learner; check the pair either way."""
    if config.learner is None:
        d = oneclass.defaults(config.input_shape)
        config.learner = d["learner"]
        if config.aggregation in (None, "softmax"):
            config.aggregation = d["aggregation"]
        if config.arch_params is None:
            config.arch_params = d["arch_params"]
    config.learner, config.aggregation = oneclass.resolve(config.learner, config.aggregation)
    return config


def train_arcane(config: ExactConfig, ids: list[str], x: torch.Tensor, y: torch.Tensor, *,
                 store: SliceStore | None = None, priority: dict[str, float] | None = None,
                 progress=None) -> ShardedModel:
    """One one-class sub-model per class; config.budgets is filled in (frozen) here."""
    if config.kind != "arcane":
        raise ValueError("train_arcane needs a config of kind 'arcane'")
    with_defaults(config)
    store = store if store is not None else MemoryStore()
    k = len(config.classes)
    config.shards = k
    labels = y.tolist()
    pool = [[i for i, c in zip(ids, labels) if c == cls] for cls in range(k)]
    config.budgets = [max(1, math.ceil(config.rho * len(p))) if p else 0 for p in pool]
    priority = {i: float(v) for i, v in (priority or {}).items() if v}
    data = data_from(ids, x, y)
    slices = [select_and_block(config, m, pool[m], data, priority) for m in range(k)]
    plan = Plan(pool=pool, slices=slices, priority=priority)
    members = []
    for m in range(k):
        model, _ = train_member(config, m, slices[m], data, store)
        members.append(model)
        if progress:
            progress("train sub-models", (m + 1) / k)
    return ShardedModel(config, plan, members, store)


arcane = ShardedMethod("arcane", reslice)
