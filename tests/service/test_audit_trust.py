"""Issue 15, findings 4 and 5: audit verification is incremental and never blocks writers;
signed checkpoints of the chain head catch what a database administrator can do to a hash
chain (drop the triggers, truncate, or rewrite and re-hash)."""
import json
import sqlite3
import threading

import pytest

from app.audit import checkpoints
from app.audit import service as audit
from app.db import session_scope

from .conftest import make_key


@pytest.fixture
def seeded(seeded, tmp_path):
    """The service appends each checkpoint to a file outside the database too."""
    return seeded.model_copy(update={"audit_checkpoint_file": str(tmp_path / "outside" / "checkpoints.jsonl")})


def _append(settings, n: int, actor: str = "test") -> None:
    with session_scope(settings.database_url) as db:
        for i in range(n):
            audit.append(db, actor=actor, action="test.event", payload={"i": i})


def test_verification_checks_only_what_is_new(client, seeded, monkeypatch):
    _append(seeded, 30)
    first = client.get("/v1/audit/verify").json()
    assert first["ok"] and first["entries"] >= 30 and first["checked"] == first["entries"]
    _append(seeded, 3)
    calls = []
    real = audit.compute_hash
    monkeypatch.setattr(audit, "compute_hash", lambda *a: calls.append(a[1]) or real(*a))
    second = client.get("/v1/audit/verify").json()
    assert second["ok"] and second["entries"] == first["entries"] + 3
    assert second["checked"] == 3 and len(calls) == 3  # not the whole chain again
    assert client.get("/v1/audit/verify", params={"full": True}).json()["checked"] == second["entries"]


def test_verification_never_holds_the_write_lock(client, seeded, monkeypatch):
    """A writer commits while a full verification is in the middle of the chain (before:
    the verification held SQLite's write lock and writers waited or failed 'database is
    locked')."""
    _append(seeded, 20)
    inside, release = threading.Event(), threading.Event()
    real = audit.compute_hash

    def slow(*a):
        if a[1] == 10:
            inside.set()
            release.wait(20)
        return real(*a)

    monkeypatch.setattr(audit, "compute_hash", slow)
    result = {}
    verifier = threading.Thread(target=lambda: result.update(client.get("/v1/audit/verify",
                                                                        params={"full": True}).json()))
    verifier.start()
    try:
        assert inside.wait(20), "verification did not start"
        writer = threading.Thread(target=_append, args=(seeded, 1, "writer"))
        writer.start()
        writer.join(5)
        assert not writer.is_alive(), "a writer waited for the audit verification"
    finally:
        release.set()
        verifier.join(30)
    assert result["ok"] is True


def _tamper(settings, how: str, keep: int) -> None:
    """What a database administrator can do: drop the append-only triggers, then truncate
    (and hide the checkpoints), or rewrite one event and re-hash every event after it."""
    con = sqlite3.connect(settings.database_url[len("sqlite:///"):])
    for t in ("audit_events_no_update", "audit_events_no_delete", "audit_checkpoints_no_delete"):
        con.execute(f"DROP TRIGGER {t}")
    con.execute("DELETE FROM audit_checkpoints")
    if how == "truncate":
        con.execute("DELETE FROM audit_events WHERE seq > ?", (keep,))
    else:
        rows = con.execute("SELECT seq, ts, actor, action, subject_ref, payload, prev_hash FROM audit_events "
                           "WHERE seq >= ? ORDER BY seq", (keep,)).fetchall()
        prev = rows[0][6]
        for seq, ts, actor, action, subject_ref, payload, _ in rows:
            if seq == keep:
                actor = "mallory"
            h = audit.compute_hash(prev, seq, ts, actor, action, subject_ref, payload)
            con.execute("UPDATE audit_events SET actor = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                        (actor, "tmp-" + str(seq), "tmp-h-" + str(seq), seq))  # dodge UNIQUE while moving
            con.execute("UPDATE audit_events SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, h, seq))
            prev = h
    con.commit()
    con.close()


@pytest.mark.parametrize("how", ["truncate", "rewrite"])
def test_signed_checkpoints_detect_truncation_and_rewrite(how, live_server, seeded, tmp_path, capsys):
    from app.cli import main

    _append(seeded, 25)
    cp = checkpoints.create(seeded, force=True)
    assert cp is not None and cp["certificate"]["type"] == "lethe.audit_checkpoint"
    seq = cp["certificate"]["seq"]
    assert checkpoints.create(seeded, force=True) is None  # nothing new: no second checkpoint
    import httpx

    h = {"Authorization": f"Bearer {make_key(seeded, ['audit:read'], name='auditor')}"}
    listed = httpx.get(f"{live_server}/v1/audit/checkpoints", headers=h).json()["checkpoints"]
    assert listed == [cp]
    export = httpx.get(f"{live_server}/v1/audit/export", headers=h).text.splitlines()
    assert json.loads(export[seq]) == {"checkpoint": cp}  # right after the event it pins
    assert audit.verify_lines(export)["ok"]
    with open(seeded.audit_checkpoint_file) as f:  # the copy outside the database
        assert [json.loads(line) for line in f] == [cp]
    saved = tmp_path / "saved-checkpoint.json"
    saved.write_text(json.dumps(listed[0]))
    assert main(["audit", "verify", "--url", live_server, "--checkpoint", str(saved)]) == 0
    assert "OK against 1 signed checkpoint" in capsys.readouterr().out

    _tamper(seeded, how, keep=20)
    with session_scope(seeded.database_url) as db:
        assert audit.verify(db)["ok"] is True  # the chain alone cannot tell (the finding)
    code = main(["audit", "verify", "--url", live_server, "--checkpoint", str(saved)])
    out = capsys.readouterr().out
    assert code == 1 and ("truncated" if how == "truncate" else "rewritten") in out, out
    server = httpx.get(f"{live_server}/v1/audit/verify", params={"full": True}, headers=h).json()
    assert server["ok"] is False and ("truncated" if how == "truncate" else "rewritten") in server["reason"], server
    # a forged checkpoint (signed by another key) is refused by the CLI
    forged = dict(listed[0], signature={**listed[0]["signature"], "value": "A" * 86 + "=="})
    saved.write_text(json.dumps(forged))
    assert main(["audit", "verify", "--url", live_server, "--checkpoint", str(saved)]) == 1
