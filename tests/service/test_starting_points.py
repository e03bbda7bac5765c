"""Pretrained starting points: a model's recipe names registered weights; its training
starts from them (digest pinned at registration), the card names them with their dataset,
and bad starting points are 422s naming the problem."""
import hashlib
import io
import json

import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file

from app.db import session_scope
from app.registry import service as registry
from worker import driver

from .test_own_models import _train, breast_cancer_parquet


def _weights(settings, model, version):
    with session_scope(settings.database_url) as db:
        v = registry.get_version(db, model, version)
        return load_file(registry.absolute_path(registry.weights(settings), v.storage_path)), v.sha256


def _base(client, seeded, dispatcher):
    r = client.post("/v1/datasets", data={"name": "cancer", "classes": json.dumps(["malignant", "benign"])},
                    files={"file": ("cancer.parquet", breast_cancer_parquet(), "application/octet-stream")})
    assert r.status_code == 201, r.text
    r = client.post("/v1/models/cancer-base/train", json={"dataset": "cancer", "arch": "mlp",
                                                          "arch_params": {"widths": [32]}, "recipe": {"epochs": 4}})
    assert r.status_code == 202, r.text
    assert _train(client, seeded, dispatcher, "cancer-base")["status"] == "completed"


def test_training_starts_from_the_named_weights_and_the_card_says_so(client, seeded, dispatcher):
    _base(client, seeded, dispatcher)
    base, sha = _weights(seeded, "cancer-base", 1)
    # fine-tuning with a tiny step: the result stays at the starting weights
    r = client.post("/v1/models/cancer-ft/train", json={
        "dataset": "cancer", "arch": "mlp", "arch_params": {"widths": [32]},
        "recipe": {"epochs": 1, "lr": 1e-7, "start": {"model": "cancer-base", "version": 1}}})
    assert r.status_code == 202, r.text
    assert _train(client, seeded, dispatcher, "cancer-ft")["status"] == "completed"
    ft, _ = _weights(seeded, "cancer-ft", 1)
    assert all(torch.allclose(ft[k], base[k], atol=1e-4) for k in base)
    m = client.get("/v1/models/cancer-ft").json()
    assert m["recipe"]["start"] == {"model": "cancer-base", "version": 1, "sha256": sha}
    card = client.get("/v1/models/cancer-ft/versions/1").json()
    assert card["starting_point"] == {"model": "cancer-base", "version": 1, "sha256": sha, "dataset": "cancer",
                                      "status": "READY", "tainted": False}
    assert client.get("/v1/models/cancer-base/versions/1").json()["starting_point"] is None
    # a deletion retrained exactly starts from the same weights, and its certificate says which
    f = client.post("/v1/forget", json={"subject_id": "patient-0003", "model": "cancer-ft", "method": "retrain"})
    assert f.status_code == 202, f.text
    assert driver.execute_job(dispatcher.sent[-1], settings=seeded, worker_name="w1") == "completed"
    assert client.get(f"/v1/forget/{f.json()['id']}").json()["version_after"] == 2
    v2, _ = _weights(seeded, "cancer-ft", 2)
    assert all(torch.allclose(v2[k], base[k], atol=1e-4) for k in base)
    cert = client.get(f"/v1/forget/{f.json()['id']}/certificate").json()["certificate"]
    assert cert["starting_point"] == {"model": "cancer-base", "version": 1, "sha256": sha}
    # without a starting point the same recipe trains from a random initialisation
    r = client.post("/v1/models/cancer-rand/train", json={"dataset": "cancer", "arch": "mlp",
                                                          "arch_params": {"widths": [32]},
                                                          "recipe": {"epochs": 1, "lr": 1e-7}})
    assert r.status_code == 202 and _train(client, seeded, dispatcher, "cancer-rand")["status"] == "completed"
    rand, _ = _weights(seeded, "cancer-rand", 1)
    assert not all(torch.allclose(rand[k], base[k], atol=1e-4) for k in base)


