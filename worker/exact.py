"""Jobs of sharded (exact) models: SISA and ARCANE.

    prepare (plan the deletion: which members change)
      -> retrain_member(m) for every affected member   (Celery: a group, one task per member,
                                                         across all workers; embedded: in turn)
      -> finish(results)                                (Celery: the chord's callback)
           assemble the new bundle, verify, ONE publishing transaction, purge raw data

Every step is a plain function of (settings, job_spec): the Celery tasks in
``worker.tasks`` and the embedded path call the same functions. A member retrain that
fails fails the whole job (``fail``: the Celery chord's errback, or the exception handler
here); nothing is published and the ``production`` alias does not move.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from app.catalogue import service as catalogue
from app.catalogue import store as raw_store
from app.db import session_scope
from app.jobs import service as jobs
from app.registry import service as registry
from app.settings import Settings

log = logging.getLogger("lethe.worker.exact")


class ExactJobFailed(Exception):
    pass


def _data_fn(s: Settings, model_name: str):
    """id -> (x, y) from the catalogue's raw-data store (content hash checked)."""
    import numpy as np
    import torch

    cache: dict[str, tuple] = {}

    def fetch(ids: list[str]):
        missing = [i for i in ids if i not in cache]
        if missing:
            with session_scope(s.database_url) as db:
                rows = catalogue.by_ids(db, model_name, missing)
                found = {i: (r.storage_uri, r.content_hash, r.label, r.erased_at) for i, r in rows.items()}
            for i in missing:
                if i not in found or found[i][3] is not None:
                    raise ExactJobFailed(f"instance {i} is not a live catalogue entry of {model_name}")
                uri, h, label, _ = found[i]
                arr = raw_store.read(uri)
                if raw_store.content_hash(arr) != h:
                    raise ExactJobFailed(f"raw data of {i} does not match its catalogued content hash")
                cache[i] = (arr, label)
        x = torch.from_numpy(np.stack([cache[i][0] for i in ids]).astype(np.float32))
        y = torch.tensor([cache[i][1] for i in ids], dtype=torch.long)
        return x, y

    return fetch


def _base(s: Settings, job_spec: dict):
    from models.checkpoint import file_sha256
    from models.unlearn.shards import ExactConfig, Plan, read_manifest

    path = registry.absolute_path(s.registry_dir, job_spec["base_path"])
    if file_sha256(path) != job_spec["base_sha"]:
        raise ExactJobFailed(f"manifest of v{job_spec['base_version']} fails its sha256 check")
    doc = read_manifest(path)
    return doc, ExactConfig.from_json(doc["config"]), Plan.from_json(doc["plan"])


def _plan(s: Settings, job_spec: dict, data):
    from models.unlearn import get_method

    doc, config, plan = _base(s, job_spec)
    new_plan, affected = get_method(job_spec["method"]).plan_deletion(config, plan, job_spec["forget_ids"], data)
    return doc, config, plan, new_plan, affected


def _heartbeat(s: Settings, job_spec: dict, stage: str, fraction: float) -> None:
    with session_scope(s.database_url) as db:
        if not jobs.heartbeat(db, job_spec["job_id"], job_spec["token"], stage=stage, fraction=fraction):
            raise ExactJobFailed(f"job {job_spec['job_id']} was taken over or finished elsewhere")


def prepare(s: Settings, job_id: str, token: str, spec: dict, forget_ids: list[str]) -> dict:
    """The job spec every step receives (JSON-serialisable: it travels in Celery messages)."""
    job_spec = {"job_id": job_id, "token": token, "model_name": spec["model_name"], "method": spec["method"],
                "objective": spec["objective"], "base_path": spec["base_rel"], "base_sha": spec["base_sha"],
                "base_version": spec["base_version"], "forget_ids": list(forget_ids), "t0": time.time()}
    _, config, _, _, affected = _plan(s, job_spec, _data_fn(s, spec["model_name"]))
    if config.kind != spec["method"]:
        raise ExactJobFailed(f"model is a {config.kind} bundle; method {spec['method']!r} does not fit")
    job_spec["affected"] = affected
    _heartbeat(s, job_spec, f"retraining {len(affected)} of {config.shards} members", 0.05)
    return job_spec


