"""Registry governance: which versions still hold erased data (tainted), alias moves by an
operator (rollback refused onto a tainted or purged version), and purging the weights of
superseded versions that hold erased data.

A version's weights hold every catalogued instance of its model except those erased by
the jobs in its own lineage (itself and its ancestors through ``parent_version``). An
instance erased by any other job is therefore still *in* that version: the version is
tainted, must not serve again, and its weights file is deleted once a newer version serves
(the row and its sha256 stay, status ``PURGED``).

A version published by an approximate method only approximately lacks what its job erased.
Once an exact version descends from it (a consolidation, app/jobs/consolidation.py), it is
*superseded*: rollback to it is refused like a tainted one, and its weights are purged the
same way.
"""
from __future__ import annotations

import re

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..audit import service as audit
from ..catalogue.models import TrainingInstance
from ..db import utcnow
from ..errors import LetheError
from ..events import service as events
from . import service as registry
from .models import PRODUCTION, PURGED, READY, AliasMove, ModelVersion
from .storage import WeightStore

ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
RESERVED_ALIASES = frozenset({"history"})


def lineage_jobs(session: Session, model_name: str, version: int) -> set[str]:
    """Job ids of a version and all its ancestors."""
    by_number = {v.version: v for v in registry.versions(session, model_name)}
    jobs: set[str] = set()
    seen: set[int] = set()
    v = by_number.get(version)
    while v is not None and v.version not in seen:
        seen.add(v.version)
        if v.job_id:
            jobs.add(v.job_id)
        v = by_number.get(v.parent_version) if v.parent_version is not None else None
    return jobs


def erased_by_job(session: Session, model_name: str) -> dict[str, int]:
    """{job id: number of instances it erased} for a model."""
    rows = session.execute(select(TrainingInstance.erased_by_job, func.count()).where(
        TrainingInstance.model_name == model_name, TrainingInstance.erased_at.is_not(None))
        .group_by(TrainingInstance.erased_by_job)).all()
    return {job or "": n for job, n in rows}


def taint(session: Session, model_name: str, version: int, erased: dict[str, int] | None = None) -> dict:
    """{tainted, erased_instances, jobs}: the erasures this version's weights still hold."""
    erased = erased if erased is not None else erased_by_job(session, model_name)
    mine = lineage_jobs(session, model_name, version)
    held = {j: n for j, n in erased.items() if j not in mine}
    return {"tainted": bool(held), "erased_instances": sum(held.values()), "jobs": sorted(held)}


def superseded_by(session: Session, model_name: str, version: int, versions: list | None = None) -> int | None:
    """The first exact version descending from an approximate ``version`` (None: not
    superseded, or exact itself)."""
    versions = versions if versions is not None else registry.versions(session, model_name)
    by_number = {v.version: v for v in versions}
    me = by_number.get(version)
    if me is None or me.exact:
        return None
    for w in versions:
        if w.version <= version or not w.exact:
            continue
        seen, p = set(), w.parent_version
        while p is not None and p not in seen and p >= version:
            if p == version:
                return w.version
            seen.add(p)
            p = by_number[p].parent_version if p in by_number else None
    return None


def alias_history(session: Session, model_name: str, alias: str | None = None) -> list[AliasMove]:
    q = select(AliasMove).where(AliasMove.model_name == model_name)
    if alias:
        q = q.where(AliasMove.alias == alias)
    return list(session.execute(q.order_by(AliasMove.id)).scalars())


