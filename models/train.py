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

from . import trainers
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
    1e-3, batch 64, no weight decay, seed 0) are the recipe every demo model was trained with.

    ``trainer`` names the training code (models/trainers.py; ``lethe``: the loop below, whose
    parameters are the other fields) and ``trainer_params`` a plug-in's own parameters,
    validated by its schema. With a plug-in only ``seed`` of the other fields is used.

    ``start`` names the model's starting weights, a registered version
    ``{"model", "version", "sha256"}``: every training of the model (its first and every
    retrain) starts from them instead of a random initialisation, which is what "retraining"
    means for a fine-tuned model (the registry resolves and checks it, app/registry/starting.py)."""

    optimizer: str = "adam"
    lr: float = 1e-3
    epochs: int = 8
    batch_size: int = 64
    weight_decay: float = 0.0
    seed: int = 0
    momentum: float = 0.9
    trainer: str = trainers.DEFAULT
    trainer_params: dict | None = None
    start: dict | None = None

    FIELDS = ("optimizer", "lr", "epochs", "batch_size", "weight_decay", "seed", "momentum", "trainer",
              "trainer_params", "start")

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
        name, params = d.get("trainer", trainers.DEFAULT), d.get("trainer_params")
        try:
            t = trainers.get(name if isinstance(name, str) else repr(name))
            if t.name == trainers.DEFAULT:
                if params:
                    problems.append("recipe.trainer_params: the built-in trainer 'lethe' takes the recipe's own "
                                    "fields (optimizer, lr, epochs, ...), not trainer_params")
            else:
                out["trainer"], out["trainer_params"] = t.name, t.validate(params)
        except trainers.TrainerNotFound as e:
            problems.append(f"recipe.trainer: {e}")
        except trainers.TrainerParamsError as e:
            problems.extend(f"recipe.{p}" for p in e.problems)
        start = d.get("start")
        if start is not None:
            if not isinstance(start, dict):
                problems.append(f"recipe.start must be an object {{model, version}}, got {start!r}")
            else:
                extra = sorted(set(start) - {"model", "version", "sha256"})
                sha = start.get("sha256")
                if extra:
                    problems.append(f"recipe.start has unknown field(s) {extra} (fields: model, version, sha256)")
                if not isinstance(start.get("model"), str) or not start.get("model"):
                    problems.append(f"recipe.start.model must be a registered model's name, got {start.get('model')!r}")
                if isinstance(start.get("version"), bool) or not isinstance(start.get("version"), int) \
                        or start["version"] < 1:
                    problems.append(f"recipe.start.version must be an integer >= 1, got {start.get('version')!r}")
                if sha is not None and not (isinstance(sha, str) and len(sha) == 64
                                            and all(c in "0123456789abcdef" for c in sha)):
                    problems.append(f"recipe.start.sha256 must be 64 lowercase hex digits, got {sha!r}")
                out["start"] = {k: start[k] for k in ("model", "version", "sha256") if k in start}
        if problems:
            raise RecipeError(problems)
        return cls(**out)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        if self.trainer == trainers.DEFAULT:  # the built-in trainer: the recipe as it always was
            del d["trainer"], d["trainer_params"]
        if self.start is None:
            del d["start"]
        return d

    def trainer_run_params(self) -> tuple[str, dict | None]:
        """(trainer name, the parameters it is run with): the built-in trainer's are the recipe."""
        if self.trainer == trainers.DEFAULT:
            return self.trainer, {k: v for k, v in self.to_json().items() if k != "start"}
        return self.trainer, self.trainer_params

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
                arch_params: dict | None = None, start: dict[str, torch.Tensor] | None = None,
                heldout: tuple[torch.Tensor, torch.Tensor] | None = None,
                cancelled: Callable[[], bool] | None = None) -> nn.Module:
    """Train `arch` on (x, y) with the recipe's trainer (models.trainers; by default Lethe's
    own loop, whose parameters are the recipe) from a seeded initialisation or, with
    ``start``, from the model's starting weights. Returns the model in eval mode; the
    trainer's metrics are ``model.lethe_train_metrics``. With ``recipe`` the recipe decides
    the built-in loop and the seed (the loose keyword arguments are ignored); without it, Adam
    with the given settings."""
    if recipe is None:
        recipe = Recipe(optimizer="adam", lr=lr, epochs=epochs or DEFAULT_EPOCHS.get(arch, 8),
                        batch_size=batch_size, weight_decay=weight_decay, seed=seed)
    device = device or get_device()
    gen = seed_everything(recipe.seed)
    model = build_model(arch, input_shape, num_classes, arch_params)
    if recipe.start is not None and start is None:
        raise ValueError(f"the recipe starts from {recipe.start['model']} v{recipe.start['version']}, but its "
                         "starting weights were not given: training from a random initialisation would not be "
                         "this model's training")
    if start is not None:
        load_starting_point(model, start)
    model = model.to(device)
    name, params = recipe.trainer_run_params()
    model.lethe_train_metrics = trainers.run(
        name, params, model, trainers.TensorSource(x, y), seed=recipe.seed, generator=gen,
        heldout=trainers.TensorSource(*heldout) if heldout is not None else None, device=device,
        progress=progress, cancelled=cancelled)
    return model.eval()


