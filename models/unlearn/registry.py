"""The one interface every unlearning method implements, and the catalogue of them.

    fn = get_method(name)
    result = fn(model, UnlearnRequest(...), progress=callback)   # -> UnlearnResult

``model`` is never modified: a method works on a copy and returns the new model with its
stats. ``progress(stage, fraction)`` is called as the method advances so a worker can
publish it (the pattern of OPTML-Group/Unlearn-Sparse's ``get_unlearn_method``).

The catalogue (``METHODS``, ``FAMILIES``) is the single source of what Lethe offers: the
API's enums and validation, the registry's model families, the CLI's choices and
docs/methods.md are all derived from it. This module imports nothing heavy (no torch): a
method's code is imported the first time ``get_method`` asks for it, so the gateway and
the CLI can read the catalogue cheaply.

How to add a method
-------------------
1. Write ``models/unlearn/<yours>.py`` with a function (or callable object) of the
   ``Method`` signature; import ``UnlearnRequest``/``UnlearnResult`` from
   ``models.unlearn.registry`` (never from the package, so nothing imports in a circle).
2. Register it once, in ``models/unlearn/__init__.py``::

       register("my_method", "models.unlearn.mine:my_method", family="instance",
                objectives=("misclassify", "retrain_like"), needs_retained_data=True,
                exact=False, reaches_objective=False,
                description="one line: what it does, after which paper")

3. Regenerate the docs table: ``python -m models.unlearn > docs/methods.md`` (a test
   fails while docs/ and the catalogue disagree).

Nothing else changes: the API accepts the name for models of that family, the worker runs
it through ``get_method``, the verification rules follow its metadata.

Fields (``MethodInfo``): ``family`` — the kind of model it edits (``instance``: one
checkpoint; ``sisa``/``arcane``: a sharded bundle); ``objectives`` — which of
``OBJECTIVES`` it accepts; ``needs_retained_data`` — it cannot run without the retained
training data; ``exact`` — the result is what retraining without the data gives (not an
approximation); ``reaches_objective`` — it drives every forget instance to a
``LABEL_OBJECTIVES`` goal, so the worker refuses to publish a model where one is
left (False for methods that remove influence instead: retraining, influence patches);
``serves_deletions`` — its result may be published as a deletion (False for a method that
full U-LiRA, ``bench/ulira.py``, shows does not remove what retraining removes: the planner
then serves the deletion by exact retraining, and the method stays callable for study);
``caveats`` — measured limits of the models a method serves, per kind of data
(``data_kind``: ``tabular`` for flat rows, ``images`` otherwise), each a sentence naming its
measurement: docs/methods.md lists them, and registering a model of the method's family on
such data logs the sentence and records it on the version (``caveat_for``); ``not_offered`` —
the kinds of data whose caveat is a refusal: a new model of the method's family on such data
is refused with the caveat's sentence (``refusal_for``), because another method serves it
better on every measured axis; a model registered before keeps its deletions served.
A sharded family's methods are ``ShardedMethod`` objects (``models.unlearn.shards``), which
the worker can also run member by member.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:  # annotations only: importing this module must not import torch
    import torch
    from torch import nn

OBJECTIVES = ("misclassify", "relabel", "retrain_like")
# objectives whose success is a label per forget instance: a method that ``reaches_objective``
# must leave none of them on its old label (the worker's verification)
LABEL_OBJECTIVES = ("misclassify", "relabel")
# What a deletion request gets unless it asks otherwise (the API, the CLI and a bare
# UnlearnRequest all read it here): a result that looks like retraining, per example
# (metrics.RetrainLikeTest), rather than one that singles D_f out by misclassifying it.
DEFAULT_OBJECTIVE = "retrain_like"
OBJECTIVE_DESCRIPTIONS = {
    "misclassify": "every forget instance ends away from its label",
    "relabel": "every forget instance ends on a target label (given, or one chosen per instance)",
    "retrain_like": "the default: each forget instance loses the confidence that training on it gave, as far as "
                    "retraining would take it and no further (needs held-out data; see metrics.RetrainLikeTest)",
}

ProgressFn = Callable[[str, float], None]


def fixed_relabel_targets(model, x: "torch.Tensor", y: "torch.Tensor", target: int) -> "torch.Tensor":
    """The labels a relabel to one fixed ``target`` teaches D_f: ``target`` for every
    instance, except an instance whose own label already is ``target`` (teaching a model an
    instance's own label forgets nothing), which is taught its runner-up class instead: the
    highest-scoring class other than its label, the per-instance choice of the relabel
    objective without a target (as in instance-wise unlearning, Cha et al., AAAI 2024,
    arXiv 2301.11578, whose relabel objective trains towards a label other than the own).
    Deciding this here, where the model is, lets the service accept a fixed target without
    reading the instances' labels at submission (an answer that depended on them would tell
    the caller the labels)."""
    import torch

    targets = torch.full_like(y, int(target))
    same = targets == y
    if bool(same.any()):
        dev = next(model.parameters()).device
        was = model.training
        model.eval()
        with torch.no_grad():
            logits = model(x[same].to(dev)).float().cpu()
        model.train(was)
        logits[torch.arange(len(logits)), y[same]] = float("-inf")
        targets[same] = logits.argmax(1).to(targets.dtype)
    return targets


@dataclass
class UnlearnRequest:
    """What to forget and what the method may use.

    forget_x/forget_y: the instances D_f and their true labels.
    objective: "retrain_like" (DEFAULT_OBJECTIVE: D_f loses what retraining would take away,
      per example; needs holdout_x/holdout_y, data the model never trained on), "misclassify"
      (every instance away from its label) or "relabel" (towards target_labels, or a
      per-instance choice when None).
    retain_x/retain_y: remaining training data (None when the service does not hold it).
    reference_gap: optional, per forget instance, its own membership gap measured by reference
      models (mean logit confidence of references trained on it minus of references not
      trained on it: LiRA's offline calibration, Carlini et al. 2022); ``retrain_like`` then
      aims at this per-example drop instead of the population estimate
      (metrics.RetrainLikeTest, ``expected_shift``).
    """

    forget_x: torch.Tensor
    forget_y: torch.Tensor
    objective: str = DEFAULT_OBJECTIVE
    target_labels: torch.Tensor | None = None
    retain_x: torch.Tensor | None = None
    retain_y: torch.Tensor | None = None
    holdout_x: torch.Tensor | None = None
    holdout_y: torch.Tensor | None = None
    seed: int = 0
    options: dict = field(default_factory=dict)
    # exact methods (SISA, ARCANE) delete by id and retrain from the retained rows by id
    forget_ids: list[str] | None = None
    retain_ids: list[str] | None = None
    reference_gap: "torch.Tensor | None" = None

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose one of {OBJECTIVES}")
        if len(self.forget_x) == 0:
            raise ValueError("nothing to forget: the forget set is empty")
        if len(self.forget_x) != len(self.forget_y):
            raise ValueError("forget_x and forget_y differ in length")
        if self.target_labels is not None and len(self.target_labels) != len(self.forget_y):
            raise ValueError("target_labels must give one label per forget instance")
        if self.reference_gap is not None and len(self.reference_gap) != len(self.forget_y):
            raise ValueError("reference_gap must give one value per forget instance")
        if self.target_labels is not None and bool((self.target_labels == self.forget_y).any()):
            raise ValueError("a relabel target equals the instance's own label")


@dataclass
class UnlearnResult:
    model: nn.Module
    stats: dict


class Method(Protocol):
    def __call__(self, model: nn.Module, request: UnlearnRequest,
                 progress: ProgressFn | None = None) -> UnlearnResult: ...


@dataclass(frozen=True)
class Family:
    """A kind of registered model. ``sharded``: its versions are bundles of isolated members
    (manifest + one file per member) rather than one checkpoint."""

    name: str
    sharded: bool
    default_method: str
    description: str


@dataclass(frozen=True)
class MethodInfo:
    name: str
    entry: str                      # "module:attribute", imported by load()
    family: str
    objectives: tuple[str, ...]
    needs_retained_data: bool
    exact: bool
    description: str
    reaches_objective: bool = True
    picks: tuple[str, str] | None = None  # a choice: (method with retained data, method without)
    serves_deletions: bool = True   # False: not an unlearning method on its own; the planner retrains
    caveats: tuple[tuple[str, str], ...] = ()  # (data kind, measured limit): see the module docstring
    not_offered: tuple[str, ...] = ()  # data kinds whose caveat refuses new models: see the module docstring

    def caveat_for(self, input_shape) -> str | None:
        """The measured limit that applies to a model of this method on data of ``input_shape``."""
        kind = data_kind(input_shape)
        return next((text for k, text in self.caveats if k == kind), None)

    def refusal_for(self, input_shape) -> str | None:
        """The caveat that refuses a new model of this method on data of ``input_shape``."""
        return self.caveat_for(input_shape) if data_kind(input_shape) in self.not_offered else None

    def load(self) -> Method:
        if self.picks is not None:
            return _choice(self)
        module, _, attr = self.entry.partition(":")
        return getattr(importlib.import_module(module), attr)


METHODS: dict[str, MethodInfo] = {}
FAMILIES: dict[str, Family] = {}
DATA_KINDS = ("tabular", "images")


def data_kind(input_shape) -> str:
    """``tabular`` for flat rows (one dimension), ``images`` for anything with more."""
    return "tabular" if len(tuple(input_shape)) <= 1 else "images"


def register_family(name: str, *, sharded: bool, default_method: str, description: str) -> Family:
    if name in FAMILIES:
        raise ValueError(f"model family {name!r} is registered twice")
    FAMILIES[name] = fam = Family(name, sharded, default_method, description)
    return fam


def register(name: str, entry: str, *, family: str, objectives: tuple[str, ...] = OBJECTIVES,
             needs_retained_data: bool, exact: bool, description: str,
             reaches_objective: bool = True, serves_deletions: bool = True,
             caveats: dict[str, str] | None = None, not_offered: tuple[str, ...] = ()) -> MethodInfo:
    """Add a method to the catalogue (see the module docstring). ``entry`` is
    "package.module:attribute"; the module is imported on first use."""
    if ":" not in entry:
        raise ValueError(f"method {name!r}: entry must be 'module:attribute', got {entry!r}")
    if any(k not in DATA_KINDS for k in (caveats or {})):
        raise ValueError(f"method {name!r}: caveats are keyed by data kind, one of {list(DATA_KINDS)}")
    if any(k not in (caveats or {}) for k in not_offered):
        raise ValueError(f"method {name!r}: a kind of data it is not offered for needs its measured caveat")
    return _add(MethodInfo(name, entry, family, tuple(objectives), needs_retained_data, exact, description,
                           reaches_objective, serves_deletions=serves_deletions,
                           caveats=tuple((caveats or {}).items()), not_offered=tuple(not_offered)))


def register_choice(name: str, *, with_retained: str, without_retained: str, description: str) -> MethodInfo:
    """A name that picks one of two registered methods of the same family: the first when the
    service holds the retained data, the second otherwise (``resolve`` says which)."""
    a, b = method_info(with_retained), method_info(without_retained)
    if a.family != b.family:
        raise ValueError(f"choice {name!r}: {a.name!r} and {b.name!r} belong to different families")
    return _add(MethodInfo(name, f"{a.entry} | {b.entry}", a.family,
                           tuple(o for o in a.objectives if o in b.objectives), b.needs_retained_data,
                           a.exact and b.exact, description, a.reaches_objective and b.reaches_objective,
                           picks=(a.name, b.name), serves_deletions=a.serves_deletions and b.serves_deletions))


def _add(info: MethodInfo) -> MethodInfo:
    name = info.name
    if name in METHODS:
        raise ValueError(f"unlearning method {name!r} is registered twice")
    if info.family not in FAMILIES:
        raise ValueError(f"method {name!r}: unknown model family {info.family!r}; register it first")
    if not info.objectives or any(o not in OBJECTIVES for o in info.objectives):
        raise ValueError(f"method {name!r}: objectives must be a non-empty subset of {OBJECTIVES}, "
                         f"got {info.objectives}")
    if not info.description or "\n" in info.description:
        raise ValueError(f"method {name!r}: give a one-line description")
    METHODS[name] = info
    return info


def must_reach(method: str, objective: str) -> bool:
    """Whether a job's result is refused unless every forget instance reached ``objective``."""
    return objective in LABEL_OBJECTIVES and method_info(method).reaches_objective


def method_info(name: str) -> MethodInfo:
    if name not in METHODS:
        raise KeyError(f"unknown unlearning method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]


def get_method(name: str) -> Method:
    return method_info(name).load()


def resolve(name: str, *, has_retained_data: bool) -> MethodInfo:
    """The method that actually runs: a choice becomes one of its two methods."""
    info = method_info(name)
    if info.picks is not None:
        return method_info(info.picks[0] if has_retained_data else info.picks[1])
    return info


def _choice(info: MethodInfo) -> Method:
    def method(model, request: UnlearnRequest, progress: ProgressFn | None = None) -> UnlearnResult:
        return resolve(info.name, has_retained_data=request.retain_x is not None).load()(model, request, progress)
    method.__name__ = info.name
    return method


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise KeyError(f"unknown model family {name!r}; choose one of {list(FAMILIES)}")
    return FAMILIES[name]


def method_names() -> tuple[str, ...]:
    return tuple(METHODS)


def family_names() -> tuple[str, ...]:
    return tuple(FAMILIES)


def methods_for(family: str) -> tuple[str, ...]:
    """The methods a model of ``family`` accepts, its default first."""
    fam = get_family(family)
    rest = [n for n, m in METHODS.items() if m.family == family and n != fam.default_method]
    return (fam.default_method, *rest)


def markdown() -> str:
    """docs/methods.md, generated from the catalogue (``python -m models.unlearn``)."""
    def yes(b: bool) -> str:
        return "yes" if b else "no"

    lines = ["# Unlearning methods", "",
             "Generated from the catalogue in `models/unlearn/__init__.py` by `python -m models.unlearn`;",
             "a test fails when this file and the catalogue disagree. How to add a method:",
             "`models/unlearn/registry.py`.", "", "## Model families", "",
             "| family | versions are | default method | description |", "|---|---|---|---|"]
    for f in FAMILIES.values():
        lines.append(f"| `{f.name}` | {'a sharded bundle' if f.sharded else 'one checkpoint'} | "
                     f"`{f.default_method}` | {f.description} |")
    lines += ["", "## Objectives", "", "| objective | meaning |", "|---|---|"]
    lines += [f"| `{o}` | {d} |" for o, d in OBJECTIVE_DESCRIPTIONS.items()]
    lines += ["", "## Methods", "",
              "| method | family | objectives | needs retained data | exact | refused unless every instance "
              "reaches the objective | serves a deletion on its own | description |", "|---|---|---|---|---|---|---|---|"]
    for m in METHODS.values():
        lines.append(f"| `{m.name}` | `{m.family}` | {', '.join(m.objectives)} | {yes(m.needs_retained_data)} | "
                     f"{yes(m.exact)} | {yes(m.reaches_objective)} | "
                     f"{yes(m.serves_deletions) if m.serves_deletions else 'no: the planner retrains'} | {m.description} |")
    if any(m.caveats for m in METHODS.values()):
        lines += ["", "## Measured caveats", "",
                  "Limits measured on the models a method serves, per kind of data. Registering a model of the "
                  "method's family on such data logs the sentence and records it on the version (metrics `caveat`); "
                  "where the caveat's *new models* column says *refused*, another method serves such data better on "
                  "every measured axis and a new model of the family is refused with the sentence. Deletions of a "
                  "model registered before are served as usual: they stay exact, and what a caveat describes is the "
                  "model's accuracy or cost, chosen when the model was trained, not a flaw of the deletion.", "",
                  "| method | data | new models | caveat |", "|---|---|---|---|"]
        lines += [f"| `{m.name}` | {k} | {'refused' if k in m.not_offered else 'allowed'} | {text} |"
                  for m in METHODS.values() for k, text in m.caveats]
    return "\n".join(lines) + "\n"

