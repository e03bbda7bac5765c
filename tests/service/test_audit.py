import sqlite3

import pytest
from sqlalchemy.exc import DatabaseError

from app.audit import service as audit
from app.db import session_scope


def _append(settings, n):
    with session_scope(settings.database_url) as db:
        for i in range(n):
            audit.append(db, actor="test", action="thing.happened", payload={"i": i, "nested": {"b": 1, "a": [1, 2]}},
                         subject_ref="ab" * 32 if i % 2 else None)


def test_chain_links_and_verifies(settings):
    _append(settings, 5)
    with session_scope(settings.database_url) as db:
        events = audit.page(db, limit=100)
        result = audit.verify(db)
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert events[0].prev_hash == "0" * 64
    assert all(b.prev_hash == a.hash for a, b in zip(events, events[1:]))
    assert result == {"ok": True, "entries": 5, "head": events[-1].hash, "first_bad_seq": None, "reason": None}


def test_update_and_delete_are_refused_by_the_database(settings):
    _append(settings, 2)
    for stmt in ("UPDATE audit_events SET actor='mallory' WHERE seq=1", "DELETE FROM audit_events WHERE seq=2"):
        with pytest.raises(DatabaseError, match="append-only"):
            with session_scope(settings.database_url) as db:
                db.connection().exec_driver_sql(stmt)


@pytest.mark.parametrize("column,value", [("payload", '{"i":99}'), ("actor", "mallory"), ("ts", "2000-01-01T00:00:00")])
def test_tampering_with_one_row_breaks_verification(settings, column, value):
    _append(settings, 4)
    path = settings.database_url[len("sqlite:///"):]
    con = sqlite3.connect(path)  # an attacker with file access drops the guard and edits a row
    con.execute("DROP TRIGGER audit_events_no_update")
    con.execute(f"UPDATE audit_events SET {column}=? WHERE seq=2", (value,))
    con.commit()
    con.close()
    with session_scope(settings.database_url) as db:
        result = audit.verify(db)
    assert result["ok"] is False and result["first_bad_seq"] == 2 and result["entries"] == 1


def test_deleting_a_row_breaks_verification(settings):
    _append(settings, 4)
    con = sqlite3.connect(settings.database_url[len("sqlite:///"):])
    con.execute("DROP TRIGGER audit_events_no_delete")
    con.execute("DELETE FROM audit_events WHERE seq=3")
    con.commit()
    con.close()
    with session_scope(settings.database_url) as db:
        result = audit.verify(db)
    assert result["ok"] is False and result["first_bad_seq"] == 4


def test_api_pages_and_verifies(client, settings):
    _append(settings, 4)  # plus the seeding events (dataset.registered, model.version_created) and key.created = 7
    page1 = client.get("/v1/audit", params={"limit": 4}).json()
    assert [e["seq"] for e in page1["entries"]] == [1, 2, 3, 4] and page1["next_after_seq"] == 4
    page2 = client.get("/v1/audit", params={"after_seq": 4, "limit": 4}).json()
    assert [e["seq"] for e in page2["entries"]] == [5, 6, 7] and page2["next_after_seq"] is None
    assert page2["entries"][0]["payload"]["nested"] == {"a": [1, 2], "b": 1}
    v = client.get("/v1/audit/verify").json()
    assert v["ok"] is True and v["entries"] == 7 and v["head"] == page2["entries"][-1]["hash"]
    assert client.get("/v1/audit", params={"limit": 0}).status_code == 422
    assert client.get("/v1/audit", params={"limit": "many"}).status_code == 422
