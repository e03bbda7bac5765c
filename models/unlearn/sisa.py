"""SISA: Sharded, Isolated, Sliced, Aggregated training (Bourtoule et al., "Machine
Unlearning", IEEE S&P 2021, arXiv 1912.03817).

- Sharding: the training set is split uniformly at random into S disjoint shards;
  one model per shard, trained in isolation (no information crosses shards).
- Slicing: each shard is split into R disjoint slices; the model is trained on
  slice 1, checkpointed, trained on slices 1..2, checkpointed, ... (incremental training).
  Stage r gets 2e/(R+1) epochs so the total samples seen match e epochs on the shard
  (the public code's schedule: github.com/cleverhans-lab/machine-unlearning, sisa.py,
  ``avg_epochs_per_slice``). Checkpoints are named by the SHA-256 of the
  ids trained so far (``shards.slice_key``), so a deletion reuses every stage before the
  first slice it touches.
- Aggregation: label-based majority vote, or the mean of the shard models' softmax
  outputs (``aggregation="vote"|"softmax"``).
- Unlearning: drop the instance from its slice and retrain only its shard,
  from the checkpoint taken before that slice. With deterministic training the result is
  bit-identical to training that shard from scratch without the instance (tested).
"""
from __future__ import annotations

import torch

from .shards import (DataFn, ExactConfig, MemoryStore, Plan, ShardedMethod, ShardedModel, SliceStore, data_from,
                     train_member)


def partition(ids: list[str], shards: int, slices: int, seed: int = 0) -> Plan:
    """Uniformly random shards (Sharding), then R contiguous, near-equal slices per shard (Slicing).
    Within a shard, ids keep the order of the random permutation (the training order)."""
    if shards < 1 or slices < 1:
        raise ValueError("shards and slices must be >= 1")
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed)).tolist()
    pool = [[ids[k] for k in order[s::shards]] for s in range(shards)]
    plan_slices = []
    for p in pool:
        n = len(p)
        bounds = [round(r * n / slices) for r in range(slices + 1)]
        plan_slices.append([p[bounds[r]:bounds[r + 1]] for r in range(slices)])
    return Plan(pool=pool, slices=plan_slices)


def reslice(config: ExactConfig, plan: Plan, member: int, new_pool: list[str], data: DataFn) -> list[list[str]]:
    """A deletion only removes ids from their slice; every other id stays where it was."""
    keep = set(new_pool)
    return [[i for i in s if i in keep] for s in plan.slices[member]]


def train_sisa(config: ExactConfig, ids: list[str], x: torch.Tensor, y: torch.Tensor, *,
               store: SliceStore | None = None, progress=None) -> ShardedModel:
    """Train every shard (checkpointing each slice stage into ``store``)."""
    if config.kind != "sisa":
        raise ValueError("train_sisa needs a config of kind 'sisa'")
    store = store if store is not None else MemoryStore()
    plan = partition(ids, config.shards, config.slices, config.seed)
    data = data_from(ids, x, y)
    members = []
    for m in range(config.shards):
        model, _ = train_member(config, m, plan.slices[m], data, store)
        members.append(model)
        if progress:
            progress("train shards", (m + 1) / config.shards)
    return ShardedModel(config, plan, members, store)


sisa = ShardedMethod("sisa", reslice)
