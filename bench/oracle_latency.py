"""Submit latency of a known and an unknown subject, as a tenant's key sees it (docs/service.md,
*No oracle*). A script, and the measuring function ``tests/service/test_oracle_timeline.py``
runs:

    nice -n 10 python -m bench.oracle_latency [--n 200] [--db sqlite postgres]

For each database it starts the gateway on loopback (uvicorn in a thread of this process, a
dispatcher that records and a worker emulated with the real job functions), on a fresh
database (Postgres: created here and dropped after) whose model catalogues ``n`` + 5 subjects,
and sends ``n`` pairs of ``POST /v1/forget`` with a portal key of tenant ``acme``: one for a
subject the model holds (each a fresh one), one for a subject it does not, in a random order
within each pair, one after the other on one keep-alive connection. Two workloads: ``join``
(the known subject's request joins the model's queued job) and ``new_job`` (a worker has
taken every job, so each known request creates one: the job is claimed and failed with the
real ``jobs.claim``/``jobs.fail`` between pairs, outside the timing), and ``cancel``: each
request is canceled as soon as it is accepted, and the ``POST .../cancel`` is timed (a
submit-and-cancel costs no erasure, so it must not tell either). Rows go to
``bench/results/oracle_latency.json``: ``db, workload, n, known_p50_ms, unknown_p50_ms,
diff_ms, known_p90_ms, unknown_p90_ms``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import tempfile
import threading
import time

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results", "oracle_latency.json")


class _Recording:
    """A dispatcher that keeps the job ids (the jobs stay queued until the harness takes them)."""

    def __init__(self):
        self.sent: list[str] = []

    def dispatch(self, job_id: str) -> None:
        self.sent.append(job_id)

    def dispatch_training(self, run_id: str) -> None:
        pass

    def ready(self):
        return True, "ok"


class LiveGateway:
    """``create_app(settings)`` served by uvicorn on a free loopback port, in a thread."""

    def __init__(self, settings, dispatcher=None):
        import uvicorn

        from app.main import create_app

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(create_app(settings, dispatcher=dispatcher or _Recording()),
                                                    host="127.0.0.1", port=port, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, name="oracle-latency-gateway", daemon=True)
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError("gateway did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(15)


def _take_job(settings, rid: str) -> None:
    """What a worker does to the known request's job before the next pair: claims it (the
    model's queued job is gone, so the next known request creates one) and, here, fails it."""
    from app.db import session_scope
    from app.forget.models import ForgetRequest
    from app.jobs import service as jobs

    with session_scope(settings.database_url) as db:
        job_id = db.get(ForgetRequest, rid).job_id
    if job_id is None:
        return
    with session_scope(settings.database_url) as db:
        c = jobs.claim(db, job_id, worker="bench-worker", lease_s=60)
    if c.outcome == "run":
        with session_scope(settings.database_url) as db:
            jobs.fail(db, job_id=job_id, token=c.token, worker="bench-worker", error="bench", retryable=False)


def measure(settings, base: str, key: str, model: str, known: list[str], *, new_job: bool = False,
            cancel: bool = False, seed: int = 0) -> dict:
    """``len(known)`` interleaved pairs (known subject, unknown subject), random order within a
    pair; returns the latencies in ms: {"known": [...], "unknown": [...]}. ``cancel``: each
    request is canceled right after it is accepted, and the cancel is what is timed."""
    rng = random.Random(seed)
    out: dict[str, list[float]] = {"known": [], "unknown": []}
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        client.post("/v1/forget", json={"model": model, "subject_id": "warm-up-nobody"}).raise_for_status()
        for i, subject in enumerate(known):
            order = [("known", subject), ("unknown", f"nobody-{seed}-{i}")]
            rng.shuffle(order)
            for kind, sid in order:
                t0 = time.perf_counter()
                r = client.post("/v1/forget", json={"model": model, "subject_id": sid})
                if r.status_code != 202:
                    raise RuntimeError(f"{kind}: {r.status_code} {r.text}")
                if cancel:
                    t0 = time.perf_counter()
                    c = client.post(f"/v1/forget/{r.json()['id']}/cancel")
                    if c.status_code != 200:
                        raise RuntimeError(f"{kind} cancel: {c.status_code} {c.text}")
                out[kind].append((time.perf_counter() - t0) * 1000)
                if kind == "known" and new_job:
                    _take_job(settings, r.json()["id"])
    return out


