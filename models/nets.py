"""Architectures by name: a small CNN (1-channel images), CIFAR-style ResNet-18
(3-channel 32x32 images) and an MLP (tabular rows).

Every network exposes ``features(x)`` (the penultimate representation) and ``head``
(the final linear layer), so methods that work on the representation or on the last
layer alone can do so without knowing the architecture.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F


# Every architecture splits as forward(x) = tail(trunk(x)): Lethe's first unlearning phase
# edits only the tail on cached trunk outputs (models/unlearn/instance.py).


class SmallCNN(nn.Module):
    """Two conv blocks + one hidden layer; sized for 8x8 digits and 28x28 MNIST."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 32):
        super().__init__()
        c, h, w = input_shape
        self.conv1 = nn.Conv2d(c, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        # two 2x2 poolings on 28x28 (-> 7x7), one on 8x8 (-> 4x4): keep small inputs informative
        self.pools = 2 if min(h, w) >= 16 else 1
        hh, ww = h // (2**self.pools), w // (2**self.pools)
        self.fc = nn.Linear(2 * width * hh * ww, 128)
        self.head = nn.Linear(128, num_classes)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        if self.pools == 2:
            x = F.max_pool2d(x, 2)
        return F.max_pool2d(F.relu(self.conv2(x)), 2).flatten(1)

    def tail(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.fc(z)))

    def tail_modules(self) -> list[nn.Module]:
        return [self.fc, self.head]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.trunk(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.trunk(x))


class MLP(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...] = (128, 64)):
        super().__init__()
        dims = [math.prod(input_shape), *hidden]
        self.body = nn.Sequential(*[m for a, b in zip(dims, dims[1:]) for m in (nn.Linear(a, b), nn.ReLU())])
        self.head = nn.Linear(dims[-1], num_classes)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.body[:-2](x.flatten(1))

    def tail(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.body[-2:](z))

    def tail_modules(self) -> list[nn.Module]:
        return [self.body[-2], self.head]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.trunk(x))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18 (3x3 stem, no max-pool), as used by the L2UL public code."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        c = input_shape[0]
        self.conv1 = nn.Conv2d(c, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(512, num_classes)

    def trunk(self, x):
        return self.layers[:-1](F.relu(self.bn1(self.conv1(x))))

    def tail(self, z):
        return self.head(F.adaptive_avg_pool2d(self.layers[-1](z), 1).flatten(1))

    def tail_modules(self) -> list[nn.Module]:
        return [self.layers[-1], self.head]

    def features(self, x):
        return F.adaptive_avg_pool2d(self.layers(F.relu(self.bn1(self.conv1(x)))), 1).flatten(1)

    def forward(self, x):
        return self.tail(self.trunk(x))


ARCHITECTURES = {"cnn": SmallCNN, "mlp": MLP, "resnet18": ResNet18}


def build_model(arch: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](tuple(input_shape), int(num_classes))
