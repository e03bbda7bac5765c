"""Deterministic trainer: the served base model and the retrain-from-scratch baseline
use the very same recipe, so "retrain without D_f" is a fair gold standard.

Same seed + same data => bit-identical weights on CPU (seeded init, seeded shuffling,
deterministic algorithms).

A :class:`Recipe` (optimizer, learning rate, epochs, batch size, weight decay, seed) is
stored with each model, so retraining, SISA shards and any later consolidation train the
way the model was trained.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

from .device import get_device
from .nets import build_model

# epochs chosen so each dataset's default model is converged but quick on 2 CPU cores
DEFAULT_EPOCHS = {"cnn": 8, "mlp": 6, "resnet18": 15}

OPTIMIZERS = ("adam", "adamw", "sgd")
MAX_EPOCHS, MAX_BATCH = 1000, 65536


class RecipeError(ValueError):
    """Every problem of a recipe, one per line item in ``problems``."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Recipe:
    """How a model is trained. ``momentum`` is used by SGD only. The defaults (Adam, lr
    1e-3, batch 64, no weight decay, seed 0) are the recipe every demo model was trained with."""

    optimizer: str = "adam"
    lr: float = 1e-3
    epochs: int = 8
    batch_size: int = 64
    weight_decay: float = 0.0
    seed: int = 0
    momentum: float = 0.9

    FIELDS = ("optimizer", "lr", "epochs", "batch_size", "weight_decay", "seed", "momentum")

    @classmethod
    def from_dict(cls, d: dict | None, *, arch: str | None = None) -> "Recipe":
        """Validate a JSON recipe; missing fields take the defaults (epochs: the
        architecture's default). RecipeError lists every problem, not just the first."""
        d = dict(d or {})
        problems = [f"unknown recipe field {k!r} (fields: {', '.join(cls.FIELDS)})" for k in sorted(d)
                    if k not in cls.FIELDS]
        base = cls(epochs=DEFAULT_EPOCHS.get(arch or "", cls.epochs))
        out = {}

        def number(key, kind, lo, hi, lo_open=False):
            v = d.get(key, getattr(base, key))
            ok = not isinstance(v, bool) and (isinstance(v, int) if kind is int else isinstance(v, (int, float)))
            if not ok or (kind is float and not math.isfinite(v)):
                problems.append(f"recipe.{key} must be {'an integer' if kind is int else 'a finite number'}, "
                                f"got {v!r}")
                return
            if (v <= lo if lo_open else v < lo) or v > hi:
                problems.append(f"recipe.{key} must be {'>' if lo_open else '>='} {lo} and <= {hi}, got {v!r}")
                return
            out[key] = kind(v)

        opt = d.get("optimizer", base.optimizer)
        if opt not in OPTIMIZERS:
            problems.append(f"recipe.optimizer must be one of {list(OPTIMIZERS)}, got {opt!r}")
        else:
            out["optimizer"] = opt
        number("lr", float, 0.0, 10.0, lo_open=True)
        number("epochs", int, 1, MAX_EPOCHS)
        number("batch_size", int, 1, MAX_BATCH)
        number("weight_decay", float, 0.0, 1.0)
        number("seed", int, 0, 2**63 - 1)
        number("momentum", float, 0.0, 0.999)
        if problems:
            raise RecipeError(problems)
        return cls(**out)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        if self.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)


def default_recipe(arch: str, **overrides) -> Recipe:
    """The recipe the demo models use (Adam, the architecture's default epochs)."""
    return dataclasses.replace(Recipe(epochs=DEFAULT_EPOCHS.get(arch, Recipe.epochs)), **overrides)


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def train_model(arch: str, x: torch.Tensor, y: torch.Tensor, *, input_shape, num_classes: int,
                seed: int = 0, epochs: int | None = None, batch_size: int = 64, lr: float = 1e-3,
                weight_decay: float = 0.0, device: torch.device | None = None,
                progress: Callable[[str, float], None] | None = None, recipe: Recipe | None = None,
                arch_params: dict | None = None) -> nn.Module:
    """Train `arch` from scratch on (x, y); returns the model in eval mode. With ``recipe``
    the recipe decides everything (the loose keyword arguments are ignored); without it,
    Adam with the given settings."""
    if recipe is None:
        recipe = Recipe(optimizer="adam", lr=lr, epochs=epochs or DEFAULT_EPOCHS.get(arch, 8),
                        batch_size=batch_size, weight_decay=weight_decay, seed=seed)
    device = device or get_device()
    gen = seed_everything(recipe.seed)
    model = build_model(arch, input_shape, num_classes, arch_params).to(device)
    fit(model, x, y, recipe=recipe, generator=gen, progress=progress)
    return model.eval()


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int | None = None, batch_size: int = 64,
        lr: float = 1e-3, weight_decay: float = 0.0, generator: torch.Generator | None = None,
        progress: Callable[[str, float], None] | None = None, recipe: Recipe | None = None) -> nn.Module:
    """Continue training `model` in place (also used by the exact methods on shards)."""
    if recipe is None:
        recipe = Recipe(lr=lr, epochs=epochs or Recipe.epochs, batch_size=batch_size, weight_decay=weight_decay)
    epochs, batch_size = recipe.epochs, recipe.batch_size
    device = next(model.parameters()).device
    opt = recipe.make_optimizer(model.parameters())
    n = len(x)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
        if progress:
            progress("train", (epoch + 1) / epochs)
    return model.eval()


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits on CPU, computed in batches on the model's device, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = torch.cat([model(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]) \
        if len(x) else torch.empty(0)
    model.train(was_training)
    return out


def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return logits_of(model, x).argmax(1) if len(x) else torch.empty(0, dtype=torch.long)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy in percent (0.0 for an empty set)."""
    if len(x) == 0:
        return 0.0
    return float((predict(model, x) == y.cpu()).float().mean() * 100)