def summary(lat: dict) -> dict:
    k, u = lat["known"], lat["unknown"]
    q = lambda xs, p: statistics.quantiles(xs, n=10)[p - 1]  # noqa: E731 - deciles
    return {"n": len(k), "known_p50_ms": round(statistics.median(k), 2), "unknown_p50_ms": round(statistics.median(u), 2),
            "diff_ms": round(statistics.median(k) - statistics.median(u), 2),
            "known_p90_ms": round(q(k, 9), 2), "unknown_p90_ms": round(q(u, 9), 2)}


MODEL = "oracle-model"


def prepare(url: str, tmp: str, n: int):
    """Settings on ``url`` (migrated; model ``MODEL`` registered with ``n`` catalogued
    instances, one per subject ``user-<i>``: rows only, a submission reads no raw data), a
    portal key of tenant acme granted the model. Returns (settings, key, known subjects)."""
    import secrets

    from app.catalogue.models import TrainingInstance
    from app.cli import migrate
    from app.db import session_scope
    from app.registry import service as registry
    from app.security import FORGET_READ, FORGET_WRITE, create_key, pseudonyms
    from app.settings import Settings
    from app.tenants import service as tenant_policy

    s = Settings(database_url=url, registry_dir=os.path.join(tmp, "registry"), data_dir=os.path.join(tmp, "data"),
                 subject_secret=secrets.token_hex(32), webhook_secret=secrets.token_hex(32), broker_url="",
                 bootstrap_demo=False, embedded_worker=False, rate_submit_per_min=0,
                 audit_checkpoint_file=os.path.join(tmp, "audit", "checkpoints.jsonl"))
    migrate(s)
    known = [f"user-{i}" for i in range(n)]
    with session_scope(s.database_url) as db:
        registry.register_model(db, name=MODEL, dataset="digits", arch="mlp", input_shape=[64],
                                classes=[str(c) for c in range(10)])
        db.bulk_insert_mappings(TrainingInstance, [
            {"model_name": MODEL, "instance_id": f"i-{i:06d}", "dataset": "digits", "label": i % 10,
             "content_hash": "0" * 64, "storage_uri": "none", "subject_ref": pseudonyms.subject_ref(s.subject_secret, sid)}
            for i, sid in enumerate(known)])
    with session_scope(s.database_url) as db:
        key = create_key(db, "acme-portal", [FORGET_WRITE, FORGET_READ], actor="bench", tenant="acme")[1]
        tenant_policy.grant(db, "acme", MODEL, actor="bench")
    return s, key, known


def pg_database():
    """A fresh Postgres database (a context manager yielding its URL; dropped after)."""
    import contextlib
    import uuid

    import psycopg

    admin = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")

    @contextlib.contextmanager
    def db():
        name = f"lethe_oracle_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(admin, autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        finally:
            with psycopg.connect(admin, autocommit=True) as con:
                con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return db()


def run(db: str, n: int) -> list[dict]:
    import contextlib

    rows = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        url = stack.enter_context(pg_database()) if db == "postgres" else f"sqlite:///{tmp}/lethe.db"
        s, key, known = prepare(url, tmp, 3 * n)
        with LiveGateway(s) as gw:
            for workload, subjects in (("join", known[:n]), ("new_job", known[n:2 * n]), ("cancel", known[2 * n:])):
                lat = measure(s, gw.url, key, MODEL, subjects, new_job=workload == "new_job",
                              cancel=workload == "cancel")
                rows.append({"db": db, "workload": workload, **summary(lat)})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--db", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    args = ap.parse_args()
    rows = [r for db in args.db for r in run(db, args.n)]
    with open(RESULTS, "w") as f:
        json.dump({"rows": rows, "note": "POST /v1/forget latency to a tenant's key, known vs unknown subject, "
                                         "interleaved pairs on one connection; in-process uvicorn"}, f, indent=1)


if __name__ == "__main__":
    main()
