"""Pretrained starting points: a model whose every training starts from named weights.

A fine-tuned model is "retrained" by fine-tuning again from the same pretrained weights on
the retained data, not by training from a random initialisation (the setting of Golatkar et
al., "Mixed-Privacy Forgetting in Deep Networks", CVPR 2021: weights pretrained on core data
stay, what was learned from the user data is what has to be forgotten). The recipe names the starting
point, ``"start": {"model": ..., "version": ...}``: a version in the registry (weights the
team registered, or a model Lethe trained). ``resolve`` checks it when the model is
registered (a single-checkpoint version that exists, is not purged, has the digest given, and
whose tensors fit the new network by name and shape) and pins its sha256 in the stored
recipe; ``load`` reads it for every training run, retrain and consolidation, checking that
digest, so a retrain can never start from other weights than the ones recorded.

The starting point is in the model's lineage: the model card and the deletion certificate
name it with its digest, and when it was itself trained on a registered dataset, its dataset
and whether that version still holds data erased since (``tainted``).
"""
from __future__ import annotations

import hashlib

from sqlalchemy.orm import Session

from ..errors import LetheError
from ..settings import Settings
from . import governance
from . import service as registry
from .models import PURGED


def _version(session: Session, start: dict):
    m = registry.get_model(session, start["model"])
    if m is None:
        raise LetheError(422, "bad_start", f"recipe.start: model {start['model']!r} is not registered")
    v = registry.get_version(session, m.name, start["version"])
    if v is None:
        raise LetheError(422, "bad_start", f"recipe.start: {m.name} has no version {start['version']}")
    if registry.is_bundle(v.storage_path):
        raise LetheError(422, "bad_start", f"recipe.start: {m.name} is a {m.family} bundle, not one checkpoint")
    if v.status == PURGED:
        raise LetheError(422, "bad_start", f"recipe.start: {m.name} v{v.version} is purged (it held erased data)")
    if start.get("sha256") and start["sha256"] != v.sha256:
        raise LetheError(422, "bad_start", f"recipe.start: {m.name} v{v.version} has sha256 {v.sha256}, not "
                                           f"{start['sha256']}")
    return m, v


def read_state(path: str, sha256: str) -> dict:
    """The starting weights (safetensors, never a pickle) after checking their digest."""
    from safetensors.torch import load

    with open(path, "rb") as f:
        raw = f.read()
    got = hashlib.sha256(raw).hexdigest()
    if got != sha256:
        raise ValueError(f"starting weights {path} have sha256 {got}, the recipe pins {sha256}")
    return load(raw)


def resolve(session: Session, settings: Settings, recipe: dict, *, arch: str, input_shape, num_classes: int,
            arch_params: dict | None) -> dict:
    """The recipe with its starting point checked and its sha256 pinned (unchanged without
    one); 422 ``bad_start`` says what is wrong."""
    start = (recipe or {}).get("start")
    if not start:
        return recipe
    from models.architectures import build_model
    from models.train import load_starting_point

    m, v = _version(session, start)
    try:
        state = read_state(registry.weights(settings).fetch(v.storage_path, v.sha256), v.sha256)
        load_starting_point(build_model(arch, input_shape, num_classes, arch_params), state)
    except (OSError, ValueError) as e:
        raise LetheError(422, "bad_start", f"recipe.start: {m.name} v{v.version} cannot start this network: {e}")
    return {**recipe, "start": {"model": m.name, "version": v.version, "sha256": v.sha256}}


def load(session: Session, settings: Settings, recipe: dict | None) -> dict | None:
    """The starting weights a training of the model begins from (None: a random
    initialisation). Raises ValueError when they are gone or not the ones pinned."""
    start = (recipe or {}).get("start")
    if not start:
        return None
    v = registry.get_version(session, start["model"], start["version"])
    if v is None or v.status == PURGED:
        raise ValueError(f"the starting point {start['model']} v{start['version']} is gone (purged or removed)")
    try:
        path = registry.weights(settings).fetch(v.storage_path, start["sha256"])
    except FileNotFoundError:
        raise ValueError(f"the starting point {start['model']} v{start['version']} has no weights in the registry")
    return read_state(path, start["sha256"])


def describe(session: Session, recipe: dict | None) -> dict | None:
    """What the card and the certificate say of the starting point: model, version, sha256,
    the dataset it was trained on (None: weights registered without a dataset row) and
    whether that version still holds data erased since."""
    start = (recipe or {}).get("start")
    if not start:
        return None
    m = registry.get_model(session, start["model"])
    v = registry.get_version(session, start["model"], start["version"])
    out = {"model": start["model"], "version": start["version"], "sha256": start.get("sha256"),
           "dataset": m.dataset if m is not None else None, "status": v.status if v is not None else None}
    out["tainted"] = bool(v is not None and governance.taint(session, v.model_name, v.version)["tainted"])
    return out
