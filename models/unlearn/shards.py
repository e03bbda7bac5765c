"""What SISA and ARCANE share: an ensemble of isolated members (SISA shards, ARCANE
one-class sub-models), each trained slice by slice with a checkpoint after every slice,
and a bundle format (a manifest plus one safetensors file per member).

Slice checkpoints are named by the SHA-256 of the instance ids trained so far (and of the
recipe), as in SISA's public code (Bourtoule et al., S&P 2021, "Slicing";
github.com/cleverhans-lab/machine-unlearning, sharded.py ``getShardHash``): a deletion recomputes the names, and every name that did not change is a
checkpoint it may reuse. Reuse falls out of naming; nothing else decides it.

Determinism: stage r of member m is trained with a generator seeded by (seed, m, r) and a
fresh Adam, starting from the checkpoint of stage r-1 (or from an initialisation seeded by
(seed, m)). The state after stage r is therefore a function of the ids of stages 0..r
only, which is what makes a retrain from a reused checkpoint bit-identical (on CPU) to a
retrain from scratch without the deleted ids.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from torch import nn
import torch.nn.functional as F

from ..nets import build_model

from . import oneclass
from .registry import UnlearnRequest, UnlearnResult

BUNDLE_FORMAT = "lethe-bundle/1"


_LATER_FIELDS = {"optimizer": "adam", "weight_decay": 0.0, "momentum": 0.9, "arch_params": None,
                 "trainer": "lethe", "trainer_params": None, "learner": None}


@dataclass
class ExactConfig:
    """The recipe of a sharded model; part of every slice checkpoint's name."""

    kind: str                    # "sisa" | "arcane"
    arch: str                    # member network ("mlp", "cnn"; ARCANE: the one-class autoencoder "ae1c")
    dataset: str
    input_shape: tuple
    classes: list
    shards: int                  # SISA: S; ARCANE: one member per class
    slices: int                  # R (SISA slices / ARCANE training-state blocks)
    epochs: int                  # e: epochs a monolithic model would train; slice stage r gets epochs_at(r)
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    aggregation: str = "softmax"  # SISA: "softmax" (mean of softmax) | "vote" (majority vote); ARCANE: oneclass.py
    rho: float = 1.0             # ARCANE: fraction of each class kept by representative selection
    budgets: list | None = None  # ARCANE: per-class selection budget frozen at training time
    # the model's stored recipe and architecture parameters (models.train.Recipe, models.architectures)
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    arch_params: dict | None = None
    # the model's trainer (models.trainers): a plug-in trains each SISA slice stage with its own
    # parameters (its own epochs); "lethe" is the loop below with the recipe's epochs_at(r)
    trainer: str = "lethe"
    trainer_params: dict | None = None
    # ARCANE: the one-class learner ("ae" | "made", models/unlearn/oneclass.py). None only in a
    # bundle written before the option existed: it loads and predicts as then ("ae", "mean");
    # train_arcane writes the learner it trained with into every new config
    learner: str | None = None

    def arcane_learner(self) -> tuple[str, str]:
        """(learner, aggregation) of an ARCANE config, legacy bundles included (oneclass.resolve)."""
        return oneclass.resolve(self.learner, self.aggregation)

    def epochs_at(self, r: int) -> int:
        """Epochs of slice stage r. SISA trains slice r on slices 0..r; with 2e/(R+1) epochs per
        stage the samples seen equal e epochs on the whole shard (SISA's public code, sisa.py)."""
        if self.slices <= 1:
            return self.epochs
        return max(1, round(2 * self.epochs / (self.slices + 1)))

    def fingerprint(self) -> str:
        d = dataclasses.asdict(self)
        d.pop("aggregation")  # prediction-time choice, does not change the weights
        for k, default in _LATER_FIELDS.items():  # fields added later: at their default they leave the
            if d.get(k) == default:               # name unchanged, so existing slice checkpoints are reused
                d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    def recipe(self):
        from ..train import Recipe

        return Recipe(optimizer=self.optimizer, lr=self.lr, epochs=self.epochs, batch_size=self.batch_size,
                      weight_decay=self.weight_decay, seed=self.seed, momentum=self.momentum,
                      trainer=self.trainer, trainer_params=self.trainer_params)

    @classmethod
    def from_json(cls, d: dict) -> "ExactConfig":
        d = dict(d)
        d["input_shape"] = tuple(d["input_shape"])
        return cls(**d)


