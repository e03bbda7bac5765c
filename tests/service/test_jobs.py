"""Job life cycle without the ML: claim, serialisation per model, the one publishing
transaction, redelivery, attempt cap."""
import datetime as dt

import pytest
from sqlalchemy import select

from app.catalogue.models import TrainingInstance
from app.db import session_scope
from app.forget.models import ForgetRequest
from app.forget.schemas import ForgetCreate
from app.forget.service import submit
from app.jobs import service as jobs
from app.jobs.models import Job
from app.registry import service as registry
from worker.driver import execute_job

from .conftest import MODEL, save_net


def _submit(settings, **body):
    with session_scope(settings.database_url) as db:
        req, job_id, _ = submit(db, settings, ForgetCreate(model=MODEL, **body), idempotency_key=None, actor="t")
        return req.id, req.job_id


def _claim(settings, job_id, worker="w1"):
    with session_scope(settings.database_url) as db:
        c = jobs.claim(db, job_id, worker=worker, lease_s=settings.job_lease_s)
        return c.outcome, c.token, list(c.instance_ids)


def _complete(settings, job_id, token, ids, seed=2):
    sha, rel = save_net(settings, seed=seed)
    with session_scope(settings.database_url) as db:
        jobs.complete(db, job_id=job_id, token=token, worker="w1", instance_ids=ids, sha256=sha,
                      storage_path=rel, metrics={"ua": 100.0}, stats={})
    return sha


def test_publish_is_one_transaction_and_redelivery_is_a_no_op(seeded):
    rid, job_id = _submit(seeded, subject_id="alice")
    outcome, token, ids = _claim(seeded, job_id)
    assert outcome == "run" and ids == ["toy-00000", "toy-00001", "toy-00002"]
    sha = _complete(seeded, job_id, token, ids)
    with session_scope(seeded.database_url) as db:
        v2 = registry.get_version(db, MODEL, 2)
        assert v2.sha256 == sha and v2.parent_version == 1 and v2.job_id == job_id
        assert registry.aliases(db, MODEL) == {"production": 2}
        assert [(m.from_version, m.to_version) for m in registry.alias_moves(db, MODEL)] == [(None, 1), (1, 2)]
        req = db.get(ForgetRequest, rid)
        assert (req.status, req.version_before, req.version_after) == ("completed", 1, 2)
        erased = db.execute(select(TrainingInstance.instance_id).where(TrainingInstance.erased_at.is_not(None))).scalars()
        assert sorted(erased) == ids
        job = db.get(Job, job_id)
        assert job.status == "completed" and job.result_version == 2 and job.attempts == 1
    # the same message delivered again (acks_late redelivery) publishes nothing
    assert execute_job(job_id, settings=seeded) == "done"
    assert _claim(seeded, job_id)[0] == "done"
    with pytest.raises(jobs.JobConflict):
        _complete(seeded, job_id, token, ids, seed=3)
    with session_scope(seeded.database_url) as db:
        assert [v.version for v in registry.versions(db, MODEL)] == [1, 2]


def test_a_failed_publish_leaves_nothing_half_done(seeded):
    _, job_id = _submit(seeded, subject_id="alice")
    _, token, ids = _claim(seeded, job_id)
    sha, rel = save_net(seeded, seed=2)
    with pytest.raises(Exception):
        with session_scope(seeded.database_url) as db:
            jobs.complete(db, job_id=job_id, token=token, worker="w1", instance_ids=ids, sha256=sha,
                          storage_path=None, metrics=None, stats=None)  # NOT NULL storage_path -> rollback
    with session_scope(seeded.database_url) as db:
        assert [v.version for v in registry.versions(db, MODEL)] == [1]
        assert registry.aliases(db, MODEL) == {"production": 1}
        assert db.execute(select(TrainingInstance).where(TrainingInstance.erased_at.is_not(None))).first() is None
        assert db.get(Job, job_id).status == "running"


def test_one_running_job_per_model(seeded):
    _, job_a = _submit(seeded, subject_id="alice")
    assert _claim(seeded, job_a)[0] == "run"
    _, job_b = _submit(seeded, subject_id="bob")  # job A started: B gets a new job
    assert job_b != job_a
    assert _claim(seeded, job_b, worker="w2")[0] == "defer"
    assert _claim(seeded, job_a, worker="w2")[0] == "defer"  # duplicate delivery while A runs