def test_bad_starting_points_are_refused_with_what_is_wrong(client, seeded, dispatcher):
    _base(client, seeded, dispatcher)
    cases = [({"model": "nope", "version": 1}, "model 'nope' is not registered"),
             ({"model": "cancer-base", "version": 9}, "has no version 9"),
             ({"model": "cancer-base", "version": 1, "sha256": "0" * 64}, "has sha256"),
             ({"model": "toy-cnn", "version": 1}, "cannot start this network")]
    for start, needle in cases:
        r = client.post("/v1/models/cancer-x/train", json={"dataset": "cancer", "arch": "mlp",
                                                           "arch_params": {"widths": [32]},
                                                           "recipe": {"start": start}})
        assert (r.status_code, r.json()["code"]) == (422, "bad_start"), r.text
        assert needle in r.json()["detail"], r.text
    r = client.post("/v1/models/cancer-x/train", json={"dataset": "cancer", "arch": "mlp",
                                                       "recipe": {"start": {"model": "cancer-base", "version": 0,
                                                                            "layer": 1}}})
    assert (r.status_code, r.json()["code"]) == (422, "bad_recipe") and "recipe.start.version" in r.json()["detail"]
    assert [m["name"] for m in client.get("/v1/models").json()] == ["cancer-base", "toy-cnn"]