@dataclass
class Plan:
    """Where every training instance sits. ``pool[m]``: every id member m owns (SISA: its
    shard; ARCANE: its class); ``slices[m][r]``: the ids of slice r, in training order
    (ARCANE: only the representative ids that were selected)."""

    pool: list[list[str]]
    slices: list[list[list[str]]]
    priority: dict[str, float] = field(default_factory=dict)  # ARCANE sorting: deletion likelihood

    def locate(self) -> dict[str, tuple[int, int | None]]:
        """id -> (member, slice or None when the id is pooled but not selected)."""
        out: dict[str, tuple[int, int | None]] = {}
        for m, pool in enumerate(self.pool):
            for i in pool:
                out[i] = (m, None)
        for m, slices in enumerate(self.slices):
            for r, ids in enumerate(slices):
                for i in ids:
                    out[i] = (m, r)
        return out

    def to_json(self) -> dict:
        return {"pool": self.pool, "slices": self.slices, "priority": self.priority}

    @classmethod
    def from_json(cls, d: dict) -> "Plan":
        return cls(pool=d["pool"], slices=d["slices"], priority=d.get("priority", {}))


def slice_key(config: ExactConfig, member: int, ids_so_far: list[str]) -> str:
    """SHA-256 naming a slice checkpoint: the recipe, the member, the ids trained so far."""
    h = hashlib.sha256()
    h.update(config.fingerprint().encode())
    h.update(f"|member={member}|".encode())
    for i in ids_so_far:
        h.update(i.encode())
        h.update(b"\n")
    return h.hexdigest()


def stage_keys(config: ExactConfig, member: int, slices: list[list[str]]) -> list[str]:
    """The checkpoint name of every slice stage of a member (stage r: slices 0..r)."""
    keys, so_far = [], []
    for ids in slices:
        so_far = so_far + list(ids)
        keys.append(slice_key(config, member, so_far))
    return keys


def stale_keys(config: ExactConfig, old: Plan, new: Plan, members: list[int]) -> list[str]:
    """Stage checkpoints of ``old`` that ``new`` no longer uses: they were trained on data that
    is now deleted, so they must go too (the new plan reuses every other one)."""
    out = []
    for m in members:
        keep = set(stage_keys(config, m, new.slices[m]))
        out += [k for k in stage_keys(config, m, old.slices[m]) if k not in keep]
    return out


class SliceStore(Protocol):
    def get(self, key: str) -> dict[str, torch.Tensor] | None: ...

    def put(self, key: str, state: dict[str, torch.Tensor]) -> None: ...


class MemoryStore:
    """Slice checkpoints in memory (tests, benchmarks). Counts what it served and stored."""

    def __init__(self):
        self.states: dict[str, dict[str, torch.Tensor]] = {}
        self.hits = 0

    def get(self, key):
        s = self.states.get(key)
        if s is not None:
            self.hits += 1
        return s

    def put(self, key, state):
        self.states[key] = {k: v.detach().clone() for k, v in state.items()}


class DirStore:
    """Slice checkpoints as ``<dir>/<key>.safetensors`` (safetensors: loading runs no code)."""

    def __init__(self, directory: str):
        self.dir = directory

    def path(self, key: str) -> str:
        if not all(c in "0123456789abcdef" for c in key) or len(key) != 64:
            raise ValueError(f"not a slice key: {key!r}")
        return os.path.join(self.dir, f"{key}.safetensors")

    def get(self, key):
        from safetensors.torch import load_file

        p = self.path(key)
        return load_file(p) if os.path.exists(p) else None

    def put(self, key, state):
        from safetensors.torch import save_file

        os.makedirs(self.dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".tmp")
        os.close(fd)
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp)
        os.replace(tmp, self.path(key))

    def delete(self, key: str) -> bool:
        try:
            os.unlink(self.path(key))
            return True
        except FileNotFoundError:
            return False


# --- members -----------------------------------------------------------------------------