def set_alias(session: Session, *, model_name: str, alias: str, version: int, actor: str,
              reason: str | None = None) -> AliasMove | None:
    """Point ``alias`` at ``version`` (rollback or move forward). Refused (409) when that
    version is purged or holds data erased since. Returns the move, or None if unchanged."""
    if registry.get_model(session, model_name, lock=True) is None:
        raise LetheError(404, "unknown_model", f"model {model_name!r} is not registered")
    if not ALIAS_RE.match(alias):
        raise LetheError(422, "bad_alias", "an alias is 1-64 characters: a-z, 0-9, '_' or '-', starting with a letter")
    if alias in RESERVED_ALIASES:  # GET .../aliases/history is the moves' log: such an alias could not be read
        raise LetheError(422, "bad_alias", f"{alias!r} names a route of its own (.../aliases/{alias}); choose another")
    v = registry.get_version(session, model_name, version)
    if v is None:
        known = [x.version for x in registry.versions(session, model_name)]
        raise LetheError(404, "unknown_version", f"{model_name} has no version {version}; versions: {known}")
    if v.status == PURGED:
        raise LetheError(409, "version_purged",
                         f"{model_name} v{version} was purged at {v.purged_at.isoformat() if v.purged_at else '?'} "
                         f"because it held erased data; its weights no longer exist")
    t = taint(session, model_name, version)
    if t["tainted"]:
        raise LetheError(409, "version_tainted",
                         f"refused: {model_name} v{version} was trained on data erased since "
                         f"({t['erased_instances']} instance(s) erased by job(s) {', '.join(t['jobs'])}); "
                         f"serving it would bring erased data back. Choose a version created after those "
                         f"erasures.")
    later = superseded_by(session, model_name, version)
    if later is not None:
        raise LetheError(409, "version_superseded",
                         f"refused: {model_name} v{version} forgot approximately and was consolidated by the exact "
                         f"v{later}; serving it would bring the approximation back. Choose v{later} or later.")
    current = registry.aliases(session, model_name).get(alias)
    if current == version:
        return None
    move = registry.move_alias(session, model_name=model_name, alias=alias, to_version=version, actor=actor)
    move.reason = reason
    audit.append(session, actor=actor, action="alias.moved",
                 payload={"model": model_name, "alias": alias, "from_version": current, "to_version": version,
                          "reason": reason, "operator": True})
    events.alias_moved(session, model_name, alias, current, v, actor=actor, reason=reason)
    session.flush()
    return move


def purge_superseded(session: Session, store: WeightStore, model_name: str, *, actor: str = "system") -> list[int]:
    """Delete the weights of every version that holds erased data, or was superseded by an
    exact consolidation, and is not what ``production`` serves now; keep the row (sha256,
    metrics, lineage), mark it PURGED and audit it. Idempotent. Returns the purged version
    numbers. On an object store the weights' objects lose every version and unfinished
    upload (``WeightStore.delete``); other nodes drop their cached copies when they next
    reconcile (app/registry/storage.py)."""
    registry.get_model(session, model_name, lock=True)
    prod = registry.resolve_alias(session, model_name, PRODUCTION)
    erased = erased_by_job(session, model_name)
    versions = registry.versions(session, model_name)
    if not erased and all(v.exact for v in versions):
        return []
    purged: list[int] = []
    for v in versions:
        if v.status != READY or (prod is not None and v.version == prod.version):
            continue
        t = taint(session, model_name, v.version, erased)
        later = superseded_by(session, model_name, v.version, versions)
        if not t["tainted"] and later is None:
            continue
        v.status, v.purged_at = PURGED, utcnow()
        session.flush()
        in_use = {f for r in session.execute(select(ModelVersion.storage_path).where(
            ModelVersion.model_name == model_name, ModelVersion.status == READY)).scalars()
            for f in weight_files(store, r)}
        for f in weight_files(store, v.storage_path):
            if f not in in_use:
                store.delete(f)
        audit.append(session, actor=actor, action="model.version_purged",
                     payload={"model": model_name, "version": v.version, "sha256": v.sha256,
                              "erased_instances_held": t["erased_instances"], "jobs": t["jobs"],
                              "superseded_by": later, "serving_version": prod.version if prod else None})
        events.version_purged(session, v, superseded_by=later, serving_version=prod.version if prod else None)
        purged.append(v.version)
    session.flush()
    return purged


def weight_files(store: WeightStore, storage_path: str) -> list[str]:
    """The names a version's weights live in: its checkpoint, or a bundle's manifest and every
    member file it names (members that did not change are shared with other versions)."""
    if not registry.is_bundle(storage_path):
        return [storage_path]
    try:
        return [storage_path] + [name for name, _ in store.members(storage_path)]
    except FileNotFoundError:
        return [storage_path]


def purge_all(session: Session, store: WeightStore, *, actor: str = "system") -> dict[str, list[int]]:
    out = {}
    for m in registry.list_models(session):
        got = purge_superseded(session, store, m.name, actor=actor)
        if got:
            out[m.name] = got
    return out