def load_starting_point(model: nn.Module, state: dict[str, torch.Tensor]) -> dict:
    """Copy the starting weights into a freshly built ``model``: every tensor whose name and
    shape match (a backbone's head for other classes is left at its seeded initialisation,
    as in fine-tuning). Raises ValueError when nothing matches. Returns what was loaded."""
    own = model.state_dict()
    loaded = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    if not loaded:
        raise ValueError("the starting point has no tensor matching this network's names and shapes "
                         f"(network: {sorted(own)[:6]}..., starting point: {sorted(state)[:6]}...)")
    model.load_state_dict(loaded, strict=False)
    return {"loaded": sorted(loaded), "kept_initialised": sorted(set(own) - set(loaded))}


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int | None = None, batch_size: int = 64,
        lr: float = 1e-3, weight_decay: float = 0.0, generator: torch.Generator | None = None,
        progress: Callable[[str, float], None] | None = None, recipe: Recipe | None = None) -> nn.Module:
    """Continue training `model` in place with Lethe's own loop (also used by the exact
    methods on shards)."""
    if recipe is None:
        recipe = Recipe(lr=lr, epochs=epochs or Recipe.epochs, batch_size=batch_size, weight_decay=weight_decay)
    _loop(model, trainers.TensorSource(x, y), recipe, generator, progress or (lambda s, f: None), lambda: None)
    return model.eval()


def _loop(model: nn.Module, data, recipe: Recipe, generator, progress, check_cancelled) -> int:
    device = next(model.parameters()).device
    opt = recipe.make_optimizer(model.parameters())
    model.train()
    steps = 0
    for epoch in range(recipe.epochs):
        check_cancelled()
        for xb, yb in data.batches(recipe.batch_size, generator=generator):
            xb, yb = xb.to(device), yb.to(device)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            steps += 1
        progress("train", (epoch + 1) / recipe.epochs)
    model.eval()
    return steps


def _check_recipe(params: dict) -> dict:
    """The built-in trainer's parameters are the recipe's own fields (Recipe.from_dict)."""
    extra = sorted(set(params) - set(Recipe.FIELDS[:7]))
    if extra:
        raise trainers.TrainerParamsError(trainers.DEFAULT, [f"unknown field(s) {extra}"])
    try:
        r = Recipe.from_dict(params)
    except RecipeError as e:
        raise trainers.TrainerParamsError(trainers.DEFAULT, e.problems) from None
    return {k: v for k, v in r.to_json().items() if k in Recipe.FIELDS[:7]}


def lethe_trainer(ctx: trainers.TrainContext) -> dict:
    """Lethe's own loop: cross-entropy, the recipe's optimizer, shuffled mini-batches."""
    recipe = Recipe(**ctx.params)  # the built-in trainer's parameters are the recipe
    steps = _loop(ctx.model, ctx.data, recipe, ctx.generator, ctx.progress, ctx.check_cancelled)
    return {"epochs": recipe.epochs, "steps": steps}


TRAINER = trainers.Trainer(name=trainers.DEFAULT, train=lethe_trainer, check=_check_recipe,
                           schema={"type": "object", "description": "the recipe's own fields",
                                   "properties": {k: {} for k in Recipe.FIELDS[:7]}},
                           summary="Lethe's own loop: the model's recipe (optimizer, lr, epochs, batch size, "
                                   "weight decay, momentum), cross-entropy", losses=("classification", "one-class"))


def _any_object(params: dict) -> dict:
    """Whatever the customer's pipeline needs (handed to it with each retrain order)."""
    return dict(params)


def external_trainer(ctx: trainers.TrainContext) -> dict:
    """Trained by the customer's own pipeline: Lethe never trains it."""
    raise trainers.TrainerError("trainer 'external': this model is trained by the customer's own pipeline; Lethe "
                                "does not train it (its exact versions come from retrain orders, "
                                "app/registry/orders.py)")


EXTERNAL = trainers.Trainer(name="external", train=external_trainer, check=_any_object,
                            schema={"type": "object", "description": "any JSON object, handed to the pipeline"},
                            summary="The customer's own pipeline: exact versions come from retrain orders "
                                    "(GET /v1/retrain-orders), never from Lethe's workers")
TRAINERS = [TRAINER, EXTERNAL]


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