def build_member(config: ExactConfig) -> nn.Module:
    if config.kind == "arcane":  # the one-class learner (models/unlearn/oneclass.py) and its arch_params
        return oneclass.build(config.arcane_learner()[0], config.input_shape, config.arch_params)
    return build_model(config.arch, config.input_shape, len(config.classes), config.arch_params)


def init_member(config: ExactConfig, member: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(config.seed, member, -1))
        return build_member(config)


def _seed(*parts: int) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:6], "big")


def member_loss(config: ExactConfig, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    if config.kind == "arcane":
        return model.errors(xb).mean()
    return F.cross_entropy(model(xb), yb)


def _train_stage(config: ExactConfig, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, member: int,
                 stage: int) -> None:
    n = len(x)
    if n == 0:
        return
    g = torch.Generator().manual_seed(_seed(config.seed, member, stage))
    if config.trainer != "lethe":
        from .. import trainers

        if config.kind == "arcane":
            raise ValueError("ARCANE members are one-class autoencoders trained with Lethe's own loss; "
                             f"trainer {config.trainer!r} cannot train them")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed(config.seed, member, stage))
            trainers.run(config.trainer, config.trainer_params, model, trainers.TensorSource(x, y),
                         seed=_seed(config.seed, member, stage), generator=g)
        return
    opt = config.recipe().make_optimizer(model.parameters())
    device = next(model.parameters()).device
    model.train()
    for _ in range(config.epochs_at(stage)):
        order = torch.randperm(n, generator=g)
        for start in range(0, n, config.batch_size):
            idx = order[start:start + config.batch_size]
            opt.zero_grad(set_to_none=True)
            member_loss(config, model, x[idx].to(device), y[idx].to(device)).backward()
            opt.step()
    model.eval()
    if config.kind == "arcane":
        with torch.no_grad():
            model.calibrate(torch.cat([model.errors(x[i:i + 2048].to(device)) for i in range(0, n, 2048)]))


DataFn = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]


