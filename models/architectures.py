"""The architecture registry: every network Lethe can build, found by name.

Architectures come from the entry-point group ``lethe.architectures`` (the way pytest,
MLflow and Celery find third-party code): an operator installs a Python package whose
metadata declares, for example::

    [project.entry-points."lethe.architectures"]
    tinynet = "my_package.nets:TinyNet"

Code is installed by the operator, never uploaded over HTTP. An entry point's object is
either an :class:`Architecture`, a list/tuple/dict of them, or an ``nn.Module`` subclass
whose ``__init__(input_shape, num_classes, **params)`` names its parameters with defaults
(the entry point's name is then the architecture's name). The built-in zoo
(``models.nets:ZOO``) is loaded through the same function; it is declared in Lethe's own
``pyproject.toml`` and loaded first even when the installed metadata is stale, so a plug-in
can never shadow ``cnn`` or ``mlp``.

The contract every network keeps (what the unlearning methods use). ``x`` is a float32
tensor of shape ``(batch, *input_shape)`` (``input_shape`` a tuple of ints: the dataset's
``shape``, e.g. ``(1, 28, 28)`` for images, ``(14,)`` for a tabular row; token ids for a
``tokens`` dataset arrive as float32 holding integers, 0 = padding):

- ``trunk(x) -> z`` (any tensor, batch first) and ``tail(z) -> logits`` of shape
  ``(batch, num_classes)``, with ``forward(x) == tail(trunk(x))``: Lethe's first unlearning
  phase edits only the tail on cached trunk outputs (``models/unlearn/lethe.py``);
- ``tail_modules() -> list[nn.Module]``: the modules the tail trains (their parameters are
  the only ones that phase changes); it must include the head;
- the head: the final ``nn.Linear(d, num_classes)`` (class count, PUMA's patch), the
  attribute ``head`` or the one the class names in ``lethe_head = "<attribute>"`` (so a
  trained model's state-dict keys need no renaming, e.g. ``lethe_head = "classifier"``);
- ``features(x) -> (batch, d)``: the input of the head (PUMA, nearest-neighbour replay).

Optional class attributes: ``lethe_inputs`` (``image | tabular | tokens | any``, checked
against the dataset), ``lethe_min_size``, ``lethe_head``.

:func:`validate` builds the network once and checks all of it on a dummy input, so a
plug-in that breaks the contract is refused when a model is registered, not mid-job.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .plugins import EntryPointRegistry

GROUP = "lethe.architectures"
BUILTIN = "models.nets:ZOO"
INPUT_KINDS = ("image", "tabular", "tokens", "any")



class ArchitectureError(ValueError):
    """An unknown architecture, bad constructor parameters, an input it cannot take, or a
    network that breaks the contract. The message says which and what would be accepted."""


_MISSING = object()


@dataclass(frozen=True)
class Param:
    """One constructor parameter: its default (``required=True``: no default), its type
    (``int``, ``float``, ``str``, ``bool``, or ``"ints"`` for a list of positive ints) and,
    optionally, the values allowed and a lower bound."""

    default: Any = None
    type: Any = None
    required: bool = False
    choices: tuple | None = None
    min: float | None = None
    help: str = ""

    def to_json(self) -> dict:
        t = self.type if isinstance(self.type, str) else getattr(self.type, "__name__", None)
        d = {"type": t, "required": self.required, "help": self.help}
        if not self.required:
            d["default"] = list(self.default) if isinstance(self.default, tuple) else self.default
        if self.choices:
            d["choices"] = list(self.choices)
        if self.min is not None:
            d["min"] = self.min
        return d


@dataclass(frozen=True)
class Architecture:
    """A network by name: ``build(input_shape, num_classes, **params) -> nn.Module``.

    ``inputs`` says what it takes: ``image`` (C, H, W), ``tabular`` (D,), ``tokens``
    (L,) token ids (stored as float, 0 = padding), or ``any``; ``min_size`` is the smallest
    H/W an image network accepts."""

    name: str
    build: Callable[..., nn.Module]
    params: dict[str, Param] = field(default_factory=dict)
    inputs: str = "any"
    summary: str = ""
    min_size: int = 1
    source: str = ""  # the entry point it came from

    def check_input(self, input_shape) -> None:
        shape = tuple(int(s) for s in input_shape)
        if self.inputs == "image":
            if len(shape) != 3:
                raise ArchitectureError(f"architecture {self.name!r} takes images shaped (channels, height, width); "
                                        f"the dataset's input shape is {list(shape)}")
            if min(shape[1:]) < self.min_size:
                raise ArchitectureError(f"architecture {self.name!r} needs images of at least {self.min_size}x"
                                        f"{self.min_size}; the dataset's are {shape[1]}x{shape[2]}")
        elif self.inputs in ("tabular", "tokens") and len(shape) != 1:
            what = "a row of numeric features" if self.inputs == "tabular" else "a sequence of token ids"
            raise ArchitectureError(f"architecture {self.name!r} takes {what} shaped (length,); the dataset's "
                                    f"input shape is {list(shape)}")

    def to_json(self) -> dict:
        return {"name": self.name, "inputs": self.inputs, "summary": self.summary, "source": self.source,
                "params": {k: p.to_json() for k, p in self.params.items()}}


def from_module_class(name: str, cls: type, source: str = "") -> Architecture:
    """An Architecture for an ``nn.Module`` subclass: its parameters (after input_shape and
    num_classes) are read from the signature; their defaults give their types."""
    sig = inspect.signature(cls.__init__)
    args = [p for p in sig.parameters.values() if p.name != "self"]
    if len(args) < 2 or [a.name for a in args[:2]] != ["input_shape", "num_classes"]:
        raise ArchitectureError(f"{cls.__qualname__}.__init__ must start with (input_shape, num_classes)")
    params = {}
    for a in args[2:]:
        if a.kind in (a.VAR_POSITIONAL, a.VAR_KEYWORD):
            continue
        if a.default is inspect.Parameter.empty:
            params[a.name] = Param(required=True)
        else:
            d = a.default
            params[a.name] = Param(default=d, type=("ints" if isinstance(d, (tuple, list)) else
                                                    (type(d) if d is not None else None)))
    doc = (inspect.getdoc(cls) or "").strip().splitlines()
    return Architecture(name=name, build=cls, params=params, inputs=getattr(cls, "lethe_inputs", "any"),
                        summary=doc[0] if doc else "", min_size=getattr(cls, "lethe_min_size", 1), source=source)


# --- discovery --------------------------------------------------------------------------------

def _as_architectures(obj, ep_name: str, source: str) -> list[Architecture]:
    if isinstance(obj, Architecture):
        return [dataclasses.replace(obj, source=obj.source or source)]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)) and all(isinstance(a, Architecture) for a in obj):
        return [dataclasses.replace(a, source=a.source or source) for a in obj]
    if inspect.isclass(obj) and issubclass(obj, nn.Module):
        return [from_module_class(ep_name, obj, source)]
    raise ArchitectureError(f"entry point {ep_name!r} = {source!r} is neither an Architecture, a list of them, "
                            f"nor an nn.Module subclass")


_plugins = EntryPointRegistry(GROUP, BUILTIN, lambda obj, name, source: _as_architectures(obj, name, source),
                              "architecture")
_ensure = _plugins.ensure


def reload() -> None:
    """Forget the cached lookup (after installing a plug-in into a running process; tests)."""
    _plugins.reload()


def names() -> list[str]:
    return sorted(_ensure())


def problems() -> dict[str, str]:
    """Plug-ins that failed to load or clashed with a name already taken, and why."""
    return _plugins.problems()


def get(name: str) -> Architecture:
    reg = _ensure()
    if name not in reg:
        raise ArchitectureError(f"unknown architecture {name!r}; available: {sorted(reg)}"
                                + (" (install a plug-in package that declares it in the entry-point group "
                                   f"{GROUP!r})"))
    return reg[name]


# --- parameters, building, the contract --------------------------------------------------------

def _coerce(arch: str, key: str, p: Param, v):
    where = f"architecture {arch!r} parameter {key!r}"
    t = p.type
    if t == "ints":
        if not isinstance(v, (list, tuple)) or not v or not all(isinstance(i, int) and not isinstance(i, bool)
                                                                 and i > 0 for i in v):
            raise ArchitectureError(f"{where} must be a non-empty list of positive integers, got {v!r}")
        v = tuple(v)
    elif t is bool:
        if not isinstance(v, bool):
            raise ArchitectureError(f"{where} must be true or false, got {v!r}")
    elif t is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ArchitectureError(f"{where} must be an integer, got {v!r}")
    elif t is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ArchitectureError(f"{where} must be a finite number, got {v!r}")
        v = float(v)
    elif t is str:
        if not isinstance(v, str):
            raise ArchitectureError(f"{where} must be a string, got {v!r}")
    if p.choices is not None and v not in p.choices:
        raise ArchitectureError(f"{where} must be one of {list(p.choices)}, got {v!r}")
    if p.min is not None and isinstance(v, (int, float)) and v < p.min:
        raise ArchitectureError(f"{where} must be at least {p.min}, got {v!r}")
    return v


def resolve_params(arch: str, params: dict | None) -> dict:
    """The full parameter set (defaults filled in), JSON-ready; ArchitectureError names every
    unknown, missing or ill-typed parameter."""
    a = get(arch)
    params = dict(params or {})
    unknown = sorted(set(params) - set(a.params))
    if unknown:
        raise ArchitectureError(f"architecture {arch!r} has no parameter(s) {unknown}; its parameters: "
                                f"{sorted(a.params) or 'none'}")
    out = {}
    for key, p in a.params.items():
        if key in params:
            out[key] = _coerce(arch, key, p, params[key])
        elif p.required:
            raise ArchitectureError(f"architecture {arch!r} needs parameter {key!r}" + (f" ({p.help})" if p.help else ""))
        else:
            out[key] = p.default
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


MAX_PARAMETERS = 500_000_000  # 2 GB of float32: far above anything a CPU service unlearns


def _meta_parameters(a, shape, num_classes: int, kwargs: dict) -> int | None:
    """The parameter count of the network, built on the meta device (no memory is
    allocated), or None when the constructor cannot build there (a plug-in may not)."""
    try:
        with torch.device("meta"):
            m = a.build(shape, num_classes, **kwargs)
        return int(sum(p.numel() for p in m.parameters()))
    except RuntimeError as e:
        if "overflow" in str(e):  # a tensor too large to even describe
            return 2**63 - 1
        return None
    except Exception:  # noqa: BLE001 - the real build below reports what is wrong
        return None


def build_model(arch: str, input_shape, num_classes: int, params: dict | None = None) -> nn.Module:
    """Build ``arch`` for inputs of ``input_shape`` and ``num_classes`` classes (refused, with
    ``ArchitectureError``, above ``MAX_PARAMETERS`` parameters: counted without allocating)."""
    a = get(arch)
    resolved = resolve_params(arch, params)
    a.check_input(input_shape)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in resolved.items()}
    shape = tuple(int(s) for s in input_shape)
    n = _meta_parameters(a, shape, int(num_classes), kwargs)
    if n is not None and n > MAX_PARAMETERS:
        count = "more parameters than a tensor can hold" if n == 2**63 - 1 else f"{n:,} parameters"
        raise ArchitectureError(f"architecture {arch!r} with {resolved} has {count}; at most "
                                f"{MAX_PARAMETERS:,} (check the sizes in its parameters)")
    model = a.build(shape, int(num_classes), **kwargs)
    # what rebuilds it (retraining from scratch): plain attributes, not part of the state dict
    model.lethe_arch, model.lethe_arch_params = arch, resolved
    return model


def dummy_input(arch: str, input_shape, n: int = 2) -> torch.Tensor:
    """A valid batch for a contract check: zeros, except token sequences get id 1 (0 pads)."""
    x = torch.zeros((n, *[int(s) for s in input_shape]))
    return x + 1 if get(arch).inputs == "tokens" else x


def head_of(model: nn.Module) -> nn.Module:
    """The network's head: the attribute named by its class's ``lethe_head`` (default ``head``)."""
    return getattr(model, getattr(model, "lethe_head", "head"), None)


def validate(arch: str, input_shape, num_classes: int, params: dict | None = None) -> dict:
    """Build the network once and check the contract on a dummy batch. Returns the resolved
    parameters and the parameter count; ArchitectureError says what is broken."""
    resolved = resolve_params(arch, params)
    try:
        with torch.random.fork_rng(devices=[]):
            model = build_model(arch, input_shape, num_classes, resolved).eval()
    except ArchitectureError:
        raise
    except Exception as e:  # noqa: BLE001 - a constructor that fails on this input is the input's problem
        raise ArchitectureError(f"architecture {arch!r} cannot be built for input {list(input_shape)} and "
                                f"{num_classes} classes with {resolved}: {e.__class__.__name__}: {e}") from e
    check_contract(arch, model, dummy_input(arch, input_shape), num_classes)
    return {"params": resolved, "parameters": int(sum(p.numel() for p in model.parameters()))}


def check_contract(arch: str, model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    """Check the contract (module docstring) on a built network and a valid batch ``x``;
    ArchitectureError says what is broken."""
    missing = [m for m in ("trunk", "tail", "tail_modules", "features") if not callable(getattr(model, m, None))]
    name = getattr(model, "lethe_head", "head")
    head = head_of(model)
    if missing or not isinstance(head, nn.Linear):
        raise ArchitectureError(f"architecture {arch!r} breaks Lethe's contract: it needs methods trunk(x), tail(z), "
                                f"tail_modules(), features(x) and a final nn.Linear head (attribute 'head', or the "
                                f"one lethe_head names)"
                                + (f"; missing {missing}" if missing else f"; {name!r} is not an nn.Linear"))
    if head.out_features != num_classes:
        raise ArchitectureError(f"architecture {arch!r}: head has {head.out_features} outputs for {num_classes} classes")
    try:
        with torch.no_grad():
            out, split, feats = model(x), model.tail(model.trunk(x)), model.features(x)
    except Exception as e:  # noqa: BLE001
        raise ArchitectureError(f"architecture {arch!r} fails on an input of shape {list(x.shape)[1:]}: "
                                f"{e.__class__.__name__}: {e}") from e
    if tuple(out.shape) != (len(x), num_classes):
        raise ArchitectureError(f"architecture {arch!r} returns logits of shape {list(out.shape)[1:]}, "
                                f"expected [{num_classes}]")
    if not torch.allclose(out, split, atol=1e-5, rtol=1e-4):
        raise ArchitectureError(f"architecture {arch!r} breaks Lethe's contract: forward(x) != tail(trunk(x))")
    if feats.ndim != 2 or feats.shape[1] != head.in_features:
        raise ArchitectureError(f"architecture {arch!r}: features(x) must be the input of head "
                                f"({head.in_features} values), got shape {list(feats.shape)[1:]}")
    tail_params = {id(p) for m in model.tail_modules() for p in m.parameters()}
    if not all(id(p) in tail_params for p in head.parameters()):
        raise ArchitectureError(f"architecture {arch!r}: tail_modules() must include head")
