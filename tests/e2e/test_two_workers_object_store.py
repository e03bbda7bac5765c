"""Two Celery worker processes that share Postgres, Redis and an S3 object store, and each
keep their own empty local registry directory (the weights cache): the object store is
moto's standalone server (``moto_server``, started by tests/conftest.py's ``s3_server``: a
real S3 API over HTTP, a versioned bucket; nothing mocked in process).

Dataset fragments (LETHE_DATASET_URL) and every weight file (LETHE_REGISTRY_URL) live in the
bucket. What the processes still share on disk is the datasets' index directory
(LETHE_DATA_DIR: ``index.sqlite`` + ``schema.json`` per dataset, no row's features), because
the index is not in Postgres yet (docs/ops.md, "Several worker nodes"); the test checks that
no row's bytes are in it.

One walk: a dataset registered through the gateway (the bring-your-own walkthrough: a model
uploaded, another trained by Lethe on a worker, a patient erased from both), a SISA deletion
whose member retrains fan out over both workers, then a subject erased from an instance-wise
model and the SISA model at once; both workers took jobs, the subject's bytes are in no object
version of the bucket, and no node keeps a purged version's weights."""
import importlib.util
import os
import re
import time
import uuid

import httpx
import numpy as np
import pytest

from . import flow
from .conftest import BIN, ROOT, Proc, auth, require_service, service_env, start_gateway
from .test_postgres_celery import REDIS

pytestmark = pytest.mark.slow
BUCKET = "lethe-data"
SISA = "digits-sisa"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pg_database, s3_server):
    require_service("Redis", "127.0.0.1", 6379)
    url_db, _ = pg_database
    s3_url, client = s3_server
    tmp = tmp_path_factory.mktemp("twoworkers")
    queue = f"lethe-test-{uuid.uuid4().hex[:8]}"
    run = uuid.uuid4().hex[:8]
    env = service_env(tmp, LETHE_DATABASE_URL=url_db, LETHE_BROKER_URL=REDIS, LETHE_QUEUE_NAME=queue,
                      LETHE_DATASET_URL=s3_url.replace("/datasets?", f"/{run}/datasets?"),
                      LETHE_REGISTRY_URL=s3_url.replace("/datasets?", f"/{run}/registry?"),
                      LETHE_CACHE_SWEEP_S="2", LETHE_DEMO_EPOCHS="1", LETHE_DEMO_EXACT_DATASET="digits",
                      LETHE_DEMO_EXACT_ROWS="300", LETHE_DEMO_EXACT_SHARDS="3", LETHE_DEMO_EXACT_SLICES="2",
                      LETHE_DEMO_EXACT_EPOCHS="1",
                      # the one-epoch demo models on 300 rows move a lot between versions; this test is about
                      # where the bytes are, not about accuracy (tests/e2e/test_exact_celery.py checks that)
                      LETHE_MAX_TEST_ACCURACY_DROP="60")
    workers = {}
    try:
        for name in ("wa", "wb"):  # each its own empty registry directory: its weights cache
            wenv = {**env, "LETHE_REGISTRY_DIR": str(tmp / f"{name}-registry")}
            workers[name] = Proc([os.path.join(BIN, "celery"), "-A", "worker.celery_app", "worker", "--pool=solo",
                                  "--loglevel=INFO", "-n", f"{name}-{queue}@%h", "-Q", queue], wenv,
                                 tmp / f"{name}.log")
        gateway, url = start_gateway(env, tmp)
        try:
            yield url, env, tmp, workers, client, run
        finally:
            gateway.stop()
    finally:
        for w in workers.values():
            w.stop()


def _holding(client, prefix: str, patterns: list[bytes]) -> list[str]:
    """Every object version under ``prefix`` whose bytes hold one of ``patterns`` (a version
    deleted between the listing and its read, by a compaction running meanwhile, holds none)."""
    import botocore.exceptions

    found = []
    for page in client.get_paginator("list_object_versions").paginate(Bucket=BUCKET, Prefix=prefix):
        for v in page.get("Versions", []):
            try:
                body = client.get_object(Bucket=BUCKET, Key=v["Key"], VersionId=v["VersionId"])["Body"].read()
            except botocore.exceptions.ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("NoSuchVersion", "NoSuchKey"):
                    continue
                raise
            if any(p in body for p in patterns):
                found.append(f"{v['Key']}@{v['VersionId']}")
    return found


def _wait(c: httpx.Client, path: str, timeout: float = 600) -> dict:
    deadline = time.time() + timeout
    while True:
        got = c.get(path).json()
        if got["status"] not in ("queued", "running") or time.time() > deadline:
            return got
        time.sleep(0.5)


