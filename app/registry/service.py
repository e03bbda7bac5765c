"""Registry services: versions are immutable and content-addressed (the weights file is
named by its sha256); aliases are mutable pointers and every move is recorded."""
from __future__ import annotations

import os
import threading

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from models import unlearn

from ..db import utcnow
from ..errors import LetheError
from .models import PRODUCTION, AliasMove, ModelAlias, ModelVersion, RegisteredModel
from .storage import WeightStore, weights  # noqa: F401 - weights(settings): the store callers pass


def get_model(session: Session, name: str, *, lock: bool = False) -> RegisteredModel | None:
    q = select(RegisteredModel).where(RegisteredModel.name == name)
    if lock and session.get_bind().dialect.name == "postgresql":
        # serialises per-model writers (job claim/publish, sweeper, cancel, consolidation) among
        # themselves. FOR NO KEY UPDATE, not FOR UPDATE: a submission's INSERT checks its foreign
        # key with FOR KEY SHARE on this row while it holds the queued job FOR SHARE (attach), and
        # a claim holding FOR UPDATE here then waiting for that job deadlocked with it (Postgres
        # aborted the claim; the job waited a minute for the sweeper)
        q = q.with_for_update(key_share=True)
    return session.execute(q).scalar_one_or_none()


def model_facts(session: Session, name: str):
    """What a submission checks of a model — a row with ``name``, ``family``, ``classes``, or
    None: one Core read on the session's connection (``POST /v1/forget`` runs it every time)."""
    return session.connection().execute(_FACTS, {"name": name}).first()


_M = RegisteredModel.__table__
_FACTS = select(_M.c.name, _M.c.family, _M.c.classes).where(_M.c.name == bindparam("name"))


def list_models(session: Session) -> list[RegisteredModel]:
    return list(session.execute(select(RegisteredModel).order_by(RegisteredModel.name)).scalars())


def aliases(session: Session, model_name: str) -> dict[str, int]:
    rows = session.execute(select(ModelAlias).where(ModelAlias.model_name == model_name)).scalars()
    return {r.alias: r.version for r in rows}


def get_version(session: Session, model_name: str, version: int) -> ModelVersion | None:
    return session.execute(select(ModelVersion).where(
        ModelVersion.model_name == model_name, ModelVersion.version == version)).scalar_one_or_none()


def resolve_alias(session: Session, model_name: str, alias: str = PRODUCTION) -> ModelVersion | None:
    a = session.get(ModelAlias, (model_name, alias))
    return get_version(session, model_name, a.version) if a else None


def versions(session: Session, model_name: str) -> list[ModelVersion]:
    return list(session.execute(select(ModelVersion).where(ModelVersion.model_name == model_name)
                                .order_by(ModelVersion.version)).scalars())


def alias_moves(session: Session, model_name: str) -> list[AliasMove]:
    return list(session.execute(select(AliasMove).where(AliasMove.model_name == model_name)
                                .order_by(AliasMove.id)).scalars())


def version_by_job(session: Session, job_id: str) -> ModelVersion | None:
    return session.execute(select(ModelVersion).where(ModelVersion.job_id == job_id)).scalar_one_or_none()


# --- weights: content-addressed files, local or on an object store (app/registry/storage.py) ---

def weights_tmp_path(store: WeightStore, model_name: str) -> str:
    return store.tmp_path(model_name)


def publish_weights(store: WeightStore, model_name: str, tmp_path: str, sha256: str) -> str:
    """Move a freshly written checkpoint to its content address; returns the path relative
    to the registry (what the database stores)."""
    return store.publish(tmp_path, f"{model_name}/{sha256}.safetensors")


def absolute_path(store: WeightStore, storage_path: str) -> str:
    """Where a version's file is (or would be) on this node; ``version_file`` makes it local."""
    return store.path(storage_path)


def version_file(store: WeightStore, version: "ModelVersion") -> str:
    """A version's weights (checkpoint, or bundle manifest and members) on this node's disk,
    fetched from the object store if need be, each file's sha256 checked as it arrives;
    500 ``registry_error`` when they are missing."""
    try:
        return store.fetch_version(version.storage_path, version.sha256)
    except FileNotFoundError:
        raise LetheError(500, "registry_error", f"weights of {version.model_name} v{version.version} are missing "
                                                f"from the registry")
    except ValueError as e:
        raise LetheError(500, "registry_error", f"weights of {version.model_name} v{version.version}: {e}")


# --- bundles (sharded exact models): a manifest + one safetensors file per member ----------------
# <model>/<manifest sha256>.bundle.json names the version (the manifest lists every member's
# sha256); members live at <model>/members/<sha256>.safetensors and SISA/ARCANE slice
# checkpoints at <model>/slices/<hash of the ids trained so far>.safetensors.

BUNDLE_SUFFIX = ".bundle.json"
FAMILIES = unlearn.family_names()  # the method catalogue's model families (docs/methods.md)


def is_bundle(storage_path: str) -> bool:
    return storage_path.endswith(BUNDLE_SUFFIX)


def slices_dir(registry_dir: str, model_name: str) -> str:
    """Where a model's slice checkpoints are on this node's disk."""
    return os.path.join(registry_dir, model_name, "slices")


def slices(store: WeightStore, model_name: str):
    """The model's slice checkpoint store (local directory or object store)."""
    return store.slices(model_name)


def publish_member(store: WeightStore, model_name: str, tmp_path: str, sha256: str) -> str:
    """Move a member file to its content address; returns its path relative to the manifest."""
    store.publish(tmp_path, f"{model_name}/members/{sha256}.safetensors")
    return f"members/{sha256}.safetensors"


