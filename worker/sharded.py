"""The sharded execution path (SISA, ARCANE): plan the deletion, retrain the affected members,
assemble the new ensemble. Exact by construction: each member is retrained from the last
slice checkpoint that never saw an erased instance.

    build      plan_deletion on the base manifest -> the affected members; then either
               fan them out (Celery: a chord of ``lethe.exact_member`` tasks, whose callback
               ``lethe.exact_assemble`` calls ``worker.driver.finish_sharded``) or retrain
               them here, one after another
    retrain_member   one member (one Celery task): its file written to its content address;
               slice checkpoints read from / written to the model's slice store
    assemble   the base members plus the retrained ones (every file's sha256 checked),
               measured; the manifest is written, and stale slice checkpoints dropped, only
               once the lifecycle has verified and published it (``Built``)

A family's method supplies ``plan_deletion`` and ``retrain_member`` (``models.unlearn.shards``);
a new sharded family needs no change here.
"""
from __future__ import annotations

import time
from typing import Callable

from app.catalogue import service as catalogue
from app.registry import service as registry
from app.settings import Settings
from models.unlearn import get_method

from .inputs import base_file, data_fn, holdout
from .job import Built, JobFailed, JobSpec
from .lease import Lease


def build(s: Settings, spec: JobSpec, lease: Lease, fan_out: Callable[[dict], None] | None) -> Built | None:
    """The new ensemble, or None when the member retrains were handed to ``fan_out``."""
    _, config, _, _, spec.affected = _deletion(s, spec, data_fn(s, spec.model_name))
    lease.beat(f"retraining {len(spec.affected)} of {config.shards} members", 0.05)
    if fan_out is not None and spec.affected:
        fan_out(spec.to_json())
        return None
    return assemble(s, spec, [retrain_member(s, spec, m, lease) for m in spec.affected], lease)


def _deletion(s: Settings, spec: JobSpec, data):
    """(manifest, config, old plan, new plan, affected members) of this job's deletion."""
    from models.unlearn.shards import ExactConfig, Plan, read_manifest

    doc = read_manifest(base_file(s, spec))
    config, plan = ExactConfig.from_json(doc["config"]), Plan.from_json(doc["plan"])
    if config.kind != spec.method:
        raise JobFailed(f"model is a {config.kind} bundle; method {spec.method!r} does not fit")
    new_plan, affected = get_method(spec.method).plan_deletion(config, plan, spec.forget_ids, data)
    return doc, config, plan, new_plan, affected


def retrain_member(s: Settings, spec: JobSpec, member: int, lease: Lease | None = None) -> dict:
    """One member's retrain (one Celery task of the chord's group, or a step of ``build``)."""
    from models.unlearn.shards import save_member

    lease = lease or Lease(s, spec)  # a task of its own: beats, no keep-alive thread
    data = data_fn(s, spec.model_name)
    _, config, _, new_plan, affected = _deletion(s, spec, data)
    if member not in affected:
        raise JobFailed(f"member {member} is not affected by job {spec.job_id}")
    store = registry.slices(registry.weights(s), spec.model_name)
    progress = lease.progress(lo=0.05, hi=0.05 + 0.85 / max(1, len(affected)))
    t = time.perf_counter()
    model, st = get_method(spec.method).retrain_member(config, member, new_plan.slices[member], data, store,
                                                       lambda f: progress(f"retrain member {member}", f))
    tmp = registry.weights_tmp_path(registry.weights(s), spec.model_name)
    sha = save_member(model, tmp, config, member)
    rel = registry.publish_member(registry.weights(s), spec.model_name, tmp, sha)
    return {"member": member, "file": rel, "sha256": sha, "retrained_slices": st["retrained_slices"],
            "reused_slices": st["reused_slices"], "seconds": round(time.perf_counter() - t, 3)}


def _retrained(s: Settings, spec: JobSpec, config, got: dict[int, dict]) -> dict:
    """member -> the retrained member model, each file's sha256 checked."""
    from models.checkpoint import file_sha256
    from models.unlearn.shards import load_member

    store = registry.weights(s)
    replaced = {}
    for m, r in got.items():  # written by whichever worker retrained it: fetched if this node lacks it
        path = store.fetch(f"{spec.model_name}/{r['file']}", r["sha256"])
        if file_sha256(path) != r["sha256"]:
            raise JobFailed(f"retrained member {m} fails its sha256 check")
        replaced[m] = load_member(path, config)
    return replaced


def assemble(s: Settings, spec: JobSpec, results: list[dict], lease: Lease) -> Built:
    """The new ensemble, measured; written and cleaned up by the returned ``Built``."""
    from models.train import accuracy
    from models.unlearn.shards import load_bundle

    data = data_fn(s, spec.model_name)
    doc, config, plan, new_plan, affected = _deletion(s, spec, data)
    got = {r["member"]: r for r in results}
    if sorted(got) != sorted(affected):
        raise JobFailed(f"retrained members {sorted(got)} != affected members {sorted(affected)}")
    lease.beat("assembling", 0.92)
    replaced = _retrained(s, spec, config, got)
    old_model, _ = load_bundle(base_file(s, spec), check=True)
    new_model = old_model.with_members(replaced, new_plan)
    hx, hy = holdout(s, spec)
    fx, fy = data(spec.forget_ids)
    ta, base_ta = accuracy(new_model, hx, hy), accuracy(old_model, hx, hy)
    metrics = {"ta": ta, "base_ta": base_ta, "ta_drop": base_ta - ta, "ua": 100.0 - accuracy(new_model, fx, fy),
               "k": len(spec.forget_ids), "method": spec.method, "objective": spec.objective,
               "seconds": round(time.time() - spec.t0, 3),
               # a shard retrain is exact: published whatever it loses (app/jobs/publishing.py)
               "exact": True}
    stats = {"kind": config.kind, "members": len(doc["members"]), "retrained_members": len(affected),
             "affected_members": ",".join(map(str, affected)),
             "retrained_slices": sum(r["retrained_slices"] for r in results),
             "reused_slices": sum(r["reused_slices"] for r in results),
             "total_slices": sum(len(sl) for sl in new_plan.slices)}
    members = [dict(m) for m in doc["members"]]
    for m, r in got.items():
        members[m] = {"file": r["file"], "sha256": r["sha256"]}
    where = new_plan.locate()
    locations = {i: where[i] for m in affected for i in new_plan.pool[m]}
    return Built(metrics, stats, _manifest_writer(s, spec, config, new_plan, members),
                 in_publish=lambda db: catalogue.set_locations(db, spec.model_name, locations),
                 after_publish=lambda: _drop_stale_slices(s, spec, config, plan, new_plan, affected))


def _manifest_writer(s: Settings, spec: JobSpec, config, new_plan, members: list[dict]):
    from models.unlearn.shards import write_manifest

    def write() -> tuple[str, str]:
        tmp = registry.manifest_tmp_path(registry.weights(s), spec.model_name)
        sha = write_manifest(tmp, config, new_plan, members,
                             extra={"parent_sha256": spec.base_sha, "job_id": spec.job_id})
        return sha, registry.publish_bundle(registry.weights(s), spec.model_name, tmp, sha)

    return write


def _drop_stale_slices(s: Settings, spec: JobSpec, config, plan, new_plan, affected) -> int:
    """The slice checkpoints trained on the erased instances (the new plan names none of them).
    Member files of older versions stay: versions are immutable (rollback, audit)."""
    from models.unlearn.shards import stale_keys

    store = registry.slices(registry.weights(s), spec.model_name)
    return sum(store.delete(k) for k in stale_keys(config, plan, new_plan, affected))
