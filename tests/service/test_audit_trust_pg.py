"""Issue 22, findings 3 and 5, on Postgres: what its administrator can do to the audit chain —
disable the append-only triggers, then rewrite one event and re-hash every event after it with
the project's own hash function (the checkpoints deleted), truncate (the checkpoints above
the cut deleted), or edit one signed event in place — is refused by the checkpointer however many events follow, and every
verification (the checkpoints of the database and of the file outside it) says broken.
``test_audit_trust.py`` runs the same on SQLite."""
import secrets

import psycopg
import pytest
from fastapi.testclient import TestClient

from app.audit import checkpoints
from app.audit import service as audit
from app.cli import migrate
from app.db import session_scope
from app.main import create_app

from .conftest import bearer, make_key, make_settings


@pytest.fixture
def pg(pg_url, tmp_path):
    s = make_settings(tmp_path, database_url=pg_url, webhook_secret=secrets.token_hex(32))
    s = s.model_copy(update={"subject_secret": secrets.token_hex(32)})
    migrate(s)
    return s


def _append(s, n: int) -> None:
    with session_scope(s.database_url) as db:
        for i in range(n):
            audit.append(db, actor="test", action="test.event", payload={"i": i})
        audit.drain(db)


def _tamper(url: str, how: str, keep: int) -> None:
    con = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
    try:
        con.execute("ALTER TABLE audit_events DISABLE TRIGGER ALL")
        con.execute("ALTER TABLE audit_checkpoints DISABLE TRIGGER ALL")
        if how == "edit":  # one row changed in place, nothing re-hashed, the checkpoints kept
            con.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = %s", (keep,))
            return
        if how == "truncate":
            con.execute("DELETE FROM audit_checkpoints WHERE seq > %s", (keep,))
            con.execute("DELETE FROM audit_events WHERE seq > %s", (keep,))
            return
        con.execute("DELETE FROM audit_checkpoints")
        rows = con.execute("SELECT seq, ts, actor, action, subject_ref, payload, prev_hash FROM audit_events "
                           "WHERE seq >= %s ORDER BY seq", (keep,)).fetchall()
        prev = rows[0][6]
        for seq, ts, actor, action, subject_ref, payload, _ in rows:
            actor = "mallory" if seq == keep else actor
            h = audit.compute_hash(prev, seq, ts, actor, action, subject_ref, payload)
            con.execute("UPDATE audit_events SET prev_hash = %s, hash = %s WHERE seq = %s",
                        ("tmp-" + str(seq), "tmp-h-" + str(seq), seq))  # dodge UNIQUE while moving
            con.execute("UPDATE audit_events SET actor = %s, prev_hash = %s, hash = %s WHERE seq = %s",
                        (actor, prev, h, seq))
            prev = h
    finally:
        con.close()


@pytest.mark.parametrize("how", ["rewrite", "truncate", "edit"])
def test_the_checkpointer_never_signs_a_tampered_chain_on_postgres(pg, how):
    s = pg
    _append(s, 30)
    first = checkpoints.create(s, force=True)["certificate"]["seq"]
    _append(s, 10)
    assert checkpoints.create(s, force=True)["certificate"]["seq"] == first + 10
    _tamper(s.database_url, how, first + 5 if how == "truncate" else first - 5)
    with TestClient(create_app(s)) as c:
        auditor = bearer(make_key(s, ["audit:read"], "auditor"))
        assert c.get("/v1/audit/verify", params={"full": True}, headers=auditor).json()["ok"] is False
        for _ in range(2):  # new requests keep coming: still nothing is signed over the tampered chain
            _append(s, 22)
            signed = checkpoints.create(s, force=True)
            res = c.get("/v1/audit/verify", params={"full": True}, headers=auditor).json()
            assert res["ok"] is False, res
            if how == "edit":
                # an edited row keeps every pinned hash, so the chain's own check finds it on every full
                # verification; a checkpoint over the new events pins nothing about it and launders nothing
                continue
            assert signed is None
            n, problem = checkpoints.check_server_side(s)
            assert problem is not None and n >= 1, problem
        if how != "edit":
            assert checkpoints.Anchor.ok is False


def test_a_missing_checkpoint_file_is_an_error_on_postgres(pg):
    """The checkpoint file is the anchor outside the database: once it is gone, verification
    says broken and nothing more is signed (finding 5: a missing file was skipped silently)."""
    import os

    s = pg
    assert s.audit_checkpoint_file
    _append(s, 3)
    assert checkpoints.create(s, force=True) is not None
    assert checkpoints.check_server_side(s) == (1, None)
    os.remove(s.audit_checkpoint_file)
    n, problem = checkpoints.check_server_side(s)
    assert problem is not None and "missing" in problem
    with TestClient(create_app(s)) as c:
        auditor = bearer(make_key(s, ["audit:read"], "auditor"))
        assert c.get("/v1/audit/verify", headers=auditor).json()["ok"] is False
    _append(s, 3)
    assert checkpoints.create(s, force=True) is None
