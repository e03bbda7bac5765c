"""A subject erased with no model named loses every row, in every dataset and split: training
rows through the models that hold them, held-out rows and rows no model trained on straight
from the store; each using model's evaluation set shrinks (recorded); the certificate lists
per dataset and split what was erased. On SQLite and on Postgres."""
import uuid

import numpy as np
import pyarrow as pa
import pytest
import torch
from fastapi.testclient import TestClient

from app.catalogue import service as catalogue
from app.catalogue import subjects
from app.catalogue.models import TrainingInstance
from app.cli import migrate
from app.datasets import service as datasets
from app.datasets.formats import Spec
from app.security.pseudonyms import subject_ref
from app.db import session_scope
from app.jobs import service as jobs
from app.main import create_app
from app.registry import service as registry

from conftest import PG, require_service  # tests/conftest.py

from .conftest import CLASSES, MODEL, SHAPE, RecordingDispatcher, bearer, make_key, make_settings, seed

PEOPLE, PM = "people", "people-cnn"
# training rows: alice 0-2 (the model trained on 0 and 1 only), bob 3-4, dave none; held-out: alice 0-1, bob 2, dave 3
TRAIN = ["alice", "alice", "alice", "bob", "bob", "carol"]
TEST = ["alice", "alice", "bob", "dave", None, None]


def _people(settings) -> None:
    n, m = len(TRAIN), len(TEST)
    feats = np.random.default_rng(1).random((n + m, int(np.prod(SHAPE))), dtype=np.float32)
    table = pa.table({"instance_id": [f"p-{i}" for i in range(n)] + [f"pt-{i}" for i in range(m)],
                      "label": [i % 10 for i in range(n + m)], "subject_id": TRAIN + TEST,
                      "split": ["train"] * n + ["test"] * m,
                      "features": pa.FixedSizeListArray.from_arrays(pa.array(feats.ravel()), feats.shape[1])})
    datasets.register(settings, PEOPLE, datasets.TableSource(table), Spec(kind="tensor", shape=list(SHAPE),
                      classes=CLASSES), source_desc="test", actor="test")
    _model(settings, PM, PEOPLE, ["p-0", "p-1", "p-3"])


def _model(settings, name: str, dataset: str, ids: list[str], seed_: int = 3) -> None:
    from models.checkpoint import save_checkpoint
    from models.nets import build_model

    torch.manual_seed(seed_)
    tmp = registry.weights_tmp_path(registry.weights(settings), name)
    sha = save_checkpoint(build_model("cnn", SHAPE, len(CLASSES)), tmp, arch="cnn", dataset=dataset,
                          input_shape=SHAPE, classes=CLASSES)
    rel = registry.publish_weights(registry.weights(settings), name, tmp, sha)
    rows = catalogue.rows_for_model(datasets.store_dir(settings, dataset), name, dataset, ids)
    with session_scope(settings.database_url) as db:
        registry.register_model(db, name=name, dataset=dataset, arch="cnn", input_shape=SHAPE, classes=CLASSES)
        registry.add_version(db, model_name=name, sha256=sha, storage_path=rel, parent_version=None, job_id=None,
                             metrics=None)
        registry.move_alias(db, model_name=name, alias="production", to_version=1, actor="test")
        db.bulk_insert_mappings(TrainingInstance, rows)


def _run(settings, job_id: str, model: str, seed_: int) -> None:
    """Claim the job, publish new weights through the real publishing transaction and purge
    the raw rows, as the worker's publish does."""
    from models.checkpoint import save_checkpoint
    from models.nets import build_model

    with session_scope(settings.database_url) as db:
        c = jobs.claim(db, job_id, worker="w", lease_s=60)
        assert c.outcome == "run", c.reason
        token, ids = c.token, list(c.instance_ids)
    torch.manual_seed(seed_)
    tmp = registry.weights_tmp_path(registry.weights(settings), model)
    sha = save_checkpoint(build_model("cnn", SHAPE, len(CLASSES)), tmp, arch="cnn", dataset="x", input_shape=SHAPE,
                          classes=CLASSES)
    rel = registry.publish_weights(registry.weights(settings), model, tmp, sha)
    with session_scope(settings.database_url) as db:
        jobs.complete(db, job_id=job_id, token=token, worker="w", instance_ids=ids, sha256=sha, storage_path=rel,
                      metrics={"ua": 100.0, "method": "lethe"}, stats={})
    with session_scope(settings.database_url) as db:
        catalogue.purge_erased_raw(db, model)


SQLITE_ONLY = pytest.mark.parametrize("world", ["sqlite"], indirect=True)


