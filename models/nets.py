"""The built-in architecture zoo, registered through ``models.architectures`` exactly as a
plug-in would be (entry point ``lethe.architectures``: ``builtin = "models.nets:ZOO"``).

- ``mlp``: fully connected layers (``widths``) for tabular rows;
- ``cnn``: two conv blocks + one hidden layer, sized for 8x8 digits and 28x28 MNIST;
- ``resnet18`` / ``resnet34`` / ``resnet50``: He et al., "Deep Residual Learning for Image
  Recognition" (CVPR 2016), Table 1: basic blocks [2,2,2,2] and [3,4,6,3], bottleneck blocks
  [3,4,6,3]; ``stem="imagenet"`` is the paper's 7x7/2 convolution + 3x3/2 max-pool,
  ``stem="cifar"`` the 3x3/1 convolution without pooling used for 32x32 inputs (as in the
  L2UL public code of Cha et al.);
- ``text_bag``: mean of token embeddings (``nn.EmbeddingBag``, fastText-style; Joulin et
  al., "Bag of Tricks for Efficient Text Classification", EACL 2017) + one hidden layer;
- ``text_transformer``: a small Transformer encoder (Vaswani et al., NeurIPS 2017) over
  token ids with learned positions, mean-pooled over non-padding tokens.

Every network splits as ``forward(x) = tail(trunk(x))``, has a final linear ``head`` and
``features(x)`` = the head's input (the contract of ``models.architectures``).
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from .architectures import Architecture, Param


class SmallCNN(nn.Module):
    """Two conv blocks + one hidden layer; sized for 8x8 digits and 28x28 MNIST."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 32, hidden: int = 128):
        super().__init__()
        c, h, w = input_shape
        self.conv1 = nn.Conv2d(c, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        # two 2x2 poolings on 28x28 (-> 7x7), one on 8x8 (-> 4x4): keep small inputs informative
        self.pools = 2 if min(h, w) >= 16 else 1
        hh, ww = h // (2**self.pools), w // (2**self.pools)
        self.fc = nn.Linear(2 * width * hh * ww, hidden)
        self.head = nn.Linear(hidden, num_classes)

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


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), as in He et al. 2016 Fig. 5 (right); the stride
    sits on the 3x3 convolution."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


RESNET_BLOCKS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)), 50: (Bottleneck, (3, 4, 6, 3))}


