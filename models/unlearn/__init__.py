"""One interface for every unlearning method.

    fn = get_method(name)
    result = fn(model, UnlearnRequest(...), progress=callback)   # -> UnlearnResult

`model` is never modified: a method works on a copy and returns the new model with its
stats. `progress(stage, fraction)` is called as the method advances so a worker can
publish it. Adding a method means adding a module that calls `register`; nothing else
changes (the pattern of OPTML-Group/Unlearn-Sparse's `get_unlearn_method`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from torch import nn

OBJECTIVES = ("misclassify", "relabel", "retrain_like")

ProgressFn = Callable[[str, float], None]


@dataclass
class UnlearnRequest:
    """What to forget and what the method may use.

    forget_x/forget_y: the instances D_f and their true labels.
    objective: "misclassify" (every instance away from its label), "relabel" (towards
      target_labels, or a per-instance choice when None) or "retrain_like" (stop when D_f
      looks like unseen data; needs holdout_x/holdout_y, data the model never trained on).
    retain_x/retain_y: remaining training data (None when the service does not hold it).
    """

    forget_x: torch.Tensor
    forget_y: torch.Tensor
    objective: str = "misclassify"
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

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose one of {OBJECTIVES}")
        if len(self.forget_x) == 0:
            raise ValueError("nothing to forget: the forget set is empty")
        if len(self.forget_x) != len(self.forget_y):
            raise ValueError("forget_x and forget_y differ in length")
        if self.target_labels is not None and len(self.target_labels) != len(self.forget_y):
            raise ValueError("target_labels must give one label per forget instance")
        if self.target_labels is not None and bool((self.target_labels == self.forget_y).any()):
            raise ValueError("a relabel target equals the instance's own label")


@dataclass
class UnlearnResult:
    model: nn.Module
    stats: dict


class Method(Protocol):
    def __call__(self, model: nn.Module, request: UnlearnRequest,
                 progress: ProgressFn | None = None) -> UnlearnResult: ...


METHODS: dict[str, Method] = {}
NEEDS_RETAINED_DATA: set[str] = set()


def register(name: str, *, needs_retained_data: bool = False):
    def deco(fn):
        METHODS[name] = fn
        if needs_retained_data:
            NEEDS_RETAINED_DATA.add(name)
        return fn
    return deco


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise KeyError(f"unknown unlearning method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]


def run_sequence(name: str, model: nn.Module, requests: list[UnlearnRequest],
                 after_each: Callable[[int, nn.Module, UnlearnResult], None] | None = None) -> nn.Module:
    """Continual unlearning: each request is applied to the model the previous one produced."""
    method = get_method(name)
    for i, req in enumerate(requests):
        result = method(model, req)
        model = result.model
        if after_each:
            after_each(i, model, result)
    return model


from . import instance  # noqa: E402,F401  (registers the instance-wise methods)
from . import sisa, arcane, puma  # noqa: E402,F401  (registers the exact methods and PUMA)