@pytest.fixture(params=["sqlite", "postgres"])
def world(request, tmp_path):
    """toy + toy-cnn (conftest's seed) and dataset people + people-cnn, on either backend."""
    if request.param == "sqlite":
        s = make_settings(tmp_path)
        migrate(s)
        yield seed(s)
        return
    import psycopg

    require_service("Postgres", "127.0.0.1", 5432)
    name = f"lethe_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG, autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    try:
        s = make_settings(tmp_path, database_url=f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
                          webhook_secret="a-webhook-secret-for-tests-" + uuid.uuid4().hex).model_copy(
            update={"subject_secret": "a-subject-secret-for-tests-" + uuid.uuid4().hex})
        migrate(s)
        yield seed(s)
    finally:
        with psycopg.connect(PG, autocommit=True) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def client(world):
    _people(world)
    with TestClient(create_app(world, dispatcher=RecordingDispatcher()),
                    headers=bearer(make_key(world, name="all"))) as c:
        yield c


def _left(settings, subject: str) -> dict:
    ref = subject_ref(settings.subject_secret, subject)
    with session_scope(settings.database_url) as db:
        return subjects.rows_in_stores(db, settings, ref)


def test_a_subject_erased_everywhere_loses_held_out_rows_and_rows_no_model_trained_on(client, world):
    assert _left(world, "alice") == {"toy": {"train": ["toy-00000", "toy-00001", "toy-00002"]},
                                     PEOPLE: {"test": ["pt-0", "pt-1"], "train": ["p-0", "p-1", "p-2"]}}
    people_before = client.get(f"/v1/datasets/{PEOPLE}").json()
    r = client.post("/v1/forget", json={"subject_id": "alice"})
    assert r.status_code == 202, r.text
    gid, members = r.json()["erasure_id"], {m["model"]: m for m in r.json()["requests"]}
    assert set(members) == {MODEL, PM}
    # at once: the held-out rows and p-2 (no model trained on it); what the models hold waits for their jobs
    assert _left(world, "alice") == {"toy": {"train": ["toy-00000", "toy-00001", "toy-00002"]},
                                     PEOPLE: {"train": ["p-0", "p-1"]}}
    view = client.get(f"/v1/erasures/{gid}").json()
    assert view["status"] == "queued"
    assert view["datasets"][PEOPLE] == {"rows": {"test": 2, "train": 3}, "erased_from_store": {"test": 2, "train": 1},
                                        "through_models": 2, "held_out_rows": {"before": 6, "after": 4},
                                        "evaluation_changed_for": [PM]}
    assert view["datasets"]["toy"]["rows"] == {"train": 3} and view["datasets"]["toy"]["erased_from_store"] == {}
    people = client.get(f"/v1/datasets/{PEOPLE}").json()
    assert people["rows"] == people_before["rows"] - 3 and people["erased_rows"] == 3
    assert client.get(f"/v1/erasures/{gid}/certificate").status_code == 409

    _run(world, members[MODEL]["job_id"], MODEL, 11)
    _run(world, members[PM]["job_id"], PM, 12)
    assert _left(world, "alice") == {}
    people = client.get(f"/v1/datasets/{PEOPLE}").json()
    assert people["subjects"] == people_before["subjects"] - 1  # alice no longer counted
    cert = client.get(f"/v1/erasures/{gid}/certificate").json()["certificate"]
    lines = {d["dataset"]: d for d in cert["datasets"]}
    assert lines[PEOPLE]["rows_erased"] == {"test": 2, "train": 3} and lines[PEOPLE]["rows_still_stored"] == {}
    assert lines[PEOPLE]["held_out_rows"] == {"before": 6, "after": 4}
    assert lines[PEOPLE]["evaluation_changed_for"] == [PM]
    assert lines["toy"]["rows_erased"] == {"train": 3} and lines["toy"]["rows_still_stored"] == {}
    assert {m["model"]: (m["version_before"]["version"], m["version_after"]["version"]) for m in cert["models"]} \
        == {MODEL: (1, 2), PM: (1, 2)}
    ev = client.get("/v1/audit", params={"action": "dataset.rows_erased"}).json()["entries"]
    assert sorted(e["payload"]["dataset"] for e in ev) == [PEOPLE, "toy"]
    # bob's held-out row is untouched
    assert _left(world, "bob")[PEOPLE] == {"test": ["pt-2"], "train": ["p-3", "p-4"]}


