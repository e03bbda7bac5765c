"""No raw subject identifier is stored, and nothing of an erased subject's rows is left: a
subject is forgotten (no model named, an Idempotency-Key that names them), then every file
under the state directories (the SQLite database with its WAL included) and, on Postgres, a
pg_dump of the whole database are searched for the subject id and for the bytes of each of
their rows, training and held-out."""
import os
import subprocess

import numpy as np
import pyarrow as pa
from fastapi.testclient import TestClient

from app.datasets import service as datasets
from app.datasets.formats import Spec
from app.main import create_app

from .conftest import CLASSES, SHAPE, RecordingDispatcher, bearer, make_key
from .test_subject_rows import _model, _run, world  # noqa: F401 (the fixture: SQLite and Postgres)

WHO = "pat-7Qx9w"  # spelled nowhere else
DS, M = "ward", "ward-cnn"


def _ward(settings) -> dict[str, bytes]:
    """Dataset ward: WHO owns training rows w-0..w-2 (the model trained on w-0, w-1) and held-out
    rows wt-0, wt-1. Returns each of WHO's rows' feature bytes (float32, as stored)."""
    subjects = [WHO, WHO, WHO, "other-1", "other-2", "other-3"] + [WHO, WHO, "other-4", None]
    splits = ["train"] * 6 + ["test"] * 4
    ids = [f"w-{i}" for i in range(6)] + [f"wt-{i}" for i in range(4)]
    feats = np.random.default_rng(7).random((len(ids), int(np.prod(SHAPE))), dtype=np.float32)
    table = pa.table({"instance_id": ids, "label": [i % 10 for i in range(len(ids))], "subject_id": subjects,
                      "split": splits,
                      "features": pa.FixedSizeListArray.from_arrays(pa.array(feats.ravel()), feats.shape[1])})
    datasets.register(settings, DS, datasets.TableSource(table), Spec(kind="tensor", shape=list(SHAPE),
                      classes=CLASSES), source_desc="test", actor="test")
    _model(settings, M, DS, ["w-0", "w-1", "w-3"], seed_=9)
    return {i: feats[k].tobytes() for k, i in enumerate(ids) if subjects[k] == WHO}


def _state_files(settings) -> list[str]:
    roots = {os.path.dirname(settings.database_url.removeprefix("sqlite:///"))
             if settings.database_url.startswith("sqlite") else settings.data_dir,
             settings.data_dir, settings.registry_dir}
    return [os.path.join(d, f) for r in roots for d, _, fs in os.walk(r) for f in fs]


def _dump(settings) -> bytes:
    if settings.database_url.startswith("sqlite"):
        return b""
    url = settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    return subprocess.run(["pg_dump", "--data-only", url], check=True, capture_output=True, timeout=120).stdout


def _found(settings, needles: dict[str, bytes]) -> list[str]:
    hits = []
    for path in _state_files(settings):
        with open(path, "rb") as f:
            data = f.read()
        hits += [f"{name} in {os.path.relpath(path, settings.data_dir)}" for name, n in needles.items() if n in data]
    dump = _dump(settings)
    hits += [f"{name} in pg_dump" for name, n in needles.items() if n in dump]
    return hits


def test_an_erased_subject_leaves_no_identifier_and_no_byte_of_their_rows(world, caplog):  # noqa: F811
    rows = _ward(world)
    needles = {"subject id": WHO.encode(), **{f"row {i}": b[64:128] for i, b in rows.items()}}
    with TestClient(create_app(world, dispatcher=RecordingDispatcher()),
                    headers=bearer(make_key(world, name="all"))) as c, caplog.at_level("DEBUG"):
        # the rows are on disk before (uncompressed pages): the search can see them
        assert {h.split(" in ")[0] for h in _found(world, needles)} == {f"row {i}" for i in rows}
        assert c.get(f"/v1/subjects/{WHO}/instances").status_code == 200
        r = c.post("/v1/forget", json={"subject_id": WHO, "external_id": "DSR-2026-0415"},
                   headers={"Idempotency-Key": f"erase-{WHO}"})
        assert r.status_code == 202, r.text
        again = c.post("/v1/forget", json={"subject_id": WHO, "external_id": "DSR-2026-0415"},
                       headers={"Idempotency-Key": f"erase-{WHO}"})  # the keyed reference still finds it
        assert again.status_code == 202 and again.json()["id"] == r.json()["id"]
        other = c.post("/v1/forget", json={"subject_id": WHO}, headers={"Idempotency-Key": f"erase-{WHO}"})
        assert other.status_code == 409 and WHO not in other.text
        refused = c.post("/v1/forget", json={"subject_id": WHO, "model": M, "external_id": f"ticket-{WHO}"})
        assert refused.status_code == 422 and "external_id" in refused.text and WHO not in refused.text
        member = r.json()["requests"][0]
        assert member["model"] == M
        _run(world, member["job_id"], M, 21)
        datasets.compact_due(world, force=True)  # the sweeper's compaction, within LETHE_ERASE_WITHIN_S
        assert c.get(f"/v1/erasures/{r.json()['id']}").json()["status"] == "completed"
        gone = c.get(f"/v1/subjects/{WHO}/instances")
        assert WHO not in gone.text
        assert c.get("/v1/audit/verify").json()["ok"] is True
    assert _found(world, needles) == []
    # the service's own log lines (httpx's are this test client's, which sent the id)
    service_log = [r.getMessage() for r in caplog.records if not r.name.startswith("httpx")]
    assert service_log and not [m for m in service_log if WHO in m]


def test_idempotency_keys_stored_before_are_rekeyed(tmp_path):
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import select, update

    from app.cli import migrate
    from app.db import ROOT, session_scope
    from app.forget import service
    from app.forget.models import ForgetRequest
    from app.forget.schemas import ForgetCreate

    from .conftest import MODEL, make_settings, seed

    s = make_settings(tmp_path)
    migrate(s)
    seed(s)
    with session_scope(s.database_url) as db:
        req, _, _ = service.submit(db, s, ForgetCreate(model=MODEL, subject_id="alice"), idempotency_key="k-alice",
                                   actor="t")
        rid = req.id
    stored = service.stored_idempotency_key(s, "default", "k-alice")
    assert stored.startswith("hmac:") and "alice" not in stored
    cfg = Config(f"{ROOT}/alembic.ini")
    cfg.set_main_option("script_location", f"{ROOT}/migrations")
    cfg.attributes.update(url=s.database_url, data_dir=s.data_dir, subject_secret=s.subject_secret)
    command.downgrade(cfg, "0016")
    with session_scope(s.database_url) as db:  # as a request recorded before keys were keyed
        db.execute(update(ForgetRequest).where(ForgetRequest.id == rid).values(idempotency_key="k-alice"))
    migrate(s)
    with session_scope(s.database_url) as db:
        assert db.execute(select(ForgetRequest.idempotency_key).where(ForgetRequest.id == rid)).scalar() == stored
        again, _, replayed = service.submit(db, s, ForgetCreate(model=MODEL, subject_id="alice"),
                                            idempotency_key="k-alice", actor="t")
    assert replayed and again.id == rid
