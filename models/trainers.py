"""The trainer registry: the code that trains a model, found by name.

Every exact path in Lethe (``POST /v1/models/{name}/train``, the ``retrain`` method, the
shard retrains of a SISA model, a consolidation) trains a freshly built network through one
call, :func:`run`, with the trainer the model was registered with and that trainer's
parameters as stored on the model. Retraining "from scratch without the subject" then means
retraining *by the model's own training code*, as exact unlearning requires (Cao & Yang,
S&P 2015; Bourtoule et al., S&P 2021, §III: the retrained model must come from the same
training algorithm on D \\ D_f).

Trainers come from the entry-point group ``lethe.trainers``, like architectures::

    [project.entry-points."lethe.trainers"]
    augmented = "my_package.training:TRAINER"

An entry point's object is a :class:`Trainer`, a list/tuple/dict of them, or a function
``train(ctx: TrainContext) -> dict`` whose ``Params`` attribute (a pydantic model, used
through its own methods: models/ itself imports no service-layer library) declares its
parameters (the entry point's name is then the trainer's name). Lethe's own loop
(``models.train``, Adam/AdamW/SGD with the stored recipe) is the built-in trainer
``lethe``, loaded first so a plug-in cannot shadow it.

The contract (what a trainer receives in :class:`TrainContext`, and returns):

- ``model``: the network built from the model's architecture (seeded initialisation, or the
  model's starting weights loaded), already on ``device``; train it in place;
- ``data``: a :class:`DataSource` over the training rows it may use, and only those (the
  retained rows: an erased row is never in it); ``data.batches(batch_size, generator=g)``
  yields shuffled ``(x, y)`` CPU batches;
- ``heldout``: the held-out split (for early stopping or model selection), or None;
- ``device``, ``seed`` and ``generator`` (a ``torch.Generator`` seeded with ``seed``; the
  global RNG is seeded too), ``params`` (an instance of the trainer's ``Params``, validated
  when the model was registered);
- ``progress(stage, fraction)``: report progress (fraction in [0, 1]);
  ``check_cancelled()``: raises :class:`TrainingCancelled` when the run was cancelled.

It returns a dict of JSON numbers/strings (its metrics: recorded on the run/version), or
None. Anything it raises becomes a :class:`TrainerError` naming the trainer; a model whose
weights are not finite afterwards is refused the same way, so nothing half-trained is ever
published.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

import torch
from torch import nn

from .plugins import EntryPointRegistry

GROUP = "lethe.trainers"
BUILTIN = "models.train:TRAINERS"
DEFAULT = "lethe"


class TrainerNotFound(ValueError):
    """An unknown trainer name; the message lists the installed ones."""


class TrainerParamsError(ValueError):
    """Parameters the trainer's schema refuses, one problem per item of ``problems``."""

    def __init__(self, trainer: str, problems: list[str]):
        super().__init__(f"trainer {trainer!r}: " + "; ".join(problems))
        self.trainer, self.problems = trainer, problems


class TrainerError(RuntimeError):
    """The trainer failed (raised, returned something that is not metrics, or left weights
    that are not finite). The run fails with this message; nothing is published."""


class TrainingCancelled(RuntimeError):
    """The run was cancelled while training (``TrainContext.check_cancelled``)."""


# --- data -------------------------------------------------------------------------------------

