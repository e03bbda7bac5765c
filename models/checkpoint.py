"""Checkpoints as safetensors with string metadata: loading runs no code (no pickle).

The metadata carries what is needed to rebuild the network (architecture, its constructor
parameters, input shape, classes) plus the dataset name and any caller extras, all
JSON-encoded strings. ``arch_params`` is absent from checkpoints written before the zoo
had parameters; it then means the architecture's defaults.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile

import torch
from safetensors.torch import load_file, save_file, safe_open

from .nets import build_model

REQUIRED_META = ("arch", "dataset", "input_shape", "classes")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(model: torch.nn.Module, path: str | os.PathLike, *, arch: str, dataset: str,
                    input_shape, classes, extra: dict | None = None, arch_params: dict | None = None) -> str:
    """Write the state dict atomically (temp file + rename); return the file's sha256."""
    meta = {"arch": arch, "dataset": dataset, "input_shape": json.dumps(list(input_shape)),
            "classes": json.dumps(list(classes))}
    if arch_params:
        meta["arch_params"] = json.dumps(arch_params, sort_keys=True)
    for k, v in (extra or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return file_sha256(path)


def read_metadata(path: str | os.PathLike) -> dict:
    with safe_open(os.fspath(path), framework="pt") as f:
        raw = f.metadata() or {}
    missing = [k for k in REQUIRED_META if k not in raw]
    if missing:
        raise ValueError(f"checkpoint {path} lacks metadata {missing}; not a Lethe checkpoint")
    meta = dict(raw)
    meta["input_shape"] = tuple(json.loads(raw["input_shape"]))
    meta["classes"] = json.loads(raw["classes"])
    meta["arch_params"] = json.loads(raw["arch_params"]) if raw.get("arch_params") else {}
    return meta


def load_checkpoint(path: str | os.PathLike, device: torch.device | str | None = None):
    """Rebuild the network named in the metadata and load its weights. Returns (model, meta)."""
    meta = read_metadata(path)
    model = build_model(meta["arch"], meta["input_shape"], len(meta["classes"]), meta["arch_params"])
    state = load_file(os.fspath(path), device="cpu")
    model.load_state_dict(state, strict=True)
    model.eval()
    if device is not None:
        model.to(device)
    return model, meta