def _clinic_b_parquet() -> bytes:
    """The same table as another clinic's: other patients (no subject of 'cancer' in it)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(io.BytesIO(breast_cancer_parquet()))
    t = t.set_column(t.schema.get_field_index("subject_id"), "subject_id",
                     pa.array([s.replace("patient-", "clinic-b-") for s in t.column("subject_id").to_pylist()]))
    buf = io.BytesIO()
    pq.write_table(t, buf)
    return buf.getvalue()


def test_a_starting_point_that_forgets_restarts_the_models_fine_tuned_from_it(client, seeded, dispatcher):
    """cancer-ft is fine-tuned from cancer-base v1 on another clinic's data: it holds none of
    patient-0003's rows, only their influence through the starting weights. When cancer-base
    forgets patient-0003, the sweeper re-pins cancer-ft to the new cancer-base version and
    records a request for the same subject on an exact retrain that starts from it; its
    certificate names the starting point's request. An external model fine-tuned from the
    same weights gets a retrain order carrying the new starting point."""
    from safetensors.torch import save

    from app.jobs.sweeper import sweep_and_dispatch

    _base(client, seeded, dispatcher)
    r = client.post("/v1/datasets", data={"name": "clinic-b", "classes": json.dumps(["malignant", "benign"])},
                    files={"file": ("b.parquet", _clinic_b_parquet(), "application/octet-stream")})
    assert r.status_code == 201, r.text
    start = {"model": "cancer-base", "version": 1}
    r = client.post("/v1/models/cancer-ft/train", json={"dataset": "clinic-b", "arch": "mlp",
                                                        "arch_params": {"widths": [32]},
                                                        "recipe": {"epochs": 2, "start": start}})
    assert r.status_code == 202 and _train(client, seeded, dispatcher, "cancer-ft")["status"] == "completed"
    base, _ = _weights(seeded, "cancer-base", 1)
    r = client.post("/v1/models", data={"name": "cancer-ext", "arch": "mlp", "dataset": "clinic-b",
                                        "arch_params": json.dumps({"widths": [32]}),
                                        "recipe": json.dumps({"trainer": "external", "start": start})},
                    files={"weights": ("m.safetensors", save(base), "application/octet-stream"),
                           "manifest": ("m.json", b'{"all_training_rows": true}', "application/json")})
    assert r.status_code == 201, r.text
    sweep_and_dispatch(seeded, dispatcher)
    assert client.get("/v1/retrain-orders").json() == []  # nothing erased yet: nothing to restart
    assert client.get("/v1/subjects/patient-0003/instances", params={"model": "cancer-ft"}).status_code == 404
    stale = client.post("/v1/models/cancer-ext/retrain-orders").json()  # an operator's, from cancer-base v1
    assert stale["recipe"]["start"]["version"] == 1
    f = client.post("/v1/forget", json={"subject_id": "patient-0003", "model": "cancer-base", "method": "retrain"})
    assert f.status_code == 202, f.text
    assert driver.execute_job(dispatcher.sent[-1], settings=seeded, worker_name="w1") == "completed"
    assert client.get("/v1/models/cancer-ft/versions/1").json()["starting_point"]["tainted"] is True
    sent = len(dispatcher.sent)
    sweep_and_dispatch(seeded, dispatcher)
    [job_id] = dispatcher.sent[sent:]
    _, sha2 = _weights(seeded, "cancer-base", 2)
    assert client.get("/v1/models/cancer-ft").json()["recipe"]["start"] == {"model": "cancer-base", "version": 2,
                                                                            "sha256": sha2}
    [order] = client.get("/v1/retrain-orders", params={"model": "cancer-ext", "status": "open"}).json()
    assert order["recipe"]["start"]["version"] == 2 and "starting point cancer-base v1" in order["reason"]
    assert client.get(f"/v1/retrain-orders/{stale['id']}").json()["status"] == "cancelled"  # its start moved
    sweep_and_dispatch(seeded, dispatcher)  # once: the restart is pending
    assert dispatcher.sent[sent:] == [job_id] and len(client.get("/v1/retrain-orders").json()) == 2
    assert driver.execute_job(job_id, settings=seeded, worker_name="w1") == "completed"
    [req] = [r for r in client.get("/v1/forget", params={"model": "cancer-ft"}).json()["items"]]
    assert req["status"] == "completed" and req["version_after"] == 2 and req["exact_version"] == 2, req
    assert client.get("/v1/models/cancer-ft/versions/2").json()["starting_point"]["tainted"] is False
    cert = client.get(f"/v1/forget/{req['id']}/certificate").json()["certificate"]
    origin = client.get(f"/v1/forget/{f.json()['id']}/certificate").json()["certificate"]
    assert cert["subject_ref"] == origin["subject_ref"] and cert["instances"] == 0
    assert cert["lineage"]["follows_requests"] == [f.json()["id"]]
    assert cert["lineage"]["starting_point"]["from_version"] == 1 and cert["lineage"]["starting_point"]["to_version"] == 2
    assert cert["starting_point"] == {"model": "cancer-base", "version": 2, "sha256": sha2}
    [ev] = client.get("/v1/audit", params={"action": "lineage.restarted"}).json()["entries"][:1]
    assert ev["payload"]["model"] in ("cancer-ext", "cancer-ft")
    sent = len(dispatcher.sent)
    sweep_and_dispatch(seeded, dispatcher)  # restarted from a clean version: nothing more
    assert dispatcher.sent[sent:] == []
    # the external pipeline answers its order (fine-tuned again from cancer-base v2): the upload
    # completes cancer-ext's request following the starting model's, exact
    assert order["follows"]["follows_requests"] == [f.json()["id"]]
    claimed = client.post(f"/v1/retrain-orders/{order['id']}/claim").json()
    ids = pq.read_table(io.BytesIO(client.get(claimed["snapshot"]["url"]).content)).column("instance_id").to_pylist()
    raw = save(_weights(seeded, "cancer-base", 2)[0])
    up = client.put(f"/v1/retrain-orders/{order['id']}/weights",
                    headers={"X-Order-Token": claimed["upload_token"], "X-Content-SHA256": hashlib.sha256(raw).hexdigest()},
                    files={"weights": ("w.safetensors", raw, "application/octet-stream"),
                           "manifest": ("m.json", json.dumps({"instance_ids": ids}).encode(), "application/json")})
    assert up.status_code == 200, up.text
    [req] = client.get("/v1/forget", params={"model": "cancer-ext"}).json()["items"]
    assert req["status"] == "completed" and req["exact_version"] == up.json()["version"] == 2, req
    cert = client.get(f"/v1/forget/{req['id']}/certificate").json()["certificate"]
    assert cert["lineage"]["follows_requests"] == [f.json()["id"]] and cert["subject_ref"] == origin["subject_ref"]
    assert cert["method"] == "external" and cert["starting_point"]["version"] == 2