class DataSource(Protocol):
    """Rows a trainer may read: ``len(source)`` rows, batches of CPU tensors."""

    def __len__(self) -> int: ...

    def batches(self, batch_size: int, *, shuffle: bool = True,
                generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class TensorSource:
    """A :class:`DataSource` over rows already read from the store (``x``, ``y`` on CPU).
    Shuffled batches follow ``torch.randperm(n, generator=generator)``, so a seeded run is
    reproducible."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} labels")
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    @property
    def input_shape(self) -> tuple:
        return tuple(self.x.shape[1:])

    def batches(self, batch_size: int, *, shuffle: bool = True,
                generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.x)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield self.x[idx], self.y[idx]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every row at once (a trainer that needs the whole set, e.g. to fit a normaliser)."""
        return self.x, self.y


@dataclass
class TrainContext:
    """Everything a trainer gets; see the module docstring for the contract."""

    model: nn.Module
    data: DataSource
    heldout: DataSource | None
    device: torch.device
    params: Any  # the trainer's validated parameters (an instance of its Params; a dict for the built-ins)
    seed: int
    generator: torch.Generator
    progress: Callable[[str, float], None] = lambda stage, fraction: None
    cancelled: Callable[[], bool] = lambda: False

    def check_cancelled(self) -> None:
        if self.cancelled():
            raise TrainingCancelled("the training run was cancelled")


@dataclass(frozen=True)
class Trainer:
    """A training function by name: ``train(ctx) -> metrics``. ``Params`` (a pydantic model
    class: ``model_validate``, ``model_dump_json``, ``model_json_schema``) validates a
    plug-in's parameters; a built-in gives ``check(params) -> dict`` (raising
    TrainerParamsError) and ``schema`` instead, and receives the checked dict. None of both:
    the trainer takes no parameters."""

    name: str
    train: Callable[[TrainContext], dict | None]
    Params: Any = None
    check: Callable[[dict], dict] | None = None
    schema: dict | None = None
    summary: str = ""
    source: str = ""
    losses: tuple = ("classification",)  # what it optimises; ARCANE's one-class members need Lethe's own loss

    def validate(self, params: dict | None) -> dict:
        """The full parameter set (defaults filled in), JSON-ready; TrainerParamsError lists
        every problem."""
        if params is not None and not isinstance(params, dict):
            raise TrainerParamsError(self.name, [f"trainer_params must be a JSON object, got {params!r}"])
        params = params or {}
        if self.check is not None:
            return self.check(params)
        if self.Params is None:
            if params:
                raise TrainerParamsError(self.name, [f"trainer {self.name!r} takes no parameters, got "
                                                     f"{sorted(params)}"])
            return {}
        try:
            return json.loads(self.Params.model_validate(params).model_dump_json())
        except Exception as e:  # noqa: BLE001 - pydantic's ValidationError, read through its errors()
            if not callable(getattr(e, "errors", None)):
                raise TrainerParamsError(self.name, [f"trainer_params: {e.__class__.__name__}: {e}"]) from None
            raise TrainerParamsError(self.name, [
                f"trainer_params.{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
                + ("" if err["type"] == "extra_forbidden" else f" (got {err.get('input')!r})")
                for err in e.errors()]) from None

    def instance(self, checked: dict):
        """What ``ctx.params`` is: the Params instance, or the checked dict for the built-ins."""
        return self.Params.model_validate(checked) if self.Params is not None and self.check is None else checked

    def to_json(self) -> dict:
        schema = (self.schema if self.schema is not None else
                  self.Params.model_json_schema() if self.Params is not None else {"type": "object", "properties": {}})
        return {"name": self.name, "summary": self.summary, "source": self.source, "params": schema}


def from_function(name: str, fn: Callable, source: str = "") -> Trainer:
    params = getattr(fn, "Params", None)
    if params is not None and not (inspect.isclass(params) and all(
            callable(getattr(params, m, None)) for m in ("model_validate", "model_json_schema"))):
        raise TrainerError(f"{source or name}: Params must be a pydantic model class")
    doc = (inspect.getdoc(fn) or "").strip().splitlines()
    return Trainer(name=name, train=fn, Params=params, summary=doc[0] if doc else "", source=source)


# --- discovery (the same rules as models.architectures) -------------------------------------

def _as_trainers(obj, ep_name: str, source: str) -> list[Trainer]:
    if isinstance(obj, Trainer):
        return [dataclasses.replace(obj, source=obj.source or source)]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(t, Trainer) for t in obj):
        return [dataclasses.replace(t, source=t.source or source) for t in obj]
    if callable(obj) and not inspect.isclass(obj):
        return [from_function(ep_name, obj, source)]
    raise TrainerError(f"entry point {ep_name!r} = {source!r} is neither a Trainer, a list of them, nor a function")


_plugins = EntryPointRegistry(GROUP, BUILTIN, lambda obj, name, source: _as_trainers(obj, name, source),
                              "trainer")
_ensure = _plugins.ensure


def reload() -> None:
    """Forget the cached lookup (after installing a plug-in into a running process; tests)."""
    _plugins.reload()


def names() -> list[str]:
    return sorted(_ensure())


def problems() -> dict[str, str]:
    """Plug-ins that failed to load or clashed with a name already taken, and why."""
    return _plugins.problems()


def get(name: str | None) -> Trainer:
    reg = _ensure()
    name = name or DEFAULT
    if name not in reg:
        raise TrainerNotFound(f"unknown trainer {name!r}; available: {sorted(reg)} (install a plug-in package "
                              f"that declares it in the entry-point group {GROUP!r})")
    return reg[name]


def resolve(name: str | None, params: dict | None) -> tuple[str, dict]:
    """(trainer name, validated parameters) for a model to register."""
    t = get(name)
    return t.name, t.validate(params)


# --- running one --------------------------------------------------------------------------------

def _json_metrics(name: str, out) -> dict:
    if out is None:
        return {}
    if not isinstance(out, dict):
        raise TrainerError(f"trainer {name!r} returned {type(out).__name__}, expected a dict of metrics or None")
    clean = {}
    for k, v in out.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            raise TrainerError(f"trainer {name!r} returned metric {k!r} = {v!r}, which is not JSON") from None
        clean[str(k)] = v
    return clean


def run(name: str | None, params: dict | None, model: nn.Module, data: DataSource, *, seed: int,
        generator: torch.Generator | None = None, heldout: DataSource | None = None,
        device: torch.device | None = None, progress: Callable[[str, float], None] | None = None,
        cancelled: Callable[[], bool] | None = None) -> dict:
    """Train ``model`` in place with trainer ``name`` and ``params``; returns its metrics.
    Raises TrainerError (anything the trainer did wrong), TrainingCancelled, TrainerNotFound,
    TrainerParamsError."""
    t = get(name)
    p = t.instance(t.validate(params))
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    ctx = TrainContext(model=model, data=data, heldout=heldout, device=device or next(model.parameters()).device,
                       params=p, seed=seed, generator=generator, progress=progress or (lambda s, f: None),
                       cancelled=cancelled or (lambda: False))
    try:
        out = t.train(ctx)
    except (TrainingCancelled, TrainerError):
        raise
    except Exception as e:  # noqa: BLE001 - the plug-in's error, reported as such
        raise TrainerError(f"trainer {t.name!r} ({t.source}) failed: {e.__class__.__name__}: {e}") from e
    metrics = _json_metrics(t.name, out)
    bad = [n for n, w in model.state_dict().items() if w.is_floating_point() and not torch.isfinite(w).all()]
    if bad:
        raise TrainerError(f"trainer {t.name!r} left non-finite weights in {bad[:5]}: refused")
    model.eval()
    return metrics