def test_a_subject_no_model_holds_is_erased_from_the_stores_alone(client, world):
    assert _left(world, "dave") == {PEOPLE: {"test": ["pt-3"]}}
    r = client.post("/v1/forget", json={"subject_id": "dave"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "completed" and body["requests"] == []
    assert _left(world, "dave") == {}
    cert = client.get(f"/v1/erasures/{body['erasure_id']}/certificate").json()["certificate"]
    assert cert["models"] == [] and cert["datasets"][0]["rows_erased"] == {"test": 1}
    assert cert["datasets"][0]["rows_still_stored"] == {}
    again = client.post("/v1/forget", json={"subject_id": "dave"})
    assert again.status_code == 404 and again.json()["code"] == "unknown_subject"


@SQLITE_ONLY  # the backend-specific paths run on both in the tests above
def test_a_crash_before_the_store_erasure_is_finished_by_the_sweep(client, world):
    from app.forget import groups
    from app.forget.schemas import ForgetCreate

    with session_scope(world.database_url) as db:  # recorded and committed, the process dies before the erasure
        group, *_ = groups.submit_all(db, world, ForgetCreate(subject_id="carol"), idempotency_key=None, actor="t")
        gid = group.id
    assert _left(world, "carol") == {PEOPLE: {"train": ["p-5"]}}
    assert subjects.erase_pending(world) == 1 and subjects.erase_pending(world) == 0
    assert _left(world, "carol") == {}
    assert client.get(f"/v1/erasures/{gid}").json()["status"] == "completed"
    # an erasure recorded before erasures reached the stores (migration 0014 left datasets empty):
    # the sweep erases the subject's rows no model holds in its models' datasets
    from app.forget.models import ErasureGroup

    with session_scope(world.database_url) as db:
        db.add(ErasureGroup(id="old-group", subject_ref=subject_ref(world.subject_secret, "bob"),
                            idempotency_key=None, fingerprint="x", models=[PM], created_by="t", datasets=None))
    assert subjects.erase_pending(world) == 1
    assert _left(world, "bob")[PEOPLE] == {"train": ["p-3"]}  # pt-2 (held-out) and p-4 (unused) gone


@SQLITE_ONLY
def test_models_that_disagree_with_their_dataset_are_reported_not_rewritten(world, caplog):
    """A catalogue written before manifests were checked: a held-out row named as a training row,
    a row with another subject. `lethe doctor` and the migration's log name the model."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import update

    from app.cli.server import doctor_report
    from app.db import ROOT

    assert doctor_report(world) == {}
    bad = catalogue.rows_for_model(datasets.store_dir(world, "toy"), MODEL, "toy", ["toy-00000"])[0]
    bad.update(instance_id="toy-test-00000")
    with session_scope(world.database_url) as db:
        db.bulk_insert_mappings(TrainingInstance, [bad])
        db.execute(update(TrainingInstance).where(TrainingInstance.instance_id == "toy-00004")
                   .values(subject_ref=subject_ref(world.subject_secret, "someone-else")))
    report = doctor_report(world)
    assert report == {MODEL: {"dataset": "toy", "held_out_rows": 1, "subject_mismatch": 1,
                              "examples": ["toy-00004", "toy-test-00000"]}}
    cfg = Config(f"{ROOT}/alembic.ini")
    cfg.set_main_option("script_location", f"{ROOT}/migrations")
    cfg.attributes.update(url=world.database_url, data_dir=world.data_dir)
    command.downgrade(cfg, "0014")
    with caplog.at_level("WARNING"):
        migrate(world)
    assert f"model {MODEL} disagrees with its dataset toy: 1 held-out row(s)" in caplog.text
    assert doctor_report(world) == report  # nothing was rewritten


@SQLITE_ONLY
def test_the_access_answer_lists_every_row_by_dataset_and_split_and_who_holds_it(client, world):
    body = client.get("/v1/subjects/alice/instances").json()
    got = {(r["dataset"], r["split"], r["instance_id"]): r["models"] for r in body["rows"]}
    assert got == {("toy", "train", "toy-00000"): [MODEL], ("toy", "train", "toy-00001"): [MODEL],
                   ("toy", "train", "toy-00002"): [MODEL],
                   (PEOPLE, "train", "p-0"): [PM], (PEOPLE, "train", "p-1"): [PM],
                   (PEOPLE, "train", "p-2"): [],  # no model trained on it
                   (PEOPLE, "test", "pt-0"): [], (PEOPLE, "test", "pt-1"): []}  # held-out
    assert {(i["model"], i["instance_id"]) for i in body["instances"]} == \
        {(MODEL, f"toy-0000{k}") for k in range(3)} | {(PM, "p-0"), (PM, "p-1")}
    one = client.get("/v1/subjects/alice/instances", params={"model": PM}).json()
    assert {r["dataset"] for r in one["rows"]} == {PEOPLE} and len(one["rows"]) == 5
    # a subject only a held-out split holds is found, not a 404
    dave = client.get("/v1/subjects/dave/instances").json()
    assert dave["instances"] == [] and [(r["split"], r["instance_id"]) for r in dave["rows"]] == [("test", "pt-3")]
    assert client.get("/v1/subjects/nobody/instances").status_code == 404


@SQLITE_ONLY
def test_lethe_doctor_says_all_agree_and_exits_0(world, monkeypatch, capsys):
    from app.cli import main, server

    monkeypatch.setattr(server, "get_settings", lambda: world)
    assert main(["doctor"]) == 0
    assert "every model's catalogue agrees with its dataset" in capsys.readouterr().out
