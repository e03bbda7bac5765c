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


def _tamper(settings, how: str, keep: int, *, hide_checkpoints: bool = True) -> None:
    """What a database administrator can do: drop the append-only triggers, then truncate
    (and hide the checkpoints), rewrite one event and re-hash every event after it, or
    ``edit`` one event and leave its hash."""
    con = sqlite3.connect(settings.database_url[len("sqlite:///"):])
    for t in ("audit_events_no_update", "audit_events_no_delete", "audit_checkpoints_no_delete"):
        con.execute(f"DROP TRIGGER {t}")
    if hide_checkpoints:
        con.execute("DELETE FROM audit_checkpoints" if how != "truncate" else
                    f"DELETE FROM audit_checkpoints WHERE seq > {int(keep)}")
    if how == "truncate":
        con.execute("DELETE FROM audit_events WHERE seq > ?", (keep,))
    elif how == "edit":
        con.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = ?", (keep,))
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


@pytest.mark.parametrize("how", ["rewrite", "truncate", "edit"])
@pytest.mark.parametrize("hide", [True, False], ids=["checkpoints-hidden", "checkpoints-kept"])
def test_the_checkpointer_never_signs_a_tampered_chain(how, hide, client, seeded, caplog):
    """Finding 3 and 5: after a rewrite re-hashed with the project's own hash function, a
    truncation (with the checkpoints above it deleted) or a one-row edit, the checkpointer
    refuses to sign — however many new events follow — with a log line of its own and the
    ``lethe_audit_anchor_ok`` alert, and verification (which checks every checkpoint, of the
    database and of the file) says broken, before and after new checkpoints were due."""
    _append(seeded, 25)
    first = checkpoints.create(seeded, force=True)["certificate"]["seq"]
    _append(seeded, 10)
    assert checkpoints.create(seeded, force=True)["certificate"]["seq"] == first + 10
    _append(seeded, 4)
    # below both checkpoints, or (truncation) between them: the newer one's event is gone
    _tamper(seeded, how, keep=first - 5 if how != "truncate" else first + 5, hide_checkpoints=hide)

    def broken() -> None:
        res = client.get("/v1/audit/verify", params={"full": True}).json()
        assert res["ok"] is False, res
        if how != "edit":  # an edit leaves every pinned hash: the chain's own check finds it
            n, problem = checkpoints.check_server_side(seeded)
            assert problem is not None and n >= 1

    broken()
    for _ in range(3):  # new requests keep coming: still nothing is signed over the tampered chain
        _append(seeded, 22)
        caplog.clear()
        signed = checkpoints.create(seeded, force=True)
        broken()
        if how == "edit":
            # behind this process's verified-up-to mark, an edited row (its hash left as it was)
            # is found by every full verification; a checkpoint over the new events pins
            # nothing about it, so signing them launders nothing
            continue
        assert signed is None
        assert "AUDIT CHAIN REFUSED" in caplog.text
        assert checkpoints.Anchor.ok is False
    if how != "edit":
        metrics = client.get("/metrics").text
        assert "lethe_audit_anchor_ok 0.0" in metrics, metrics[-2000:]


def test_a_missing_checkpoint_file_is_an_error_not_a_skip(client, seeded):
    _append(seeded, 3)
    assert checkpoints.create(seeded, force=True) is not None
    assert checkpoints.check_server_side(seeded) == (1, None)  # the database's and the file's copy: one checkpoint
    import os

    os.remove(seeded.audit_checkpoint_file)
    n, problem = checkpoints.check_server_side(seeded)
    assert problem is not None and "missing" in problem
    assert client.get("/v1/audit/verify").json()["ok"] is False
    _append(seeded, 3)
    assert checkpoints.create(seeded, force=True) is None
