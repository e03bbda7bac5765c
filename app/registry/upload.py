"""Register a user's own model: safetensors weights + architecture name + training-data
manifest. Pickled checkpoints (torch.save, .pt/.pth/.pkl/.ckpt) are refused: loading them
can run arbitrary code. The manifest names the training instances: ids of the training
split of a registered dataset (``POST /v1/datasets``, or a shipped demo dataset, registered
on first use), whose store holds their data for unlearning, and optionally the subject each
belongs to (stored only as a keyed hash). The dataset is the one source of truth for
lineage: a manifest may name only rows of its training split, a ``subject_id`` that
disagrees with the dataset's is refused and an omitted one is taken from it;
``{"all_training_rows": true}`` names the whole training split."""
from __future__ import annotations

import hashlib
import json
import re
import time

from sqlalchemy.orm import Session

from ..audit import service as audit
from ..catalogue import service as catalogue
from ..catalogue.models import TrainingInstance
from ..security import pseudonyms
from ..errors import LetheError
from ..limits import check_depth
from ..datasets import service as datasets
from ..datasets.demo import ensure_demo_dataset
from ..datasets.models import READY
from ..settings import Settings
from . import service as registry
from . import starting
from .models import PRODUCTION
from ..events import service as events

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib")


def looks_pickled(data: bytes, filename: str | None) -> str | None:
    """Why ``data`` looks like a pickle-based checkpoint, or None."""
    if data[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
        return "it starts with a pickle protocol header"
    if data[:4] == b"PK\x03\x04":
        return "it is a zip archive (torch.save format, which holds a pickle)"
    if filename and filename.lower().endswith(PICKLE_SUFFIXES):
        return f"its name ends with {filename[filename.rfind('.'):]!r}"
    return None


def parse_manifest(raw: str | bytes) -> list[dict] | None:
    """The manifest's instances, or None for ``{"all_training_rows": true}`` (the model was
    trained on the dataset's whole training split)."""
    check_depth(raw, "manifest")  # json.loads recurses: 50,000 levels were a RecursionError (500)
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise LetheError(422, "bad_manifest", f"manifest is not valid JSON: {e}")
    if isinstance(doc, dict) and "all_training_rows" in doc:
        if doc != {"all_training_rows": True}:
            raise LetheError(422, "bad_manifest", 'a whole-split manifest is exactly {"all_training_rows": true} '
                                                  "(no instances beside it)")
        return None
    items = doc.get("instances") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise LetheError(422, "bad_manifest",
                         'manifest must be {"instances": [{"instance_id": ..., "subject_id"?: ...}, ...]} '
                         'with at least one instance, or {"all_training_rows": true}')
    out, seen = [], set()
    for k, it in enumerate(items):
        if not isinstance(it, dict) or not isinstance(it.get("instance_id"), str):
            raise LetheError(422, "bad_manifest", f"manifest instances[{k}] needs a string instance_id")
        sid = it.get("subject_id")
        if sid is not None and (not isinstance(sid, str) or not 1 <= len(sid) <= 256):
            raise LetheError(422, "bad_manifest", f"manifest instances[{k}].subject_id must be a string")
        if it["instance_id"] in seen:
            raise LetheError(422, "bad_manifest", f"manifest repeats instance {it['instance_id']!r}")
        seen.add(it["instance_id"])
        out.append({"instance_id": it["instance_id"], "subject_id": sid})
    return out


def parse_json_field(raw: str | None, field: str) -> dict | None:
    """A JSON object sent as a form field (multipart cannot nest): None when absent."""
    if raw is None or raw.strip() == "":
        return None
    check_depth(raw, field)
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise LetheError(422, f"bad_{field}", f"{field} is not valid JSON: {e}")
    if not isinstance(doc, dict):
        raise LetheError(422, f"bad_{field}", f"{field} must be a JSON object, got {type(doc).__name__}")
    return doc


def check_model_spec(arch: str, input_shape, num_classes: int, arch_params: dict | None,
                     recipe: dict | None) -> tuple[dict, dict]:
    """(resolved architecture parameters, recipe as JSON) for a model to register, or a 422
    that says exactly what is wrong: an unknown architecture (with the list, plug-ins
    included), bad constructor parameters, an input the architecture cannot take, a network
    that breaks the unlearning contract, a bad recipe field (every one of them)."""
    from models.architectures import ArchitectureError, validate
    from models.train import Recipe, RecipeError

    try:
        checked = validate(arch, input_shape, num_classes, arch_params)
    except ArchitectureError as e:
        code = "unknown_arch" if str(e).startswith("unknown architecture") else "bad_arch_params"
        raise LetheError(422, code, str(e))
    try:
        r = Recipe.from_dict(recipe, arch=arch)
    except RecipeError as e:
        raise LetheError(422, "bad_recipe", str(e))
    return checked["params"], r.to_json()


def _dataset(session: Session, settings: Settings, name: str):
    """The registered dataset the model was trained on (a shipped demo dataset is
    registered on first use, before this request's transaction writes anything)."""
    try:
        ensure_demo_dataset(settings, name)
    except KeyError:
        pass  # not a shipped dataset: it must have been registered with POST /v1/datasets
    ds = datasets.get(session, name)
    if ds is None or ds.status != READY:
        raise LetheError(422, "unknown_dataset", f"dataset {name!r} is not registered and ready "
                                                      f"(register it with POST /v1/datasets)")
    return ds


def register_upload(session: Session, settings: Settings, *, name: str, arch: str, dataset: str, weights: bytes,
                    filename: str | None, manifest_raw: str | bytes, actor: str, arch_params: dict | None = None,
                    recipe: dict | None = None) -> dict:
    from safetensors.torch import load as st_load

    import torch

    from models.checkpoint import save_checkpoint
    from models.nets import build_model
    from models.train import accuracy

    t0 = time.perf_counter()
    if not NAME_RE.match(name):
        raise LetheError(422, "bad_name", "model name: 1-128 characters, a-z 0-9 . _ -, starting with a letter or digit")
    why = looks_pickled(weights, filename)
    if why:
        raise LetheError(415, "pickle_refused",
                         f"pickled checkpoints are refused ({why}): loading a pickle can run arbitrary code. "
                         f"Save the state dict as safetensors instead: "
                         f"safetensors.torch.save_file(model.state_dict(), 'model.safetensors')")
    try:
        state = st_load(weights)
    except Exception as e:  # noqa: BLE001 - any parse failure is the client's file
        raise LetheError(422, "not_safetensors", f"weights are not a readable safetensors file: {e}")
    ds = _dataset(session, settings, dataset)
    input_shape, classes = tuple(ds.schema["shape"]), list(ds.classes)
    arch_params, recipe = check_model_spec(arch, input_shape, len(classes), arch_params, recipe)
    recipe = starting.resolve(session, settings, recipe, arch=arch, input_shape=input_shape,
                              num_classes=len(classes), arch_params=arch_params)
    model = build_model(arch, input_shape, len(classes), arch_params)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise LetheError(422, "weights_do_not_fit",
                         f"weights do not fit arch {arch!r} with parameters {arch_params} for dataset {dataset!r} "
                         f"(input {list(input_shape)}, {len(classes)} classes): {str(e)[:800]}")
    model.eval()
    items = parse_manifest(manifest_raw)
    refs = {it["instance_id"]: pseudonyms.subject_ref(settings.subject_secret, it["subject_id"])
            for it in items or () if it["subject_id"]}
    try:
        rows = catalogue.rows_for_model(datasets.store_dir(settings, ds.name), name, ds.name,
                                        None if items is None else [it["instance_id"] for it in items],
                                        subject_refs=refs)
    except catalogue.LineageError as e:
        raise LetheError(422, e.code, e.detail)
    if registry.get_model(session, name) is not None:
        raise LetheError(409, "model_exists", f"model {name!r} is already registered")

    hx, hy = (torch.from_numpy(a) for a in datasets.holdout_arrays(settings, ds.name, settings.job_holdout_rows))
    ta = float(accuracy(model, hx, hy))
    uploaded_sha = hashlib.sha256(weights).hexdigest()
    tmp = registry.weights_tmp_path(registry.weights(settings), name)
    sha = save_checkpoint(model.cpu(), tmp, arch=arch, dataset=ds.name, input_shape=input_shape,
                          classes=classes, extra={"uploaded_sha256": uploaded_sha}, arch_params=arch_params)
    rel = registry.publish_weights(registry.weights(settings), name, tmp, sha)
    registry.register_model(session, name=name, dataset=ds.name, arch=arch, input_shape=input_shape,
                            classes=classes, arch_params=arch_params, recipe=recipe)
    metrics = {"ta": ta, "uploaded_sha256": uploaded_sha, "seconds": round(time.perf_counter() - t0, 3)}
    v = registry.add_version(session, model_name=name, sha256=sha, storage_path=rel, parent_version=None,
                             job_id=None, metrics=metrics)
    audit.append(session, actor=actor, action="model.registered",
                 payload={"model": name, "arch": arch, "arch_params": arch_params, "recipe": recipe,
                          "dataset": ds.name, "uploaded_sha256": uploaded_sha,
                          "instances": len(rows), "subjects": len({r["subject_ref"] for r in rows if r["subject_ref"]})})
    audit.append(session, actor=actor, action="model.version_created",
                 payload={"model": name, "version": v.version, "sha256": sha, "parent_version": None,
                          "metrics": metrics})
    registry.move_alias(session, model_name=name, alias=PRODUCTION, to_version=v.version, actor=actor)
    events.version_published(session, v)
    events.alias_moved(session, name, PRODUCTION, None, v, actor=actor)
    audit.append(session, actor=actor, action="alias.moved",
                 payload={"model": name, "alias": PRODUCTION, "from_version": None, "to_version": v.version})
    session.bulk_insert_mappings(TrainingInstance, rows)
    audit.append(session, actor=actor, action="catalogue.loaded",
                 payload={"model": name, "dataset": ds.name, "instances": len(rows)})
    return {"name": name, "arch": arch, "arch_params": arch_params, "recipe": recipe, "dataset": ds.name,
            "version": v.version, "sha256": sha,
            "uploaded_sha256": uploaded_sha, "test_accuracy": ta, "instances": len(rows),
            "aliases": {PRODUCTION: v.version}}