def manifest_tmp_path(store: WeightStore, model_name: str) -> str:
    return store.tmp_path(model_name, BUNDLE_SUFFIX)


def publish_bundle(store: WeightStore, model_name: str, tmp_manifest: str, sha256: str) -> str:
    return store.publish(tmp_manifest, f"{model_name}/{sha256}{BUNDLE_SUFFIX}")


def load_version(store: WeightStore, version: "ModelVersion", device="cpu"):
    """(model, meta) of a version, single checkpoint or bundle; every file's sha256 checked."""
    from models.checkpoint import file_sha256, load_checkpoint

    path = version_file(store, version)
    if file_sha256(path) != version.sha256:
        raise LetheError(500, "registry_error", f"weights of {version.model_name} v{version.version} fail their sha256 check")
    if is_bundle(version.storage_path):
        from models.unlearn.shards import load_bundle

        try:
            model, meta = load_bundle(path, check=True, store=store.slices(version.model_name))
        except (ValueError, FileNotFoundError) as e:
            raise LetheError(500, "registry_error", f"bundle of {version.model_name} v{version.version}: {e}") from e
        return model.to(device), meta
    return load_checkpoint(path, device=device)


# --- writes (inside the caller's transaction) ------------------------------------------------

def register_model(session: Session, *, name: str, dataset: str, arch: str, input_shape, classes,
                   family: str = "instance", arch_params: dict | None = None, recipe: dict | None = None,
                   status: str = "ready") -> RegisteredModel:
    if family not in FAMILIES:
        raise LetheError(500, "registry_error", f"unknown model family {family!r}; choose one of {FAMILIES}")
    m = RegisteredModel(name=name, dataset=dataset, arch=arch, input_shape=list(input_shape), classes=list(classes),
                        family=family, arch_params=arch_params or None, recipe=recipe, status=status)
    session.add(m)
    session.flush()
    return m


def recipe_of(model: RegisteredModel):
    """The model's stored training recipe (models.train.Recipe); models registered before
    recipes were stored get the demo recipe (Adam, the architecture's default epochs)."""
    from models.train import Recipe, default_recipe

    return Recipe.from_dict(model.recipe, arch=model.arch) if model.recipe else default_recipe(model.arch)


def next_version_number(session: Session, model_name: str) -> int:
    return (session.execute(select(func.max(ModelVersion.version)).where(
        ModelVersion.model_name == model_name)).scalar() or 0) + 1


def add_version(session: Session, *, model_name: str, sha256: str, storage_path: str,
                parent_version: int | None, job_id: str | None, metrics: dict | None) -> ModelVersion:
    v = ModelVersion(model_name=model_name, version=next_version_number(session, model_name), sha256=sha256,
                     storage_path=storage_path, parent_version=parent_version, job_id=job_id,
                     status="READY", metrics=metrics)
    session.add(v)
    session.flush()
    return v


def move_alias(session: Session, *, model_name: str, alias: str, to_version: int, actor: str,
               job_id: str | None = None) -> AliasMove:
    current = session.get(ModelAlias, (model_name, alias))
    from_version = current.version if current else None
    if current is None:
        session.add(ModelAlias(model_name=model_name, alias=alias, version=to_version, updated_at=utcnow()))
    else:
        current.version, current.updated_at = to_version, utcnow()
    move = AliasMove(model_name=model_name, alias=alias, from_version=from_version, to_version=to_version,
                     job_id=job_id, actor=actor, moved_at=utcnow())
    session.add(move)
    session.flush()
    return move


# --- serving: reload when the alias moves, no restart -------------------------------------

class ServingCache:
    """Holds the loaded network per model, keyed by the version id and sha256 the
    ``production`` alias points to *now*; a moved alias loads the new weights on the next call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: dict[str, tuple[int, str, object, dict]] = {}

    def get(self, store: WeightStore, version: ModelVersion):
        key = (version.id, version.sha256)
        with self._lock:
            hit = self._loaded.get(version.model_name)
            if hit and (hit[0], hit[1]) == key:
                return hit[2], hit[3]
            model, meta = load_version(store, version, device="cpu")
            self._loaded[version.model_name] = (version.id, version.sha256, model, meta)
            return model, meta


def row_risks(session: Session, model_name: str, instance_ids) -> tuple[int | None, dict[str, tuple[float, float]]]:
    """(version, {instance id: (risk, gap)}) of the newest version whose risk job ran
    (worker/risk.py); (None, {}) when none has."""
    from sqlalchemy import func, select

    from .models import RowRisk

    version = session.execute(select(func.max(RowRisk.version)).where(RowRisk.model_name == model_name)).scalar()
    if version is None:
        return None, {}
    ids, out = list(instance_ids), {}
    for i in range(0, len(ids), 500):
        for iid, risk, gap in session.execute(select(RowRisk.instance_id, RowRisk.risk, RowRisk.gap).where(
                RowRisk.model_name == model_name, RowRisk.version == version,
                RowRisk.instance_id.in_(ids[i:i + 500]))):
            out[iid] = (risk, gap)
    return version, out


def risk_coverage(session: Session, model_name: str) -> tuple[int | None, set[str]]:
    """(newest version with risk rows, the instance ids it measured)."""
    from sqlalchemy import func, select

    from .models import RowRisk

    version = session.execute(select(func.max(RowRisk.version)).where(RowRisk.model_name == model_name)).scalar()
    if version is None:
        return None, set()
    return version, set(session.execute(select(RowRisk.instance_id).where(
        RowRisk.model_name == model_name, RowRisk.version == version)).scalars())
