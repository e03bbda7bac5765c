"""An example architecture plug-in for Lethe: a small gated MLP (GLU hidden layer,
Dauphin et al., "Language Modeling with Gated Convolutional Networks", ICML 2017, eq. 1,
used here on a row of features).

Lethe finds it through the entry point ``tinynet = "lethe_tinynet:TinyNet"`` in the group
``lethe.architectures``. The class keeps Lethe's contract: ``forward = tail(trunk(x))``,
``tail_modules()``, ``features(x)`` and a final linear ``head``. Its constructor takes
``(input_shape, num_classes, **params)``; the defaults give the parameters' types.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class TinyNet(nn.Module):
    """A gated MLP: one GLU layer, one hidden layer, a linear head."""

    lethe_inputs = "tabular"

    def __init__(self, input_shape, num_classes, hidden: int = 32, gated: bool = True):
        super().__init__()
        d = math.prod(input_shape)
        self.gated = gated
        self.inp = nn.Linear(d, 2 * hidden if gated else hidden)
        self.fc = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x.flatten(1))
        return nn.functional.glu(h, dim=1) if self.gated else torch.relu(h)

    def tail(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(z)))

    def tail_modules(self) -> list[nn.Module]:
        return [self.fc, self.head]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(self.trunk(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.trunk(x))


class NoTrunkNet(nn.Module):
    """Breaks the contract (no trunk/tail split): Lethe must refuse it at registration."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.head = nn.Linear(math.prod(input_shape), num_classes)

    def forward(self, x):
        return self.head(x.flatten(1))