def retrain_member(s: Settings, job_spec: dict, member: int) -> dict:
    """One member's retrain (one Celery task of the group). Writes the member file to its
    content address; slice checkpoints are read from / written to the model's slice store."""
    from models.unlearn.shards import DirStore, save_member, train_member

    data = _data_fn(s, job_spec["model_name"])
    _, config, _, new_plan, affected = _plan(s, job_spec, data)
    if member not in affected:
        raise ExactJobFailed(f"member {member} is not affected by job {job_spec['job_id']}")
    store = DirStore(registry.slices_dir(s.registry_dir, job_spec["model_name"]))
    last = [0.0]

    def progress(f: float) -> None:
        if time.monotonic() - last[0] > 0.5 or f >= 1.0:
            last[0] = time.monotonic()
            _heartbeat(s, job_spec, f"retrain member {member}", 0.05 + 0.85 * f / max(1, len(affected)))

    t = time.perf_counter()
    model, st = train_member(config, member, new_plan.slices[member], data, store, progress)
    tmp = registry.weights_tmp_path(s.registry_dir, job_spec["model_name"])
    sha = save_member(model, tmp, config, member)
    rel = registry.publish_member(s.registry_dir, job_spec["model_name"], tmp, sha)
    return {"member": member, "file": rel, "sha256": sha, "retrained_slices": st["retrained_slices"],
            "reused_slices": st["reused_slices"], "seconds": round(time.perf_counter() - t, 3)}


def finish(s: Settings, job_spec: dict, results: list[dict], worker: str) -> str:
    """Assemble the new bundle from the base members and the retrained ones, verify it and
    publish it in one transaction (version, alias move, catalogue, requests, audit)."""
    import torch

    from models.data import load_dataset
    from models.train import accuracy
    from models.unlearn.shards import write_manifest

    metrics = None
    try:
        data = _data_fn(s, job_spec["model_name"])
        doc, config, plan, new_plan, affected = _plan(s, job_spec, data)
        got = {r["member"]: r for r in results}
        if sorted(got) != sorted(affected):
            raise ExactJobFailed(f"retrained members {sorted(got)} != affected members {sorted(affected)}")
        members = [dict(m) for m in doc["members"]]
        for m, r in got.items():
            members[m] = {"file": r["file"], "sha256": r["sha256"]}
        _heartbeat(s, job_spec, "assembling", 0.92)
        tmp = registry.manifest_tmp_path(s.registry_dir, job_spec["model_name"])
        sha = write_manifest(tmp, config, new_plan, members,
                             extra={"parent_sha256": job_spec["base_sha"], "job_id": job_spec["job_id"]})
        rel = registry.publish_bundle(s.registry_dir, job_spec["model_name"], tmp, sha)
        from models.unlearn.shards import load_bundle

        new_model, _ = load_bundle(registry.absolute_path(s.registry_dir, rel), check=True)
        old_model, _ = load_bundle(registry.absolute_path(s.registry_dir, job_spec["base_path"]), check=True)
        ds = load_dataset(config.dataset)
        fx, fy = data(job_spec["forget_ids"]) if job_spec["forget_ids"] else (torch.empty(0), torch.empty(0))
        ta, base_ta = accuracy(new_model, ds.x_test, ds.y_test), accuracy(old_model, ds.x_test, ds.y_test)
        metrics = {"ta": ta, "base_ta": base_ta, "ta_drop": base_ta - ta, "ua": 100.0 - accuracy(new_model, fx, fy),
                   "k": len(job_spec["forget_ids"]), "method": job_spec["method"], "objective": job_spec["objective"],
                   "seconds": round(time.time() - job_spec["t0"], 3)}
        stats = {"kind": config.kind, "members": len(members), "retrained_members": len(affected),
                 "affected_members": ",".join(map(str, affected)),
                 "retrained_slices": sum(r["retrained_slices"] for r in results),
                 "reused_slices": sum(r["reused_slices"] for r in results),
                 "total_slices": sum(len(sl) for sl in new_plan.slices)}
        if metrics["ta_drop"] > s.max_test_accuracy_drop or metrics["ta"] != metrics["ta"]:
            raise ExactJobFailed(f"verification: test accuracy fell {metrics['ta_drop']:.2f} pt "
                                 f"(limit {s.max_test_accuracy_drop})")
        where = new_plan.locate()
        locations = {i: where[i] for m in affected for i in new_plan.pool[m]}
        with session_scope(s.database_url) as db:
            jobs.complete(db, job_id=job_spec["job_id"], token=job_spec["token"], worker=worker,
                          instance_ids=job_spec["forget_ids"], sha256=sha, storage_path=rel, metrics=metrics,
                          stats=stats)
            catalogue.set_locations(db, job_spec["model_name"], locations)
    except Exception as e:  # noqa: BLE001 - the job fails; nothing was published
        log.exception("exact job %s failed while assembling", job_spec["job_id"])
        return fail(s, job_spec, f"{e.__class__.__name__}: {e}", worker, metrics=metrics)
    with session_scope(s.database_url) as db:
        catalogue.purge_erased_raw(db, job_spec["model_name"])
    _purge_stale_slices(s, job_spec["model_name"], config, plan, new_plan, affected)
    log.info("job %s completed: %s, %d instances erased, %d members retrained, bundle sha256=%s",
             job_spec["job_id"], job_spec["model_name"], len(job_spec["forget_ids"]), len(affected), sha[:16])
    return "completed"