class ResNet(nn.Module):
    """ResNet-18/34/50 with a CIFAR-style (3x3/1, no pooling) or ImageNet-style (7x7/2 +
    max-pool 3x3/2) stem. The tail is the last residual block + pooling + head. The
    state-dict layout of ``ResNet(depth=18, stem="cifar")`` is that of the earlier ResNet18
    class, so its checkpoints keep loading."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, depth: int = 18, stem: str = "cifar",
                 width: int = 64):
        super().__init__()
        block, counts = RESNET_BLOCKS[depth]
        c = input_shape[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(c, width, 7, 2, 3, bias=False)
            self.pool = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(c, width, 3, 1, 1, bias=False)
            self.pool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(width)
        layers, cin = [], width
        for stage, n in enumerate(counts):
            planes = width * 2 ** stage
            for j in range(n):
                layers.append(block(cin, planes, 2 if (stage > 0 and j == 0) else 1))
                cin = planes * block.expansion
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def _stem(self, x):
        return self.pool(F.relu(self.bn1(self.conv1(x))))

    def trunk(self, x):
        return self.layers[:-1](self._stem(x))

    def tail(self, z):
        return self.head(F.adaptive_avg_pool2d(self.layers[-1](z), 1).flatten(1))

    def tail_modules(self) -> list[nn.Module]:
        return [self.layers[-1], self.head]

    def features(self, x):
        return F.adaptive_avg_pool2d(self.layers(self._stem(x)), 1).flatten(1)

    def forward(self, x):
        return self.tail(self.trunk(x))


def ResNet18(input_shape, num_classes, stem: str = "cifar", width: int = 64) -> ResNet:
    return ResNet(input_shape, num_classes, 18, stem, width)


def _token_ids(x: torch.Tensor, vocab_size: int) -> torch.Tensor:
    # token ids travel as float32 (the catalogue stores float32 arrays; exact below 2^24)
    return x.round().long().clamp_(0, vocab_size - 1)


class _TextHead(nn.Module):
    """What both text classifiers put after their trunk (a pooled sequence vector): one
    hidden layer ``fc`` and the ``head``; the unlearning code edits these two as the tail."""

    def tail(self, z):
        return self.head(F.relu(self.fc(z)))

    def tail_modules(self) -> list[nn.Module]:
        return [self.fc, self.head]

    def features(self, x):
        return F.relu(self.fc(self.trunk(x)))

    def forward(self, x):
        return self.tail(self.trunk(x))


class TextBag(_TextHead):
    """Mean of token embeddings (id 0 = padding, ignored) + one hidden layer."""

    def __init__(self, input_shape, num_classes, vocab_size: int, embed_dim: int = 64, hidden: int = 64):
        super().__init__()
        self.vocab_size = vocab_size
        self.embed = nn.EmbeddingBag(vocab_size, embed_dim, mode="mean", padding_idx=0)
        self.fc = nn.Linear(embed_dim, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def trunk(self, x):
        return self.embed(_token_ids(x, self.vocab_size))


class TextTransformer(_TextHead):
    """Token + learned position embeddings, a pre-norm Transformer encoder, the mean over
    non-padding positions, one hidden layer and the head."""

    def __init__(self, input_shape, num_classes, vocab_size: int, d_model: int = 64, heads: int = 4,
                 layers: int = 2, hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=0)
        self.pos = nn.Parameter(torch.zeros(int(input_shape[0]), d_model))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(d_model, heads, 2 * d_model, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.fc = nn.Linear(d_model, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def trunk(self, x):
        ids = _token_ids(x, self.vocab_size)
        pad = ids == 0
        pad[:, 0] &= ~pad.all(1)  # an all-padding row keeps one position (no NaN from an empty attention)
        h = self.encoder(self.embed(ids) + self.pos, src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).float()
        return (h * keep).sum(1) / keep.sum(1).clamp_min(1.0)



def _resnet(depth: int):
    return lambda input_shape, num_classes, stem="cifar", width=64: ResNet(input_shape, num_classes, depth, stem, width)


_RESNET_PARAMS = {"stem": Param("cifar", str, choices=("cifar", "imagenet"),
                                help="cifar: 3x3/1 conv, no pooling (small images); imagenet: 7x7/2 conv + max-pool"),
                  "width": Param(64, int, min=4, help="channels of the first stage (doubles per stage)")}
_VOCAB = Param(type=int, required=True, min=2, help="number of token ids, padding (0) included")

ZOO = [
    Architecture("mlp", lambda s, k, widths=(128, 64): MLP(s, k, hidden=tuple(widths)),
                 {"widths": Param((128, 64), "ints", help="hidden layer widths")}, inputs="any",
                 summary="fully connected layers (inputs flattened)"),
    Architecture("cnn", SmallCNN, {"width": Param(32, int, min=1), "hidden": Param(128, int, min=1)},
                 inputs="image", min_size=4, summary="two conv blocks + one hidden layer (small images)"),
    *[Architecture(f"resnet{d}", _resnet(d), dict(_RESNET_PARAMS), inputs="image", min_size=8,
                   summary=f"ResNet-{d} (He et al. 2016), CIFAR- or ImageNet-style stem") for d in (18, 34, 50)],
    Architecture("text_bag", TextBag, {"vocab_size": _VOCAB, "embed_dim": Param(64, int, min=1),
                                       "hidden": Param(64, int, min=1)}, inputs="tokens",
                 summary="mean of token embeddings + one hidden layer (token ids, 0 = padding)"),
    Architecture("text_transformer", TextTransformer,
                 {"vocab_size": _VOCAB, "d_model": Param(64, int, min=4), "heads": Param(4, int, min=1),
                  "layers": Param(2, int, min=1), "hidden": Param(64, int, min=1),
                  "dropout": Param(0.1, float, min=0.0)}, inputs="tokens",
                 summary="small Transformer encoder over token ids, mean-pooled"),
]

# back-compatible names: the three architectures of the first release
ARCHITECTURES = {"cnn": SmallCNN, "mlp": MLP, "resnet18": ResNet18}


def build_model(arch: str, input_shape: tuple[int, ...], num_classes: int, params: dict | None = None) -> nn.Module:
    """Any registered architecture (built-in or plug-in) by name; see models.architectures."""
    from .architectures import build_model as build

    try:
        return build(arch, input_shape, num_classes, params)
    except Exception as e:
        if e.__class__.__name__ == "ArchitectureError" and str(e).startswith("unknown architecture"):
            raise KeyError(str(e)) from e
        raise
