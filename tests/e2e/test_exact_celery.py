"""SISA and ARCANE through Postgres + Redis + a real Celery worker process: the job's shard
(sub-model) retrains fan out as a Celery group joined by a chord that assembles and publishes
the new bundle, with a signed certificate; a shard retrain that fails fails the job through the
chord's errback and the alias stays. Tests run in file order: the ARCANE one first, since the
failure test erases a row of the dataset both models were trained on."""
import os
import uuid

import httpx
import pytest

from . import flow
from .conftest import BIN, Proc, auth, require_service, service_env, start_gateway
from .test_postgres_celery import REDIS

pytestmark = pytest.mark.slow
MODEL = "digits-sisa"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pg_database):  # noqa: F811
    require_service("Redis", "127.0.0.1", 6379)
    url_db, _ = pg_database
    tmp = tmp_path_factory.mktemp("exactcelery")
    queue = f"lethe-test-{uuid.uuid4().hex[:8]}"
    env = service_env(tmp, LETHE_DATABASE_URL=url_db, LETHE_BROKER_URL=REDIS, LETHE_QUEUE_NAME=queue,
                      LETHE_DEMO_EPOCHS=1, LETHE_DEMO_EXACT_DATASET="digits", LETHE_DEMO_EXACT_ROWS=300,
                      LETHE_DEMO_EXACT_SHARDS=3, LETHE_DEMO_EXACT_SLICES=2, LETHE_DEMO_EXACT_EPOCHS=1,
                      LETHE_DEMO_EXACT_KINDS="sisa,arcane")
    worker = Proc([os.path.join(BIN, "celery"), "-A", "worker.celery_app", "worker", "--pool=solo",
                   "--loglevel=INFO", "-n", f"{queue}@%h", "-Q", queue], env, tmp / "celery.log")
    gateway = None
    try:
        gateway, url = start_gateway(env, tmp)
        yield url, env, worker
    finally:
        if gateway:
            gateway.stop()
        worker.stop()


def test_arcane_job_fans_out_publishes_and_certifies(stack):
    """An ARCANE model (one sub-model per class, the default learner for its data) served by the
    Celery worker: only the classes of the subject's rows are retrained, each as a member task,
    version 2 becomes production, and the certificate verifies with the public key."""
    from app.audit import signing

    url, env, worker = stack
    with httpx.Client(base_url=url, timeout=60, headers=auth(env)) as c:
        assert {m["name"]: m["family"] for m in c.get("/v1/models").json()}["digits-arcane"] == "arcane"
        dave = c.get("/v1/subjects/dave/instances", params={"model": "digits-arcane"}).json()["instances"]
        r = c.post("/v1/forget", json={"model": "digits-arcane", "subject_id": "dave"})
        assert r.status_code == 202, r.text
        done = flow.wait_done(c, r.json()["id"], timeout=300)
        assert done["status"] == "completed", (done, worker.tail())
        assert done["method"] == "arcane" and (done["version_before"], done["version_after"]) == (1, 2)
        job = c.get(f"/v1/jobs/{done['job']['id']}").json()
        affected = {int(m) for m in job["stats"]["affected_members"].split(",") if m}
        assert job["worker"].startswith("celery:") and affected <= {i["label"] for i in dave}
        assert worker.tail(200_000).count("lethe.exact_member") >= len(affected)
        assert c.get("/v1/models/digits-arcane/versions").json()["aliases"] == {"production": 2}
        doc = c.get(f"/v1/forget/{done['id']}/certificate").json()
        assert doc["certificate"]["method"] == "arcane" and doc["certificate"]["version_after"]["version"] == 2
        key = signing.load_public_key(c.get("/v1/keys/audit").json()["public_key_pem"])
        assert signing.verify_certificate(doc, key) == (True, None)
    assert worker.alive(), worker.tail()


def test_sisa_job_fans_out_as_a_chord_and_a_failed_shard_fails_cleanly(stack):
    url, env, worker = stack
    with httpx.Client(base_url=url, timeout=60, headers=auth(env)) as c:
        inst = c.get("/v1/subjects/alice/instances", params={"model": MODEL}).json()["instances"]
        shards = {i["shard"] for i in inst}
        r = c.post("/v1/forget", json={"model": MODEL, "subject_id": "alice"})
        assert r.status_code == 202, r.text
        done = flow.wait_done(c, r.json()["id"], timeout=300)
        assert done["status"] == "completed", (done, worker.tail())
        job = c.get(f"/v1/jobs/{done['job']['id']}").json()
        assert job["worker"].startswith("celery:") and job["stats"]["retrained_members"] == len(shards)
        log = worker.tail(200_000)
        assert log.count("lethe.exact_member") >= len(shards) and "lethe.exact_assemble" in log, log[-3000:]
        assert c.get(f"/v1/models/{MODEL}/versions").json()["aliases"] == {"production": 2}

        # a shard whose raw data went missing cannot be retrained: the chord's errback fails the job
        carol = c.get("/v1/subjects/carol/instances", params={"model": MODEL}).json()["instances"]
        shard = carol[0]["shard"]
        import psycopg

        dsn = env["LETHE_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn) as con:
            uri, victim = con.execute(
                "SELECT storage_uri, instance_id FROM catalogue_instances WHERE model_name = %s AND shard = %s "
                "AND instance_id <> ALL(%s) AND erased_at IS NULL LIMIT 1",
                (MODEL, shard, [i["instance_id"] for i in carol])).fetchone()
        from app.datasets.store import DatasetStore

        DatasetStore(uri).erase([victim])
        r = c.post("/v1/forget", json={"model": MODEL, "instance_ids": [carol[0]["instance_id"]]})
        done = flow.wait_done(c, r.json()["id"], timeout=300)
        assert done["status"] == "failed" and "member retrain failed" in done["error"], (done, worker.tail())
        # an exact job is retried like any fault (a new claim, a new chord) before it fails for good
        failed_job = c.get(f"/v1/jobs/{done['job']['id']}").json()
        assert failed_job["attempts"] == failed_job["max_attempts"] > 1, failed_job
        versions = c.get(f"/v1/models/{MODEL}/versions").json()
        assert versions["aliases"] == {"production": 2} and len(versions["versions"]) == 2
        assert c.get("/v1/audit/verify").json()["ok"] is True
    assert worker.alive(), worker.tail()