def test_stale_claim_is_taken_over_and_attempts_are_capped(seeded):
    _, job_id = _submit(seeded, subject_id="alice")
    for attempt in range(1, 4):
        outcome, token, _ = _claim(seeded, job_id, worker=f"w{attempt}")
        assert outcome == "run"
        with session_scope(seeded.database_url) as db:  # the worker died: its heartbeat goes stale
            job = db.get(Job, job_id)
            assert job.attempts == attempt
            job.heartbeat_at = job.heartbeat_at - dt.timedelta(seconds=seeded.job_lease_s + 1)
    assert _claim(seeded, job_id, worker="w4")[0] == "failed"
    with session_scope(seeded.database_url) as db:
        job = db.get(Job, job_id)
        assert job.status == "failed" and job.attempts == 3 and "gave up after 3 attempts" in job.error
        assert all(r.status == "failed" for r in jobs.requests_of(db, job_id))


def test_failed_attempt_is_retried_then_final(seeded):
    _, job_id = _submit(seeded, subject_id="alice")
    _, token, _ = _claim(seeded, job_id)
    with session_scope(seeded.database_url) as db:
        assert jobs.fail(db, job_id=job_id, token=token, worker="w1", error="boom", retryable=True) == "retry"
    with session_scope(seeded.database_url) as db:
        assert db.get(Job, job_id).status == "queued"
    _, token, _ = _claim(seeded, job_id)
    with session_scope(seeded.database_url) as db:
        assert jobs.fail(db, job_id=job_id, token=token, worker="w1", error="bad", retryable=False) == "failed"
        assert all(r.status == "failed" and r.error == "bad" for r in jobs.requests_of(db, job_id))


def test_heartbeat_needs_the_current_claim(seeded):
    _, job_id = _submit(seeded, subject_id="alice")
    _, token, _ = _claim(seeded, job_id)
    with session_scope(seeded.database_url) as db:
        assert jobs.heartbeat(db, job_id, token, stage="unlearning", fraction=0.5)
        assert not jobs.heartbeat(db, job_id, "someone-else", stage="x", fraction=0.9)
    with session_scope(seeded.database_url) as db:
        job = db.get(Job, job_id)
        assert (job.stage, job.progress) == ("unlearning", 0.5)


def test_embedded_restart_resumes_an_orphaned_job(seeded):
    """A gateway died mid-job: on restart the embedded worker re-queues the job, reclaims it
    at once (its lease released), and counts the attempt."""
    from worker.embedded import EmbeddedWorker

    _, job_id = _submit(seeded, subject_id="alice")
    with session_scope(seeded.database_url) as db:
        jobs.claim(db, job_id, worker="embedded:old-host:1", lease_s=seeded.job_lease_s)
    w = EmbeddedWorker(seeded.model_copy(update={"embedded_worker": True}))
    w._loop = lambda: None  # inspect the recovery only; do not run the ML here
    w.start()
    assert w.queue.get_nowait() == job_id
    assert _claim(seeded, job_id, worker="embedded:new-host:2")[0] == "run"
    with session_scope(seeded.database_url) as db:
        assert db.get(Job, job_id).attempts == 2


def test_verification_gate(seeded):
    from worker.job import VerificationFailed, verify

    good = {"ua": 100.0, "ta_drop": 0.5, "ta": 97.0, "method": "lethe"}
    verify(seeded, "misclassify", good)
    with pytest.raises(VerificationFailed, match="only 50.0 %") as e:
        verify(seeded, "misclassify", {**good, "ua": 50.0})
    assert e.value.metrics["ua"] == 50.0
    # a method that removes influence (catalogue: reaches_objective=False) promises no label
    verify(seeded, "misclassify", {**good, "ua": 50.0, "method": "puma"})
    verify(seeded, "retrain_like", {**good, "ua": 50.0})  # no 100 % rule for privacy deletions
    with pytest.raises(VerificationFailed, match="fell 7.00 pt"):
        verify(seeded, "relabel", {**good, "ta_drop": 7.0})
    with pytest.raises(VerificationFailed, match="NaN"):
        verify(seeded, "retrain_like", {**good, "ta": float("nan")})
    # the same rules for a sharded model's job: no label promised, every metric checked for NaN
    verify(seeded, "misclassify", {**good, "ua": 0.0, "method": "sisa"})
    with pytest.raises(VerificationFailed, match="NaN"):
        verify(seeded, "misclassify", {**good, "ua": float("nan"), "method": "arcane"})
