"""Every request completes, at volume: the service part of ``python -m bench.completion``.

A fresh Postgres database, a Redis queue of its own, one Celery worker (``--pool=solo``) and
``lethe serve`` (whose first start trains and catalogues the demo model on ``--dataset``), all
with the default lease, sweeper and planner settings (``--set NAME=VALUE`` changes one).
``--n`` single-instance ``POST /v1/forget`` from ``--threads`` clients; then polls until every
request is final. Row: requests, completed, failed, seconds (first POST to last final state),
and ``plans``: per job, its method, exactness, k and the planner's reason.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import httpx

from bench.gateway import create_db, drop_db, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")


def service_env(tmp: str, db_url: str, queue: str, dataset: str, key: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    env.update(LETHE_DATABASE_URL=db_url, LETHE_BROKER_URL=REDIS, LETHE_QUEUE_NAME=queue,
               LETHE_REGISTRY_DIR=os.path.join(tmp, "registry"), LETHE_DATA_DIR=os.path.join(tmp, "data"),
               LETHE_DEMO_DATASET=dataset, LETHE_DEMO_EXACT_DATASET="", LETHE_DEVICE="cpu",
               LETHE_SUBJECT_SECRET="bench-subject-secret-" + uuid.uuid4().hex, LETHE_BOOTSTRAP_ADMIN_KEY=key,
               LETHE_WEBHOOK_SECRET="bench-whsec-" + uuid.uuid4().hex,
               LETHE_AUDIT_CHECKPOINT_FILE=os.path.join(tmp, "audit", "checkpoints.jsonl"),
               PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    return env


def spawn(args, env, log_path) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def run_service(n: int, dataset: str, threads: int, timeout: float, overrides: dict | None = None) -> dict:
    db_url, db_name = create_db()
    tmp = tempfile.mkdtemp(prefix="lethe-completion-")
    queue = f"lethe-bench-{uuid.uuid4().hex[:8]}"
    key = "bench-admin-" + uuid.uuid4().hex
    env = {**service_env(tmp, db_url, queue, dataset, key), **(overrides or {})}
    port = free_port()
    procs = [spawn([os.path.join(BIN, "celery"), "-A", "worker.celery_app", "worker", "--pool=solo",
                    "--loglevel=" + os.environ.get("BENCH_WORKER_LOGLEVEL", "WARNING"), "-n", f"{queue}@%h", "-Q", queue], env, os.path.join(tmp, "celery.log")),
             spawn([sys.executable, "-m", "app.cli", "serve"], {**env, "LETHE_PORT": str(port)},
                   os.path.join(tmp, "gateway.log"))]
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {key}"}
    try:
        deadline = time.time() + 900  # the first start trains the demo model
        while True:
            if procs[1].poll() is not None or time.time() > deadline:
                raise RuntimeError(open(os.path.join(tmp, "gateway.log")).read()[-4000:])
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
            model = c.get("/v1/models").json()[0]["name"]
            v1 = c.get(f"/v1/models/{model}/versions").json()["versions"][0]
        ids = [f"{dataset}-{i:05d}" for i in range(n)]

        limited = [0] * threads  # 429 answers, per client thread

        def post(t):
            # a well-behaved client: a 429 (the per-caller submit rate limit, one admin key here)
            # is retried after its Retry-After
            out = []
            with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
                for i in ids[t::threads]:
                    while True:
                        r = c.post("/v1/forget", json={"model": model, "instance_ids": [i]})
                        if r.status_code != 429:
                            break
                        limited[t] += 1
                        time.sleep(float(r.headers.get("Retry-After", "1")))
                    out.append(r)
            return out

        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(threads) as pool:
            responses = [r for rs in pool.map(post, range(threads)) for r in rs]
        submitted = time.perf_counter() - t0
        accepted = [r.json()["id"] for r in responses if r.status_code == 202]
        rejected = [f"{r.status_code} {r.text[:200]}" for r in responses if r.status_code != 202]
        final: dict[str, dict] = {}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
            deadline = time.time() + timeout
            while len(final) < len(accepted) and time.time() < deadline:
                for rid in accepted:
                    if rid not in final:
                        body = c.get(f"/v1/forget/{rid}").json()
                        if body["status"] in ("completed", "failed", "rejected"):
                            final[rid] = body
                        else:
                            break  # jobs finish roughly in order: poll again later
                time.sleep(0.5)
            seconds = time.perf_counter() - t0
            # the job that served each request (a request moved by a split or absorbed by a
            # consolidation shows its final job), in the order the jobs were created
            job_ids = {b["job"]["id"] for b in final.values() if b.get("job")}
            jobs = sorted((c.get(f"/v1/jobs/{j}").json() for j in job_ids), key=lambda j: j["created_at"])
            plans = []
            for job in jobs:
                p = job.get("plan") or {}
                plans.append({"job": job["id"], "status": job["status"], "attempts": job["attempts"],
                              "requests": len(job["request_ids"]), "objective": job["objective"],
                              "created_at": job["created_at"], "started_at": job["started_at"],
                              "finished_at": job["finished_at"],
                              "method": p.get("method"), "exact": p.get("exact"),
                              "k": (p.get("inputs") or {}).get("k"), "reason": p.get("reason"),
                              "fallback_from": p.get("fallback_from"),
                              "job_seconds": (job.get("metrics") or {}).get("job_seconds")})
            verify = c.get("/v1/audit/verify", params={"full": "true"}).json()
        statuses = [b["status"] for b in final.values()]
        with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
            splits = [e for e in c.get("/v1/audit", params={"action": "job.split", "limit": 1000}).json().get("entries", [])]
        return {"dataset": dataset, "model": model, "requests": n, "threads": threads,
                "settings": overrides or {}, "rate_limited_429": sum(limited),
                "accepted": len(accepted), "rejected_at_submit": len(rejected), "rejected_examples": rejected[:5],
                "job_splits": len(splits),
                "completed": statuses.count("completed"), "failed": statuses.count("failed"),
                "not_final": len(accepted) - len(final), "seconds": round(seconds, 1),
                "submit_seconds": round(submitted, 1), "train_seconds_v1": (v1.get("metrics") or {}).get("train_seconds"),
                "jobs": len(job_ids), "audit_ok": verify.get("ok"), "plans": plans}
    finally:
        for p in reversed(procs):
            stop(p)
        drop_db(db_name)
        if os.environ.get("BENCH_KEEP_LOGS"):  # a directory to keep the gateway's and the worker's logs in
            os.makedirs(os.environ["BENCH_KEEP_LOGS"], exist_ok=True)
            for name in ("gateway.log", "celery.log"):
                shutil.copy(os.path.join(tmp, name), os.environ["BENCH_KEEP_LOGS"])
        shutil.rmtree(tmp, ignore_errors=True)
