"""Postgres + Redis + a real Celery worker process (``celery -A worker.celery_app worker
--pool=solo``). A fresh database and queue per run. With CI=true, a missing Postgres or
Redis fails the test instead of skipping it."""
import os
import time
import uuid

import httpx
import pytest

from . import flow
from .conftest import BIN, Proc, auth, require_service, service_env, start_gateway

pytestmark = pytest.mark.slow

REDIS = os.environ.get("LETHE_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pg_database):
    require_service("Redis", "127.0.0.1", 6379)
    url_db, dbname = pg_database
    tmp = tmp_path_factory.mktemp("pgcelery")
    queue = f"lethe-test-{uuid.uuid4().hex[:8]}"
    env = service_env(tmp, LETHE_DATABASE_URL=url_db, LETHE_BROKER_URL=REDIS, LETHE_QUEUE_NAME=queue)
    worker = Proc([os.path.join(BIN, "celery"), "-A", "worker.celery_app", "worker", "--pool=solo",
                   "--loglevel=INFO", "-n", f"{queue}@%h", "-Q", queue], env, tmp / "celery.log")
    gateway = None
    try:
        gateway, url = start_gateway(env, tmp)
        yield url, env, tmp, worker, queue
    finally:
        if gateway:
            gateway.stop()
        worker.stop()


def test_forget_flow_with_celery_worker(stack):
    url, env, tmp, worker, queue = stack
    with httpx.Client(base_url=url, timeout=60, headers=auth(env)) as c:
        ready = c.get("/readyz").json()
        assert ready["checks"] == {"database": "ok", "registry": "ok", "broker": "ok"}, ready
        assert worker.alive(), worker.tail()
        result = flow.forget_subject_and_check(c, env["LETHE_DATA_DIR"], webhook_secret=env["LETHE_WEBHOOK_SECRET"])
        job = c.get(f"/v1/jobs/{result['job_id']}").json()
        assert job["worker"].startswith("celery:"), job  # run by the Celery process, not the gateway

        # a redelivered message for the finished job publishes nothing
        from app.settings import Settings
        from worker.celery_app import CeleryDispatcher

        CeleryDispatcher(Settings(broker_url=env["LETHE_BROKER_URL"], queue_name=queue)).dispatch(result["job_id"])
        deadline = time.time() + 60
        while f"job {result['job_id']}: done" not in worker.tail(200_000) and time.time() < deadline:
            time.sleep(0.5)
        assert f"job {result['job_id']}: done" in worker.tail(200_000), worker.tail()
        assert [v["version"] for v in c.get(f"/v1/models/{flow.MODEL}/versions").json()["versions"]] == [1, 2]

        flow.concurrent_requests_stay_linear(c)
        flow.audit_verifies(c)

        import psycopg

        dsn = env["LETHE_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn, autocommit=True) as con:
            # the database refuses edits to the audit log ...
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                con.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 2")
            # ... so an attacker with owner rights disables the guard first
            con.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
            cur = con.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 2")
            assert cur.rowcount == 1
        # the cheap check only re-hashes events newer than its mark; a rewrite behind the mark
        # is found by a full re-hash (or against a signed checkpoint)
        bad = c.get("/v1/audit/verify", params={"full": "true"}).json()
        verdict = {k: bad[k] for k in ("ok", "entries", "first_bad_seq", "reason", "pending")}
        assert verdict == {"ok": False, "entries": 1, "first_bad_seq": 2, "pending": 0,
                           "reason": "event 2 content does not match its hash"}, bad
    assert worker.alive(), worker.tail()
