"""Predict serves whatever `production` points to now, reloading when the alias moves."""
import numpy as np
import torch

from app.catalogue import service as catalogue
from app.db import session_scope
from app.registry import service as registry

from .conftest import MODEL, save_net


def test_predict_by_ids_and_inputs_agree(client, seeded):
    a = client.post(f"/v1/models/{MODEL}/predict", json={"instance_ids": ["toy-00000", "toy-00001"]})
    assert a.status_code == 200, a.text
    body = a.json()
    assert body["version"] == 1 and len(body["predictions"]) == 2
    with session_scope(seeded.database_url) as db:
        x = catalogue.load_arrays([catalogue.by_ids(db, MODEL, ["toy-00000"])["toy-00000"]])[0][0]
    b = client.post(f"/v1/models/{MODEL}/predict", json={"inputs": [x.tolist()]}).json()
    flat = client.post(f"/v1/models/{MODEL}/predict", json={"inputs": [x.reshape(-1).tolist()]}).json()
    assert b["predictions"][0]["label"] == flat["predictions"][0]["label"] == body["predictions"][0]["label"]
    assert abs(b["predictions"][0]["confidence"] - body["predictions"][0]["confidence"]) < 1e-6


def test_predict_can_return_the_probability_vector(client, seeded):
    from models.checkpoint import load_checkpoint

    plain = client.post(f"/v1/models/{MODEL}/predict", json={"instance_ids": ["toy-00003"]}).json()
    assert plain["predictions"][0]["probabilities"] is None
    r = client.post(f"/v1/models/{MODEL}/predict", json={"instance_ids": ["toy-00003"], "probabilities": True})
    assert r.status_code == 200, r.text
    p = r.json()["predictions"][0]
    assert len(p["probabilities"]) == 10 and abs(sum(p["probabilities"]) - 1) < 1e-5
    assert max(p["probabilities"]) == p["confidence"] and p["probabilities"].index(p["confidence"]) == p["label"]
    with session_scope(seeded.database_url) as db:  # the served network's own softmax
        v = registry.get_version(db, MODEL, 1)
        x = catalogue.load_arrays([catalogue.by_ids(db, MODEL, ["toy-00003"])["toy-00003"]])[0]
    net = load_checkpoint(registry.absolute_path(registry.weights(seeded), v.storage_path))[0].eval()
    with torch.no_grad():
        want = torch.softmax(net(torch.from_numpy(x)), 1)[0].numpy()
    assert np.allclose(p["probabilities"], want, atol=1e-6)


def test_predict_bad_input(client):
    url = f"/v1/models/{MODEL}/predict"
    cases = [
        ({}, 422, "exactly one"),
        ({"instance_ids": ["toy-00000"], "inputs": [[0.0] * 64]}, 422, "exactly one"),
        ({"inputs": []}, 422, "empty"),
        ({"inputs": [[0.0] * 63]}, 422, "shape [1, 8, 8]"),
        ({"inputs": [[0.0] * 64, [0.0] * 3]}, 422, "ragged"),
        ({"inputs": [["a"] * 64]}, 422, "finite number"),
        ({"inputs": [[True] * 64]}, 422, "finite number"),
        ({"instance_ids": ["ghost"]}, 422, "ghost"),
        ({"inputs": "zeros"}, 422, "inputs"),
    ]
    for body, status, msg in cases:
        r = client.post(url, json=body)
        assert r.status_code == status and msg in r.json()["detail"], (body, r.text)
    assert client.post("/v1/models/nope/predict", json={"inputs": [[0.0] * 64]}).status_code == 404


def test_alias_move_is_served_without_restart(client, seeded):
    x = torch.rand(5, 1, 8, 8).tolist()
    before = client.post(f"/v1/models/{MODEL}/predict", json={"inputs": x}).json()
    sha, rel = save_net(seeded, seed=7)
    with session_scope(seeded.database_url) as db:
        registry.add_version(db, model_name=MODEL, sha256=sha, storage_path=rel, parent_version=1, job_id=None,
                             metrics=None)
        registry.move_alias(db, model_name=MODEL, alias="production", to_version=2, actor="test")
    after = client.post(f"/v1/models/{MODEL}/predict", json={"inputs": x}).json()
    assert (before["version"], after["version"]) == (1, 2) and after["sha256"] == sha
    assert [p["confidence"] for p in before["predictions"]] != [p["confidence"] for p in after["predictions"]]
    versions = client.get(f"/v1/models/{MODEL}/versions").json()
    assert versions["aliases"] == {"production": 2}
    assert [(m["from_version"], m["to_version"]) for m in versions["alias_moves"]] == [(None, 1), (1, 2)]
    assert client.get("/v1/models").json()[0]["latest_version"] == 2


def test_corrupted_weights_are_refused(client, seeded):
    with session_scope(seeded.database_url) as db:
        v1 = registry.get_version(db, MODEL, 1)
    path = registry.absolute_path(registry.weights(seeded), v1.storage_path)
    with open(path, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    r = client.post(f"/v1/models/{MODEL}/predict", json={"inputs": [[0.0] * 64]})
    assert r.status_code == 500 and "sha256" in r.json()["detail"]


def test_predict_by_id_answers_alike_for_erased_and_never_catalogued(client, seeded):
    """No oracle: an erased instance and one that never existed get the same status, code and
    message shape, so a forget:read key cannot learn that someone was in the data."""
    import datetime as dt

    from app.catalogue.models import TrainingInstance

    with session_scope(seeded.database_url) as db:
        row = db.query(TrainingInstance).filter_by(model_name=MODEL, instance_id="toy-00004").one()
        row.erased_at = dt.datetime.now(dt.timezone.utc)
    url = f"/v1/models/{MODEL}/predict"
    erased = client.post(url, json={"instance_ids": ["toy-00004"]})
    never = client.post(url, json={"instance_ids": ["toy-09999"]})
    assert erased.status_code == never.status_code == 422, (erased.text, never.text)
    a, b = erased.json(), never.json()
    assert a["code"] == b["code"] == "unknown_instances"
    assert a["detail"].replace("toy-00004", "ID") == b["detail"].replace("toy-09999", "ID")
