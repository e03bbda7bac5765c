"""The catalogue's raw-data store: one ``.npy`` file per training instance, so a single
instance's data can be deleted for good. Files are written and read with
``allow_pickle=False``."""
from __future__ import annotations

import hashlib
import os
import re

import numpy as np

_SAFE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def content_hash(arr: np.ndarray) -> str:
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    h = hashlib.sha256()
    h.update(repr(tuple(arr.shape)).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def path_for(data_dir: str, model_name: str, instance_id: str) -> str:
    if not _SAFE.match(model_name) or not _SAFE.match(instance_id):
        raise ValueError(f"unsafe name for the store: {model_name!r}/{instance_id!r}")
    return os.path.join(data_dir, model_name, f"{instance_id}.npy")


def write(path: str, arr: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
    os.replace(tmp, path)


def read(path: str) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def delete(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