def test_two_workers_share_only_postgres_redis_and_the_object_store(stack):
    url, env, tmp, workers, client, run = stack
    from models.data import load_dataset

    with httpx.Client(base_url=url, timeout=120, headers=auth(env)) as c:
        assert c.get("/readyz").json()["checks"]["broker"] == "ok"
        # 1. a dataset registered through the gateway; a model uploaded, another trained by a worker;
        #    a patient erased from both (two jobs)
        spec = importlib.util.spec_from_file_location(
            "walkthrough", os.path.join(ROOT, "examples", "bring_your_own", "walkthrough.py"))
        wt = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(wt)
        out = wt.run(url, env["LETHE_BOOTSTRAP_ADMIN_KEY"], str(tmp / "work"), log=lambda *_: None)
        assert out["erasure"]["status"] == "completed" and out["signature_ok"], out["erasure"]
        assert all(out["after"][m] != out["before"][m] for m in out["after"])

        # 2. a SISA deletion of one row in each shard: the members' retrains fan out as Celery tasks
        ds = load_dataset("digits")
        by_shard: dict[int, str] = {}
        for subject in ("bob", "carol", "dave", "erin", "frank", "grace", "heidi"):
            for i in c.get(f"/v1/subjects/{subject}/instances", params={"model": SISA}).json()["instances"]:
                by_shard.setdefault(i["shard"], i["instance_id"])
        assert len(by_shard) >= 2, by_shard
        r = c.post("/v1/forget", json={"model": SISA, "instance_ids": sorted(by_shard.values())})
        assert r.status_code == 202, r.text
        done = flow.wait_done(c, r.json()["id"], timeout=600)
        assert done["status"] == "completed", (done, workers["wa"].tail(), workers["wb"].tail())
        assert c.get(f"/v1/jobs/{done['job']['id']}").json()["stats"]["retrained_members"] == len(by_shard)

        # 3. alice erased from every model holding her (the instance-wise demo and the SISA model)
        ids, x, _ = flow.subject_inputs(c, ds, "alice")
        patterns = [np.ascontiguousarray(xi, dtype=np.float32).tobytes() for xi in x]
        assert _holding(client, f"{run}/datasets/", patterns)  # the check can fail: her rows are in the bucket
        assert flow.files_holding(env["LETHE_DATA_DIR"], patterns[0]) == []  # no row's bytes on local disk
        r = c.post("/v1/forget", json={"subject_id": "alice", "objective": "misclassify"})
        assert r.status_code == 202, r.text
        erasure = _wait(c, f"/v1/erasures/{r.json()['id']}")
        assert erasure["status"] == "completed", (erasure, workers["wa"].tail(), workers["wb"].tail())
        assert {q["model"] for q in erasure["requests"]} >= {flow.MODEL, SISA}

        # her bytes leave every object version of the bucket within LETHE_ERASE_WITHIN_S (4 s)
        deadline = time.time() + 4 + 60
        while _holding(client, f"{run}/", patterns) and time.time() < deadline:
            time.sleep(1)
        assert _holding(client, f"{run}/", patterns) == []

        # both workers took jobs, and the SISA members were retrained on both
        import psycopg

        dsn = env["LETHE_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn) as con:
            ran = [w for (w,) in con.execute("SELECT worker FROM jobs WHERE status = 'completed'")]
            ran += [w for (w,) in con.execute("SELECT worker FROM training_runs WHERE status = 'completed'")]
            purged = [p for (p,) in con.execute("SELECT storage_path FROM model_versions WHERE status = 'PURGED'")]
        assert any(":wa-" in w for w in ran) and any(":wb-" in w for w in ran), ran
        logs = {n: w.tail(2_000_000) for n, w in workers.items()}
        members = {n: len(re.findall(r'"msg": "Task lethe\.exact_member\[[^]]*\] succeeded', log))
                   for n, log in logs.items()}
        assert all(members.values()), members  # the member retrains of the SISA deletions ran on both

        # each worker read weights it did not write from the object store, into its own cache;
        # no node keeps a purged version's weights once it has checked (LETHE_CACHE_SWEEP_S=2)
        caches = [env["LETHE_REGISTRY_DIR"]] + [str(tmp / f"{n}-registry") for n in ("wa", "wb")]
        assert all(any(f.endswith(".safetensors") for _, _, fs in os.walk(d) for f in fs) for d in caches)
        assert purged
        deadline = time.time() + 30
        while time.time() < deadline and any(os.path.exists(os.path.join(d, p)) for d in caches for p in purged):
            time.sleep(1)
        assert [os.path.join(d, p) for d in caches for p in purged if os.path.exists(os.path.join(d, p))] == []
        assert c.get("/v1/audit/verify").json()["ok"] is True
    assert all(w.alive() for w in workers.values()), {n: w.tail() for n, w in workers.items()}
