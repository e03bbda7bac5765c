"""Every request completes (issue 13), against Postgres + Redis + real Celery worker processes
with the DEFAULT lease and sweeper settings (lease 30 s, sweeper 5 s): a worker SIGKILLed
mid-job is replaced and the request still ends completed, exactly once; a burst of 500
single-instance requests all complete, each job showing its plan. A fresh database and queue
per run; the demo is digits, the smallest."""
import concurrent.futures as cf
import os
import signal
import time
import uuid

import httpx
import pytest

from . import flow
from .conftest import BIN, Proc, auth, require_service, service_env, start_gateway

pytestmark = pytest.mark.slow

REDIS = os.environ.get("LETHE_TEST_REDIS", "redis://127.0.0.1:6379/0")
MODEL = flow.MODEL


def start_worker(env, tmp, queue, name) -> Proc:
    return Proc([os.path.join(BIN, "celery"), "-A", "worker.celery_app", "worker", "--pool=solo",
                 "--loglevel=INFO", "-n", f"{queue}-{name}@%h", "-Q", queue], env, tmp / f"{name}.log")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pg_database):
    require_service("Redis", "127.0.0.1", 6379)
    url_db, _ = pg_database
    tmp = tmp_path_factory.mktemp("completion")
    queue = f"lethe-test-{uuid.uuid4().hex[:8]}"
    # no LETHE_JOB_LEASE_S / LETHE_SWEEPER_INTERVAL_S / LETHE_STUCK_QUEUED_S: the defaults are under test
    env = service_env(tmp, LETHE_DATABASE_URL=url_db, LETHE_BROKER_URL=REDIS, LETHE_QUEUE_NAME=queue)
    workers = [start_worker(env, tmp, queue, "w1")]
    gateway = None
    try:
        gateway, url = start_gateway(env, tmp)
        yield url, env, tmp, workers, queue
    finally:
        if gateway:
            gateway.stop()
        for w in workers:
            w.stop()


def test_killed_worker_mid_job_is_replaced_and_the_request_completes_once(stack):
    url, env, tmp, workers, queue = stack
    with httpx.Client(base_url=url, timeout=60, headers=auth(env)) as c:
        r = c.post("/v1/forget", json={"model": MODEL, "subject_id": "alice"})
        assert r.status_code == 202, r.text
        rid = r.json()["id"]
        deadline = time.time() + 300  # the worker's first job imports torch and loads the model
        while time.time() < deadline:
            body = c.get(f"/v1/forget/{rid}").json()
            if body["job"] and body["job"]["status"] == "running":
                break
            assert body["status"] == "queued", body
            time.sleep(0.05)
        job_id = body["job"]["id"]
        assert workers[0].alive(), workers[0].tail()
        os.kill(workers[0].p.pid, signal.SIGKILL)  # --pool=solo: the worker is this one process
        workers[0].p.wait(10)
        killed_at = time.time()
        job = c.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "running" and job["attempts"] == 1, job  # killed mid-job, not after
        assert f"job {job_id}: done" not in workers[0].tail(200_000)

        workers.append(start_worker(env, tmp, queue, "w2"))
        # the defaults bound the takeover: the lease (30 s) runs out and the sweeper (every 5 s)
        # re-queues the job (or the new worker, if already listening, claims it: attempt 2)
        while time.time() - killed_at < 60:
            job = c.get(f"/v1/jobs/{job_id}").json()
            if job["status"] != "running" or job["attempts"] >= 2:
                break
            time.sleep(0.2)
        requeued = time.time() - killed_at
        assert requeued <= 45, (requeued, job)
        # the new worker's start and the job then run at the machine's speed: seconds on a quiet
        # machine, minutes on the shared 2-core one this was written on (issue 13 note)
        done = flow.wait_done(c, rid, timeout=300)
        took = time.time() - killed_at
        assert done["status"] == "completed", (done, workers[1].tail())
        job = c.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "completed" and job["attempts"] == 2, job
        assert job["worker"].startswith("celery:") and job["result_version"] == 2, job
        assert job["plan"]["method"] and job["plan"]["reason"], job  # re-planned by the new worker

        # exactly once: one new version, one alias move, a sound audit chain
        versions = c.get(f"/v1/models/{MODEL}/versions").json()
        assert [(v["version"], v["parent_version"]) for v in versions["versions"]] == [(1, None), (2, 1)]
        assert [(m["from_version"], m["to_version"]) for m in versions["alias_moves"]] == [(None, 1), (1, 2)]
        assert versions["aliases"]["production"] == 2
        v = c.get("/v1/audit/verify", params={"full": "true"}).json()
        assert v["ok"] is True, v
        completed = c.get("/v1/audit", params={"action": "forget.completed", "limit": 100}).json()["entries"]
        assert [e["payload"]["request_id"] for e in completed] == [rid]
        print(f"\nkilled worker replaced: job re-queued {requeued:.1f} s and completed {took:.1f} s after SIGKILL")


N_BURST = 500  # issue 13: a burst of 500 single-instance requests, every one completed


def test_burst_of_single_instance_requests_all_complete(stack):
    url, env, tmp, workers, queue = stack
    if not workers[-1].alive():  # run alone (-k burst), the fixture's worker serves
        pytest.fail(workers[-1].tail())
    with httpx.Client(base_url=url, timeout=60, headers=auth(env)) as c:
        erased = {i["instance_id"] for i in c.get("/v1/subjects/alice/instances").json()["instances"]}
        ids = [f"digits-{i:05d}" for i in range(200, 1000)]
        ids = [i for i in ids if i not in erased][:N_BURST]

        def post(iid):
            # a portal's client: a 429 of the per-caller submit limit (300/min by default) is
            # tried again after its Retry-After, so the burst is accepted in full, just spread
            with httpx.Client(base_url=url, timeout=60, headers=auth(env)) as own:
                while True:
                    r = own.post("/v1/forget", json={"model": MODEL, "instance_ids": [iid]})
                    if r.status_code != 429:
                        return r
                    time.sleep(float(r.headers["Retry-After"]))

        t0 = time.time()
        with cf.ThreadPoolExecutor(4) as pool:
            rs = list(pool.map(post, ids))
        assert [r.status_code for r in rs] == [202] * N_BURST, [r.text for r in rs if r.status_code != 202]
        results = [flow.wait_done(c, r.json()["id"], timeout=600) for r in rs]
        assert [r["status"] for r in results] == ["completed"] * N_BURST, [r for r in results if r["status"] != "completed"]
        job_ids = sorted({r["job"]["id"] for r in results})
        plans = [c.get(f"/v1/jobs/{j}").json()["plan"] for j in job_ids]
        assert all(p and p["method"] and p["reason"] and p["inputs"]["k"] >= 1 for p in plans), plans
        assert sum(p["inputs"]["k"] for p in plans) == N_BURST, plans
        versions = c.get(f"/v1/models/{MODEL}/versions").json()
        chain = [(v["version"], v["parent_version"]) for v in versions["versions"]]
        assert chain == [(1, None)] + [(n, n - 1) for n in range(2, len(chain) + 1)], chain
        assert c.get("/v1/audit/verify", params={"full": "true"}).json()["ok"] is True
        print(f"\nburst: {N_BURST} requests completed in {time.time() - t0:.1f} s by {len(job_ids)} job(s): "
              f"{[(p['method'], p['inputs']['k']) for p in plans]}")