def _purge_stale_slices(s: Settings, model_name: str, config, plan, new_plan, affected) -> int:
    """After the commit: delete the slice checkpoints trained on the erased instances (the
    new plan names none of them). Published member files of older versions stay: versions
    are immutable in the registry (rollback, audit), as for instance-wise models."""
    from models.unlearn.shards import DirStore, stale_keys

    store = DirStore(registry.slices_dir(s.registry_dir, model_name))
    return sum(store.delete(k) for k in stale_keys(config, plan, new_plan, affected))


def fail(s: Settings, job_spec: dict, error: str, worker: str, metrics: dict | None = None) -> str:
    with session_scope(s.database_url) as db:
        return jobs.fail(db, job_id=job_spec["job_id"], token=job_spec["token"], worker=worker, error=error[:4000],
                         retryable=False, metrics=metrics)


def run(s: Settings, job_id: str, token: str, worker: str, spec: dict, forget_ids: list[str],
        fan_out: Callable[[dict], None] | None = None) -> str:
    """Run a sharded model's job: in turn, in this thread (embedded mode), or fanned out as
    a Celery group joined by a chord (``fan_out``), which then owns the job's completion."""
    if not forget_ids:  # everything was erased by an earlier job: complete, no new version
        with session_scope(s.database_url) as db:
            jobs.complete(db, job_id=job_id, token=token, worker=worker, instance_ids=[], sha256=None,
                          storage_path=None, metrics=None, stats={"note": "all instances were already erased"})
        return "completed"
    try:
        job_spec = prepare(s, job_id, token, spec, forget_ids)
        if fan_out is not None and job_spec["affected"]:
            fan_out(job_spec)
            return "fanned_out"
        results = [retrain_member(s, job_spec, m) for m in job_spec["affected"]]
    except Exception as e:  # noqa: BLE001 - a failed member retrain fails the job cleanly
        log.exception("exact job %s failed", job_id)
        return fail(s, {"job_id": job_id, "token": token}, f"{e.__class__.__name__}: {e}", worker)
    return finish(s, job_spec, results, worker)