def train_member(config: ExactConfig, member: int, slices: list[list[str]], data: DataFn, store: SliceStore,
                 progress: Callable[[float], None] | None = None) -> tuple[nn.Module, dict]:
    """Train member ``member`` on ``slices`` (ids, in order), slice stage by slice stage,
    resuming from the latest stage whose checkpoint name is already in ``store``.
    Returns (model, stats with retrained_slices / reused_slices)."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    keys = stage_keys(config, member, slices)
    model, start = None, 0
    for r in range(len(slices) - 1, -1, -1):  # the latest reusable stage
        state = store.get(keys[r])
        if state is not None:
            model = build_member(config)
            model.load_state_dict(state, strict=True)
            start = r + 1
            break
    if model is None:
        model = init_member(config, member)
    samples = 0  # training examples processed (epochs x rows): the load-independent cost
    for r in range(start, len(slices)):
        ids = [i for s in slices[:r + 1] for i in s]
        samples += config.epochs_at(r) * len(ids)
        x, y = data(ids) if ids else (torch.empty(0), torch.empty(0, dtype=torch.long))
        _train_stage(config, model, x, y, member=member, stage=r)
        store.put(keys[r], model.state_dict())
        if progress:
            progress((r + 1 - start) / max(1, len(slices) - start))
    model.eval()
    return model, {"retrained_slices": len(slices) - start, "reused_slices": start, "slice_keys": keys,
                   "samples": samples}


# --- the ensemble ----------------------------------------------------------------------------

class ShardedModel(nn.Module):
    """The served ensemble. ``forward`` returns log-probabilities (SISA mean softmax, or
    vote shares for majority vote) or, for ARCANE, the per-class one-class scores, so
    argmax/softmax code written for single networks works unchanged."""

    def __init__(self, config: ExactConfig, plan: Plan, members: list[nn.Module], store: SliceStore | None = None):
        super().__init__()
        self.config, self.plan = config, plan
        self.members = nn.ModuleList(members)
        self.store = store if store is not None else MemoryStore()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.kind == "arcane":  # (n, classes): one score per class sub-model (oneclass.py)
            aggregation = self.config.arcane_learner()[1]
            return torch.stack([m.score(x, aggregation) for m in self.members], dim=1)
        outs = [m(x) for m in self.members]
        probs = torch.stack([F.softmax(o, dim=1) for o in outs])  # (members, n, classes)
        if self.config.aggregation == "vote":
            k = probs.shape[-1]
            votes = F.one_hot(probs.argmax(-1), k).float().mean(0)
            return torch.log(votes + 1e-3 * probs.mean(0) + 1e-9)  # ties broken by mean softmax
        return torch.log(probs.mean(0) + 1e-12)

    def with_members(self, replaced: dict[int, nn.Module], plan: Plan, aggregation: str | None = None) -> "ShardedModel":
        members = [replaced.get(i, copy.deepcopy(m)) for i, m in enumerate(self.members)]
        config = self.config if aggregation is None else dataclasses.replace(self.config, aggregation=aggregation)
        return ShardedModel(config, plan, members, self.store)


# --- bundles: a manifest plus one safetensors file per member --------------------------------

def save_member(model: nn.Module, path: str, config: ExactConfig, member: int) -> str:
    from ..checkpoint import save_checkpoint

    return save_checkpoint(model, path, arch=config.arch if config.kind == "sisa" else "ae1c",
                           arch_params=config.arch_params if config.kind == "sisa" else None,
                           dataset=config.dataset, input_shape=config.input_shape, classes=config.classes,
                           extra={"kind": config.kind, "member": member})


def load_member(path: str, config: ExactConfig) -> nn.Module:
    from safetensors.torch import load_file

    model = build_member(config)
    model.load_state_dict(load_file(path, device="cpu"), strict=True)
    return model.eval()


def write_manifest(path: str, config: ExactConfig, plan: Plan, members: list[dict], extra: dict | None = None) -> str:
    """members: [{"file": relative path, "sha256": ...}]. Written atomically; returns the
    manifest's sha256, which names the bundle (it covers every member's sha256)."""
    from ..checkpoint import file_sha256

    doc = {"format": BUNDLE_FORMAT, "config": config.to_json(), "members": members, "plan": plan.to_json(),
           **(extra or {})}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, sort_keys=True, separators=(",", ":"))
    os.replace(tmp, path)
    return file_sha256(path)


def read_manifest(path: str) -> dict:
    with open(path) as f:
        doc = json.load(f)
    if doc.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{path} is not a {BUNDLE_FORMAT} manifest")
    return doc


def load_bundle(path: str, *, check: bool = True, store: SliceStore | None = None) -> tuple[ShardedModel, dict]:
    """Load a bundle; with ``check`` every member file must match its sha256 in the manifest."""
    from ..checkpoint import file_sha256

    doc = read_manifest(path)
    config, plan = ExactConfig.from_json(doc["config"]), Plan.from_json(doc["plan"])
    base = os.path.dirname(path)
    members = []
    for m in doc["members"]:
        p = os.path.join(base, m["file"])
        if check and file_sha256(p) != m["sha256"]:
            raise ValueError(f"bundle member {m['file']} fails its sha256 check")
        members.append(load_member(p, config))
    meta = {"arch": config.arch, "dataset": config.dataset, "input_shape": tuple(config.input_shape),
            "classes": list(config.classes), "kind": config.kind}
    return ShardedModel(config, plan, members, store), meta


# --- a deletion: new plan, affected members, their retrains ------------------------------------

Reslice = Callable[[ExactConfig, Plan, int, list[str], DataFn], list[list[str]]]


def plan_deletion(config: ExactConfig, plan: Plan, forget_ids: list[str], data: DataFn,
                  reslice: Reslice) -> tuple[Plan, list[int]]:
    """The plan without ``forget_ids`` and the members whose slices changed (only those are
    retrained). ``reslice`` turns a member's remaining pool into slices (SISA: drop the ids
    in place; ARCANE: representative selection + sorting + blocks again). Raises KeyError
    for an id the plan does not hold."""
    where = plan.locate()
    unknown = [i for i in forget_ids if i not in where]
    if unknown:
        raise KeyError(f"not in the sharded model's plan: {unknown[:10]}")
    gone = set(forget_ids)
    pool, slices, affected = [], [], []
    for m in range(len(plan.pool)):
        if not any(where[i][0] == m for i in gone):
            pool.append(list(plan.pool[m]))
            slices.append([list(s) for s in plan.slices[m]])
            continue
        new_pool = [i for i in plan.pool[m] if i not in gone]
        new_slices = reslice(config, plan, m, new_pool, data)
        pool.append(new_pool)
        slices.append(new_slices)
        if new_slices != plan.slices[m]:
            affected.append(m)
    priority = {k: v for k, v in plan.priority.items() if k not in gone}
    return Plan(pool=pool, slices=slices, priority=priority), affected


def unlearn_sharded(model: ShardedModel, forget_ids: list[str], data: DataFn, reslice: Reslice, *,
                    store: SliceStore | None = None, progress: Callable[[str, float], None] | None = None):
    """Exact unlearning on a sharded model, sequentially (the worker fans the same
    ``train_member`` calls out as a Celery group). Returns (new model, stats)."""
    store = store if store is not None else model.store
    new_plan, affected = plan_deletion(model.config, model.plan, forget_ids, data, reslice)
    replaced, per_member = {}, {}
    for k, m in enumerate(affected):
        def member_progress(f, k=k):
            if progress:
                progress(f"retrain member {m}", (k + f) / len(affected))
        replaced[m], st = train_member(model.config, m, new_plan.slices[m], data, store, member_progress)
        per_member[m] = st
    new = model.with_members(replaced, new_plan)
    new.store = store
    stats = {"kind": model.config.kind, "members": len(model.members), "retrained_members": len(affected),
             "affected_members": ",".join(map(str, affected)),
             "retrained_slices": sum(s["retrained_slices"] for s in per_member.values()),
             "reused_slices": sum(s["reused_slices"] for s in per_member.values()),
             "samples": sum(s["samples"] for s in per_member.values()),
             "total_slices": sum(len(s) for s in new_plan.slices)}
    return new, stats


def data_from(ids: list[str], x: torch.Tensor, y: torch.Tensor) -> DataFn:
    """A lookup id -> (x, y) rows over aligned arrays."""
    pos = {i: k for k, i in enumerate(ids)}

    def fetch(wanted: list[str]):
        idx = torch.tensor([pos[i] for i in wanted], dtype=torch.long)
        return x[idx], y[idx]

    return fetch


# --- the method object: what the catalogue's sisa / arcane entries are ----------------------------

class ShardedMethod:
    """Exact unlearning for one kind of sharded model, behind the one method interface
    (``method(model, request, progress)``), plus the steps the worker runs one by one so
    member retrains can fan out: ``plan_deletion`` -> ``retrain_member`` per affected member."""

    def __init__(self, kind: str, reslice: Reslice):
        self.kind, self.reslice = kind, reslice
        self.__name__ = kind

    def plan_deletion(self, config: ExactConfig, plan: Plan, forget_ids: list[str], data: DataFn):
        return plan_deletion(config, plan, forget_ids, data, self.reslice)

    retrain_member = staticmethod(train_member)

    def unlearn(self, model: ShardedModel, forget_ids: list[str], data: DataFn, *, store: SliceStore | None = None,
                progress: Callable[[str, float], None] | None = None):
        return unlearn_sharded(model, forget_ids, data, self.reslice, store=store, progress=progress)

    def __call__(self, model, request: UnlearnRequest, progress=None) -> UnlearnResult:
        kind = self.kind
        if not isinstance(model, ShardedModel) or model.config.kind != kind:
            raise TypeError(f"method {kind!r} needs a {kind} sharded model (train it with train_{kind})")
        if request.forget_ids is None:
            raise ValueError(f"{kind} deletes by instance id: the request must carry forget_ids")
        if request.retain_ids is None or request.retain_x is None:
            raise ValueError(f"{kind} retrains shards: the request must carry retain_ids/retain_x/retain_y")
        data = data_from(list(request.retain_ids), request.retain_x, request.retain_y)
        new, stats = self.unlearn(model, list(request.forget_ids), data, store=request.options.get("slice_store"),
                                  progress=progress)
        return UnlearnResult(model=new, stats=stats)
