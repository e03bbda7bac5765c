"""The submit path under concurrency, against real Postgres (a fresh database per module):
no model-wide lock, yet idempotency, 409 on overlapping open requests, one audit entry per
accepted request and one dispatch per created job all hold; a worker claiming jobs while
requests pour in never strands a request on a job that already started."""
from __future__ import annotations

import json
import random
import secrets
import threading
import time
from collections import Counter

import pytest
from sqlalchemy import func, select

from app.audit import service as audit
from app.audit.models import AuditEvent, AuditOutbox
from app.cli import migrate
from app.errors import LetheError
from app.db import session_scope
from app.forget import service as forget
from app.forget.models import ForgetRequest, PendingClaim
from app.forget.schemas import ForgetCreate
from app.jobs import service as jobs
from app.jobs.models import Job

from .conftest import MODEL, make_settings, publish, seed

N_INSTANCES = 60


@pytest.fixture(scope="module")
def pg(pg_database, tmp_path_factory):
    s = make_settings(tmp_path_factory.mktemp("pg"), database_url=pg_database[0])
    migrate(s)
    return seed(s, N_INSTANCES)


def _ids(i: int) -> str:
    return f"toy-{i:05d}"


def _run(n_threads: int, fn) -> list:
    """Call fn(thread index) on n threads at once; returns their results in order."""
    out: list = [None] * n_threads
    gate = threading.Barrier(n_threads)

    def go(k):
        gate.wait()
        try:
            out[k] = fn(k)
        except Exception as e:  # noqa: BLE001 - returned to the test, which asserts on it
            out[k] = e
    threads = [threading.Thread(target=go, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def _submit(settings, body: dict, key: str | None = None):
    """One POST's transaction: (request id, job id to dispatch, replayed) or the LetheError."""
    try:
        with session_scope(settings.database_url) as db:
            req, job_id, replayed = forget.submit(db, settings, ForgetCreate(**body), idempotency_key=key,
                                                  actor="test")
            return req.id, job_id, replayed
    except LetheError as e:
        return e


def _open_claims(settings) -> dict:
    with session_scope(settings.database_url) as db:
        claims = {(c.instance_id): c.request_id for c in db.execute(select(PendingClaim)).scalars()}
        open_reqs = db.execute(select(ForgetRequest).where(ForgetRequest.status.in_(["queued", "running"]))).scalars()
        return claims, {r.id: list(r.instance_ids) for r in open_reqs}


def _reset(settings) -> None:
    """Close every open request (as canceled) so a test starts with nothing pending."""
    with session_scope(settings.database_url) as db:
        for r in db.execute(select(ForgetRequest).where(ForgetRequest.status == "queued")).scalars():
            forget.cancel(db, r.id, actor="test")


def test_overlapping_submissions_one_winner_per_instance(pg):
    _reset(pg)
    rng = random.Random(0)
    bodies = [{"model": MODEL, "instance_ids": [_ids(i) for i in rng.sample(range(20), 3)]} for _ in range(48)]
    results = _run(16, lambda k: [_submit(pg, b) for b in bodies[k::16]])
    flat = [r for rs in results for r in rs]
    accepted = [r for r in flat if isinstance(r, tuple)]
    refused = [r for r in flat if not isinstance(r, tuple)]
    assert accepted and refused, flat
    assert all(e.status == 409 and e.code == "already_pending" for e in refused), refused
    claims, open_reqs = _open_claims(pg)
    covered = Counter(i for ids in open_reqs.values() for i in ids)
    assert max(covered.values()) == 1  # no instance in two open requests
    assert claims == {i: rid for rid, ids in open_reqs.items() for i in ids}  # claims mirror open requests
    assert {rid for rid, _, _ in accepted} == set(open_reqs)
    with session_scope(pg.database_url) as db:
        assert audit.verify(db)["ok"] is True
        received = Counter(json.loads(p)["request_id"] for p in db.execute(
            select(AuditEvent.payload).where(AuditEvent.action == "forget.received")).scalars())
        assert all(received[rid] == 1 for rid, _, _ in accepted)  # each accepted request audited once
        assert db.execute(select(func.count()).select_from(AuditOutbox)).scalar() == 0
        # every job was created (and so dispatched) by exactly one submission
        created = [j for _, j, _ in accepted if j]
        assert len(created) == len(set(created))
        queued_jobs = set(db.execute(select(Job.id).join(ForgetRequest, ForgetRequest.job_id == Job.id)
                                     .where(ForgetRequest.id.in_(list(open_reqs)))).scalars())
        assert queued_jobs <= set(created)


def test_same_idempotency_key_at_once_records_one_request(pg):
    _reset(pg)
    body = {"model": MODEL, "instance_ids": [_ids(30), _ids(31)]}
    results = _run(8, lambda k: _submit(pg, body, key="burst-key-1"))
    assert all(isinstance(r, tuple) for r in results), results
    assert len({rid for rid, _, _ in results}) == 1
    assert sorted(replayed for _, _, replayed in results) == [False] + [True] * 7
    other = _submit(pg, {**body, "external_id": "changed"}, key="burst-key-1")
    assert isinstance(other, LetheError) and other.code == "idempotency_key_reused"


def test_claiming_while_requests_arrive_strands_none(pg):
    """A worker claims queued jobs in a loop while 12 threads submit: a request lands on a
    job that has not started (and runs with it later) or on a new one, never on a job that
    was claimed without it."""
    _reset(pg)
    stop = threading.Event()
    claimed: dict[str, list[str]] = {}
    crashed: list[Exception] = []

    def worker():
        try:
            claim_loop()
        except Exception as e:  # noqa: BLE001 - asserted below (a deadlock between claim and submit)
            crashed.append(e)

    def claim_loop():
        while not stop.is_set():
            with session_scope(pg.database_url) as db:
                ids = db.execute(select(Job.id).where(Job.status == "queued")).scalars().all()
            for job_id in ids:
                with session_scope(pg.database_url) as db:
                    c = jobs.claim(db, job_id, worker="test", lease_s=0)  # lease 0: never deferred
                    if c.outcome == "run":
                        claimed[job_id] = [r.id for r in c.requests]
                        jobs.fail(db, job_id=job_id, token=c.token, worker="test", error="test: stop here",
                                  retryable=False)
    t = threading.Thread(target=worker)
    t.start()
    try:
        results = _run(12, lambda k: [_submit(pg, {"model": MODEL, "instance_ids": [_ids(40 + k)]}),
                                      _submit(pg, {"model": MODEL, "instance_ids": [_ids(52 + k % 8)]})])
    finally:
        stop.set()
        t.join(60)
    assert crashed == []
    assert all(isinstance(r, (tuple, LetheError)) for rs in results for r in (rs if isinstance(rs, list) else [rs])), results
    accepted = [r[0] for rs in results for r in rs if isinstance(r, tuple)]
    assert len(accepted) >= 12
    with session_scope(pg.database_url) as db:
        for rid in accepted:
            req = db.get(ForgetRequest, rid)
            job = db.get(Job, req.job_id)
            if job.id in claimed:  # the job ran: it took the request with it
                assert rid in claimed[job.id] and req.status == "failed", (rid, job.status, req.status)
            else:  # not claimed yet: both still queued
                assert (job.status, req.status) == ("queued", "queued")
        # failed requests released their instances: nothing claimed for a closed request
        left = db.execute(select(PendingClaim.request_id)).scalars().all()
        assert all(db.get(ForgetRequest, rid).status in ("queued", "running") for rid in left)


def test_claims_follow_the_request_lifecycle(pg):
    _reset(pg)
    first = _submit(pg, {"model": MODEL, "instance_ids": [_ids(1), _ids(2)]})
    assert isinstance(_submit(pg, {"model": MODEL, "instance_ids": [_ids(2)]}), LetheError)
    with session_scope(pg.database_url) as db:
        c = jobs.claim(db, first[1], worker="test", lease_s=0)
    publish(pg, first[1], c.token, c.instance_ids)  # erased: the claim is gone, the erasure answers
    again = _submit(pg, {"model": MODEL, "instance_ids": [_ids(2)]})
    assert isinstance(again, LetheError) and again.code == "already_erased"
    with session_scope(pg.database_url) as db:
        assert db.execute(select(PendingClaim).where(PendingClaim.instance_id.in_([_ids(1), _ids(2)]))).first() is None


def test_concurrent_drainers_and_appenders_keep_one_chain(pg):
    def work(k):
        for i in range(20):
            with session_scope(pg.database_url) as db:
                if k % 3 == 0:
                    audit.append(db, actor=f"t{k}", action="test.append", payload={"i": i})
                elif k % 3 == 1:
                    audit.record(db, actor=f"t{k}", action="test.record", payload={"i": i})
                else:
                    audit.drain(db, wait=False)
    with session_scope(pg.database_url) as db:
        before = db.execute(select(func.count()).select_from(AuditEvent)).scalar() + audit.pending(db)
    _run(9, work)
    with session_scope(pg.database_url) as db:
        result = audit.verify(db)
        assert result["ok"] is True, result
        assert result["entries"] == before + 6 * 20
        assert audit.pending(db) == 0


def test_many_more_requests_in_flight_than_connections_all_answer(pg):
    """120 requests at once, 8x the pool's 15 connections and 3x the 40 threads, half of them
    routes that take a second connection while holding their own (the audit list drains the
    outbox): all answer, well inside the pool's 30 s timeout. Without the database gate in
    app/deps.py, threads waiting for a connection held by requests waiting for a thread
    stalled until that timeout."""
    import time

    from fastapi.testclient import TestClient

    from app.main import create_app

    from .conftest import RecordingDispatcher, bearer, make_key

    _reset(pg)
    rid = _submit(pg, {"model": MODEL, "instance_ids": [_ids(3)]})[0]
    s = pg.model_copy(update={"subject_secret": secrets.token_hex(32), "webhook_secret": secrets.token_hex(32)})  # a deployment's
    with TestClient(create_app(s, dispatcher=RecordingDispatcher()), headers=bearer(make_key(s))) as c:
        t0 = time.monotonic()
        codes = _run(120, lambda k: c.get(f"/v1/forget/{rid}" if k % 2 else "/v1/audit?limit=1").status_code)
        took = time.monotonic() - t0
    assert Counter(codes) == {200: 120}, Counter(map(str, codes))
    assert took < 25, took


def test_claim_waits_for_an_attaching_submission_without_deadlock(pg):
    """A submission holds the queued job FOR SHARE (attach), then its INSERT checks the model
    foreign key (FOR KEY SHARE on the model row). A claim that locks the model, then waits for
    that job, must not block that check: with the model locked FOR UPDATE the two deadlocked and
    Postgres aborted one (seen in bench.completion: the claim, the job then waited a minute for
    the sweeper). Steps forced in the deadlocking order."""
    _reset(pg)
    first = _submit(pg, {"model": MODEL, "instance_ids": [_ids(10)]})
    assert isinstance(first, tuple) and first[1]
    job_id = first[1]
    out: dict = {}
    with session_scope(pg.database_url) as db:
        # the submission's first step: the queued job, FOR SHARE (the lock attach() takes)
        held = db.execute(select(Job.id).where(Job.id == job_id).with_for_update(read=True)).scalar()
        assert held == job_id

        def claim():
            try:
                with session_scope(pg.database_url) as cdb:
                    c = jobs.claim(cdb, job_id, worker="test", lease_s=0)
                    out["claim"] = (c.outcome, sorted(r.id for r in c.requests))
                    jobs.fail(cdb, job_id=job_id, token=c.token, worker="test", error="test: stop here",
                              retryable=False)
            except Exception as e:  # noqa: BLE001 - asserted below
                out["claim"] = e
        t = threading.Thread(target=claim)
        t.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _waiting_for_lock(pg):
            time.sleep(0.05)
        assert _waiting_for_lock(pg), "the claim should be waiting for the job row"
        # the submission goes on: its request row references the model (FK check) and the job
        req, joined, _ = forget.submit(db, pg, ForgetCreate(model=MODEL, instance_ids=[_ids(11)]),
                                       idempotency_key=None, actor="test")
        assert joined is None and req.job_id == job_id  # it joined the queued job
        second = req.id
    t.join(30)
    assert out["claim"] == ("run", sorted([first[0], second])), out["claim"]


def test_submitters_that_waited_on_a_claim_join_one_new_job(pg):
    """Submitters blocked on the queued job while a claim holds it all find it gone once the
    claim commits: they must pool into one new job, not create one each."""
    _reset(pg)
    first = _submit(pg, {"model": MODEL, "instance_ids": [_ids(20)]})
    job_id = first[1]
    results: list = []
    with session_scope(pg.database_url) as cdb:
        c = jobs.claim(cdb, job_id, worker="test", lease_s=0)  # holds the job FOR UPDATE until commit
        assert c.outcome == "run"
        threads = [threading.Thread(target=lambda k=k: results.append(
            _submit(pg, {"model": MODEL, "instance_ids": [_ids(21 + k)]}))) for k in range(6)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _waiting_for_lock(pg) < 6:
            time.sleep(0.05)
        assert _waiting_for_lock(pg) >= 6, "every submitter should be waiting on the claimed job"
        jobs.fail(cdb, job_id=job_id, token=c.token, worker="test", error="test: stop here", retryable=False)
    for t in threads:
        t.join(30)
    assert len(results) == 6 and all(isinstance(r, tuple) for r in results), results
    with session_scope(pg.database_url) as db:
        joined = {db.get(ForgetRequest, rid).job_id for rid, _, _ in results}
    assert len(joined) == 1 and job_id not in joined, joined
    assert sum(1 for _, created, _ in results if created) == 1  # one dispatch for the one new job


def _waiting_for_lock(settings) -> int:
    """How many other sessions of this database wait on a lock."""
    from sqlalchemy import text

    with session_scope(settings.database_url) as db:
        return int(db.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                   "AND wait_event_type = 'Lock'")).scalar())


def test_submit_and_polls_over_http_on_the_event_loop(pg):
    """POST /v1/forget and the polls go through RequestDb, which on Postgres runs them on the
    event loop (psycopg's async connection, no thread pool): 16 clients at once over HTTP,
    overlapping bodies, keep one winner per instance, 409 for the rest, one audit entry per
    accepted request, one dispatch per created job; a second client (a new event loop) gets
    an engine of its own."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    from .conftest import RecordingDispatcher, bearer, make_key

    _reset(pg)
    rng = random.Random(1)
    bodies = [{"model": MODEL, "instance_ids": [_ids(i) for i in rng.sample(range(40, 56), 2)]} for _ in range(48)]
    s = pg.model_copy(update={"subject_secret": secrets.token_hex(32), "webhook_secret": secrets.token_hex(32)})
    sent = RecordingDispatcher()
    app = create_app(s, dispatcher=sent)
    key = make_key(s)

    def events() -> int:
        with session_scope(pg.database_url) as db:
            audit.drain(db)
            return db.execute(select(func.count()).select_from(AuditEvent)
                              .where(AuditEvent.action == "forget.received")).scalar()

    before = events()
    with TestClient(app, headers=bearer(key)) as c:
        answers = _run(16, lambda k: [c.post("/v1/forget", json=b) for b in bodies[k::16]])
        loop, engine = app.state.async_engine
        assert engine is not None  # the async path was taken
        assert engine.sync_engine.pool.checkedout() == 0  # refused requests too gave their connection back
    flat = [r for rs in answers for r in rs]
    ok = [r.json() for r in flat if r.status_code == 202]
    refused = [r.json() for r in flat if r.status_code != 202]
    assert ok and refused and all(e["code"] == "already_pending" for e in refused), refused
    claims, open_reqs = _open_claims(pg)
    assert {a["id"] for a in ok} == set(open_reqs)
    assert max(Counter(i for ids in open_reqs.values() for i in ids).values()) == 1
    assert len(sent.sent) == len(set(sent.sent))  # each job dispatched once
    assert {a["job_id"] for a in ok} <= set(sent.sent)  # ... and every job was dispatched
    with session_scope(pg.database_url) as db:
        audit.drain(db)
        received = Counter(json.loads(p)["request_id"] for p in db.execute(
            select(AuditEvent.payload).where(AuditEvent.action == "forget.received")).scalars())
        assert all(received[a["id"]] == 1 for a in ok)
    assert events() - before == len(ok)  # a refused submission left no event
    with TestClient(app, headers=bearer(key)) as c:  # a new event loop: a new engine, the same answers
        got = c.get(f"/v1/forget/{ok[0]['id']}")
        assert got.status_code == 200 and got.json()["status"] == "queued"
        assert c.get(f"/v1/jobs/{ok[0]['job_id']}").status_code == 200
        assert c.get("/v1/forget/nope").json()["code"] == "unknown_request"
        assert c.get("/v1/jobs/nope").json()["code"] == "unknown_job"
        assert c.get(f"/v1/forget/{ok[0]['id']}", headers={"Authorization": "Bearer lethe_nope"}).status_code == 401
        assert app.state.async_engine[0] is not loop


def test_a_portals_policy_read_with_its_key_on_postgres(pg):
    """On Postgres a key's tenant policy is read with the key, in the request's transaction
    (app/security/keys.py): a tenant with no grants gets 404 unknown_model, a method outside
    its list 403, its quota 429, and a grant takes effect on the next request."""
    from fastapi.testclient import TestClient

    from app import security
    from app.main import create_app
    from app.registry import service as registry
    from app.tenants import service as tenant_policy
    from models import unlearn

    from .conftest import RecordingDispatcher, bearer, make_key

    _reset(pg)
    s = pg.model_copy(update={"subject_secret": secrets.token_hex(32), "webhook_secret": secrets.token_hex(32)})
    portal = make_key(s, [security.FORGET_WRITE, security.FORGET_READ], name="acme-portal", tenant="acme")
    body = {"model": MODEL, "instance_ids": [_ids(57)]}
    with session_scope(s.database_url) as db:
        allowed, other = unlearn.methods_for(registry.model_facts(db, MODEL).family)[:2]
    with TestClient(create_app(s, dispatcher=RecordingDispatcher()), headers=bearer(portal)) as c:
        assert c.post("/v1/forget", json=body).json()["code"] == "unknown_model"
        with session_scope(s.database_url) as db:
            tenant_policy.grant(db, "acme", MODEL, actor="test")
            tenant_policy.update(db, "acme", actor="test", methods=[allowed], max_open_requests=1)
        assert c.post("/v1/forget", json={**body, "method": other}).json()["code"] == "tenant_method_refused"
        first = c.post("/v1/forget", json=body)
        assert first.status_code == 202, first.json()
        assert c.post("/v1/forget", json={**body, "instance_ids": [_ids(58)]}).json()["code"] == "tenant_quota_exceeded"
