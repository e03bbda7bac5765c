"""Retrain orders: a model trained by the customer's own pipeline (trainer 'external').
A deletion is served approximately; the exact version comes from an order: the pipeline
polls GET /v1/retrain-orders, claims the order, reads the retained-rows snapshot, trains
with plain PyTorch and uploads; Lethe verifies and publishes it as an exact version that
consolidates the request. A pipeline that trained on the erased rows too (its declared rows hold them) is refused; an
order nobody answers is escalated before its due date."""
import datetime as dt
import hashlib
import io
import json
import os

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from safetensors.torch import save

from app.db import session_scope
from app.jobs.sweeper import sweep_and_dispatch
from app.registry import orders
from worker import driver

from .test_own_models import breast_cancer_parquet

ARCH = {"widths": [32]}


def _fit(x, y, seed=0, epochs=60, arch=ARCH):
    """The customer's own loop: plain PyTorch, full batch."""
    from models.architectures import build_model

    torch.manual_seed(seed)
    net = build_model("mlp", [x.shape[1]], 2, arch)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return {k: v.contiguous() for k, v in net.state_dict().items()}


def _table():
    t = pq.read_table(io.BytesIO(breast_cancer_parquet(subjects_per_row=20)))
    x = torch.tensor(np.stack([t.column(f"f{j:02d}").to_numpy() for j in range(30)], 1))
    y = torch.tensor([0 if v == "malignant" else 1 for v in t.column("label").to_pylist()])
    train = np.array(t.column("split").to_pylist()) == "train"
    return t.column("instance_id").to_pylist(), x, y, train


def _register(client):
    r = client.post("/v1/datasets", data={"name": "cancer", "classes": json.dumps(["malignant", "benign"])},
                    files={"file": ("cancer.parquet", breast_cancer_parquet(subjects_per_row=20),
                                    "application/octet-stream")})
    assert r.status_code == 201, r.text
    ids, x, y, train = _table()
    weights = save(_fit(x[train], y[train]))
    r = client.post("/v1/models", data={"name": "cancer-ext", "arch": "mlp", "dataset": "cancer",
                                        "arch_params": json.dumps(ARCH),
                                        "recipe": json.dumps({"trainer": "external",
                                                              "trainer_params": {"epochs": 300, "lr": 0.01}})},
                    files={"weights": ("m.safetensors", io.BytesIO(weights), "application/octet-stream"),
                           "manifest": ("m.json", io.BytesIO(b'{"all_training_rows": true}'), "application/json")})
    assert r.status_code == 201, r.text
    return ids, x, y, train


def _forget_approximately(client, settings, dispatcher):
    f = client.post("/v1/forget", json={"subject_id": "patient-0001", "model": "cancer-ext"})
    assert f.status_code == 202, f.text
    s = settings.model_copy(update={"retrain_below_s": 0})
    assert driver.execute_job(dispatcher.sent[-1], settings=s, worker_name="w1") == "completed"
    rid = f.json()["id"]
    body = client.get(f"/v1/forget/{rid}").json()
    assert body["status"] == "completed" and body["exact_version"] is None, body
    return rid


def _pipeline(client, x, y, ids, train, *, include_erased=False, declare=True, fit=None):
    """Poll, claim, read the snapshot, train, upload. Returns the upload's answer.
    ``include_erased``: trained on a stale copy holding the erased rows too, declared as
    such unless ``declare`` is False (the manifest then lists the snapshot's rows only)."""
    [order] = client.get("/v1/retrain-orders", params={"status": "open"}).json()
    claimed = client.post(f"/v1/retrain-orders/{order['id']}/claim").json()
    snap = client.get(claimed["snapshot"]["url"])
    assert hashlib.sha256(snap.content).hexdigest() == claimed["snapshot"]["sha256"]
    t = pq.read_table(io.BytesIO(snap.content))
    sx = torch.tensor(np.stack(t.column("features").to_numpy(zero_copy_only=False)))
    sy = torch.tensor(t.column("label").to_numpy())
    trained = t.column("instance_id").to_pylist()
    if include_erased:  # the team's stale copy of the data: the erased rows are still in it
        have = set(trained)
        extra = [i for i, iid in enumerate(ids) if train[i] and iid not in have]
        sx, sy = torch.cat([sx, x[extra]]), torch.cat([sy, y[extra]])
        if declare:
            trained += [ids[i] for i in extra]
    raw = save((fit or _fit)(sx, sy, seed=1))
    return client.put(f"/v1/retrain-orders/{order['id']}/weights",
                      headers={"X-Order-Token": claimed["upload_token"],
                               "X-Content-SHA256": hashlib.sha256(raw).hexdigest()},
                      files={"weights": ("w.safetensors", io.BytesIO(raw), "application/octet-stream"),
                             "manifest": ("m.json", io.BytesIO(json.dumps({"instance_ids": trained}).encode()),
                                          "application/json")})


def test_pipeline_retrains_and_the_deletion_becomes_exact(client, seeded, dispatcher):
    ids, x, y, train = _register(client)
    r = client.post("/v1/models/cancer-ext2/train", json={"dataset": "cancer", "arch": "mlp",
                                                          "recipe": {"trainer": "external"}})
    assert (r.status_code, r.json()["code"]) == (422, "external_trainer"), r.text
    rid = _forget_approximately(client, seeded, dispatcher)
    assert client.post("/v1/models/cancer-ext/consolidate").json()["code"] == "external_trainer"
    r = client.post("/v1/models/cancer-ext/retrain-orders")
    assert r.status_code == 202, r.text
    order = r.json()
    assert order["status"] == "open" and order["erased_rows"] > 5 and order["snapshot"]["uri"].startswith("file://")
    assert order["recipe"]["trainer_params"] == {"epochs": 300, "lr": 0.01}
    snap = pq.read_table(io.BytesIO(client.get(order["snapshot"]["url"]).content))
    kept = set(snap.column("instance_id").to_pylist())
    assert len(kept) == order["snapshot"]["rows"] and not kept & {f"bc-{i:04d}" for i in range(20, 40)}
    # a pipeline that trained on the erased rows too: refused, the order stays open
    bad = _pipeline(client, x, y, ids, train, include_erased=True)
    assert (bad.status_code, bad.json()["code"]) == (422, "order_refused"), bad.text
    assert "erased row(s) (bc-002" in bad.json()["detail"], bad.text
    # the honest pipeline: verified and published exact
    good = _pipeline(client, x, y, ids, train)
    assert good.status_code == 200, good.text
    done = good.json()
    assert done["status"] == "fulfilled" and done["version"] == 3 and len(done["refusals"]) == 1
    # a fulfilled order keeps no copy of the training rows: its snapshot is gone
    assert not os.path.exists(order["snapshot"]["uri"].removeprefix("file://"))
    gone = client.get(order["snapshot"]["url"])
    assert (gone.status_code, gone.json()["code"]) == (410, "snapshot_gone")
    assert done["snapshot"]["uri"] is None
    body = client.get(f"/v1/forget/{rid}").json()
    assert body["exact_version"] == 3 and body["retrain_order"] is None, body
    v3 = client.get("/v1/models/cancer-ext/versions/3").json()
    assert v3["exact"] is True and v3["job"]["method"] == "external" and v3["metrics"]["order_id"] == order["id"]
    # this MLP does not tell its training rows from held-out ones: the erased rows' score cannot decide
    assert v3["metrics"]["forget_membership"]["verdict"] == "inconclusive", v3["metrics"]["forget_membership"]
    cert = client.get(f"/v1/forget/{rid}/certificate").json()["certificate"]
    assert cert["exact_version"]["version"] == 3
    actions = [e["action"] for e in client.get("/v1/audit", params={"limit": 200}).json()["entries"]]
    assert {"retrain_order.issued", "retrain_order.claimed", "retrain_order.refused",
            "retrain_order.fulfilled", "model.consolidated"} <= set(actions)


def test_an_unanswered_order_is_escalated_before_its_due_date(client, seeded, dispatcher):
    _register(client)
    rid = _forget_approximately(client, seeded, dispatcher)
    order = client.post("/v1/models/cancer-ext/retrain-orders").json()
    waits = client.get(f"/v1/forget/{rid}").json()["retrain_order"]
    assert (waits["id"], waits["status"], waits["escalated"]) == (order["id"], "open", False), waits
    due = dt.datetime.fromisoformat(order["due_at"])
    with session_scope(seeded.database_url) as db:
        assert orders.escalate_due(db, seeded, now=due - dt.timedelta(seconds=seeded.order_escalate_before_s + 60)) == []
    s = seeded.model_copy(update={"order_escalate_before_s": (due - dt.datetime.now(dt.timezone.utc)).total_seconds()
                                  + 3600})
    sweep_and_dispatch(s, dispatcher)  # the sweeper escalates it (well before the due date)
    got = client.get(f"/v1/retrain-orders/{order['id']}").json()
    assert got["escalated"] is True and got["status"] == "open" and dt.datetime.now(dt.timezone.utc) < due
    assert client.get(f"/v1/forget/{rid}").json()["retrain_order"]["escalated"] is True  # the request shows it
    ev = client.get("/v1/audit", params={"action": "retrain_order.escalated"}).json()["entries"]
    assert ev and ev[0]["payload"]["order_id"] == order["id"]
    assert 'lethe_retrain_orders{escalated="true",status="open"} 1.0' in client.get("/metrics").text
    got = [e["event"] for e in client.get("/v1/events", params={"model": "cancer-ext"}).json()]
    assert {"retrain_order.issued", "retrain_order.escalated"} <= set(got), got


NOISY = {"widths": [128]}


def _noisy_parquet(n=600, d=20):
    """Labels a linear rule flips for 20 % of the rows: a wide MLP memorises its training rows,
    so whether it was trained on a row shows in its confidence on it."""
    import pyarrow as pa

    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype("float32")
    y = ((x @ rng.normal(size=d)) > 0).astype(int)
    flip = rng.random(n) < 0.2
    y[flip] = 1 - y[flip]
    split = np.where(rng.random(n) < 0.25, "test", "train")
    ids = [f"nz-{i:04d}" for i in range(n)]
    cols = {"instance_id": ids, "label": [["a", "b"][t] for t in y],
            "subject_id": [f"patient-{i // 20:04d}" for i in range(n)], "split": split}
    cols.update({f"f{j:02d}": x[:, j] for j in range(d)})
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf)
    return buf.getvalue(), ids, torch.tensor(x), torch.tensor(y), split == "train"


def _fit_noisy(x, y, seed=0):
    return _fit(x, y, seed=seed, epochs=300, arch=NOISY)


def test_an_upload_trained_on_the_erased_rows_is_refused_by_measurement(client, seeded, dispatcher):
    """The pipeline trains on its stale copy (the erased rows too) but declares the snapshot's
    rows only: the erased rows, sealed by the approximate job before they left the store,
    score like training rows and the upload is refused; the honest upload is scored on the
    same rows, accepted, and the sealed copy is shredded at once."""
    from app.registry import probes
    from app.registry.models import SealedProbe

    seeded.max_test_accuracy_drop = seeded.order_max_ta_drop = 15.0  # noisy labels: accuracy moves between seeds
    raw, ids, x, y, train = _noisy_parquet()
    r = client.post("/v1/datasets", data={"name": "noisy", "classes": json.dumps(["a", "b"])},
                    files={"file": ("noisy.parquet", raw, "application/octet-stream")})
    assert r.status_code == 201, r.text
    r = client.post("/v1/models", data={"name": "noisy-ext", "arch": "mlp", "dataset": "noisy",
                                        "arch_params": json.dumps(NOISY),
                                        "recipe": json.dumps({"trainer": "external", "trainer_params": {}})},
                    files={"weights": ("m.safetensors", io.BytesIO(save(_fit_noisy(x[train], y[train]))),
                                       "application/octet-stream"),
                           "manifest": ("m.json", io.BytesIO(b'{"all_training_rows": true}'), "application/json")})
    assert r.status_code == 201, r.text
    f = client.post("/v1/forget", json={"subject_id": "patient-0001", "model": "noisy-ext"})
    assert f.status_code == 202, f.text
    s = seeded.model_copy(update={"retrain_below_s": 0})
    assert driver.execute_job(dispatcher.sent[-1], settings=s, worker_name="w1") == "completed"
    rid = f.json()["id"]
    with session_scope(seeded.database_url) as db:  # sealed in the publishing transaction, until the due date
        [p] = db.query(SealedProbe).all()
        assert p.rows == int(train[20:40].sum()) and p.key_hex
        assert probes.shred_due(db, seeded) == []
    cert = client.get(f"/v1/forget/{rid}/certificate").json()["certificate"]
    assert cert["sealed_rows"]["shredded_at"] is None and cert["sealed_rows"]["rows"] == p.rows
    order = client.post("/v1/models/noisy-ext/retrain-orders").json()
    bad = _pipeline(client, x, y, ids, train, include_erased=True, declare=False, fit=_fit_noisy)
    assert (bad.status_code, bad.json()["code"]) == (422, "order_refused"), bad.text
    assert "the erased rows look trained on" in bad.json()["detail"], bad.text
    check = client.get(f"/v1/retrain-orders/{order['id']}").json()["refusals"][-1]["metrics"]
    assert check["verdict"] == "trained_on" and check["rows"] == p.rows and check["p_value"] < 0.01, check
    good = _pipeline(client, x, y, ids, train, fit=_fit_noisy)
    assert good.status_code == 200, good.text
    v = good.json()["version"]
    card = client.get(f"/v1/models/noisy-ext/versions/{v}").json()
    check = card["metrics"]["forget_membership"]
    assert check["verdict"] == "not_detected" and check["rows"] == p.rows and check["members_p_value"] < 0.01, check
    assert check["auc"] < check["members_auc"]
    with session_scope(seeded.database_url) as db:
        p = db.get(SealedProbe, p.id)
        assert p.key_hex is None and p.shredded_at is not None and p.scored_by == [order["id"]]
        assert not os.path.exists(os.path.join(seeded.registry_dir, p.path))
    cert = client.get(f"/v1/forget/{rid}/certificate").json()["certificate"]
    assert cert["exact_version"]["version"] == v
    assert cert["sealed_rows"]["shredded_at"] and cert["sealed_rows"]["scored_by_orders"] == [order["id"]]
    actions = [e["action"] for e in client.get("/v1/audit", params={"limit": 200}).json()["entries"]]
    assert {"probe.sealed", "probe.shredded"} <= set(actions)


def test_an_order_whose_production_moved_on_is_replaced_and_its_snapshot_removed(client, seeded, dispatcher):
    """An open order's snapshot holds the rows retained when it was issued. Another subject
    forgotten meanwhile moves production on: the next issue (an operator's or the sweeper's)
    cancels the stale order, removes its snapshot (the second subject's rows with it) and
    issues a new one on the new production version without them."""
    _register(client)
    _forget_approximately(client, seeded, dispatcher)
    first = client.post("/v1/models/cancer-ext/retrain-orders").json()
    path = first["snapshot"]["uri"].removeprefix("file://")
    held = set(pq.read_table(path).column("instance_id").to_pylist())
    f = client.post("/v1/forget", json={"subject_id": "patient-0002", "model": "cancer-ext"})
    assert f.status_code == 202, f.text
    s = seeded.model_copy(update={"retrain_below_s": 0})
    assert driver.execute_job(dispatcher.sent[-1], settings=s, worker_name="w1") == "completed"
    erased = set(client.get(f"/v1/forget/{f.json()['id']}").json()["instance_ids"])
    assert erased and erased <= held  # the stale snapshot holds the second subject's rows
    second = client.post("/v1/models/cancer-ext/retrain-orders").json()
    assert second["id"] != first["id"] and second["base_version"] == first["base_version"] + 1
    old = client.get(f"/v1/retrain-orders/{first['id']}").json()
    assert old["status"] == "cancelled" and not os.path.exists(path)
    kept = set(pq.read_table(second["snapshot"]["uri"].removeprefix("file://")).column("instance_id").to_pylist())
    assert not kept & erased
    [ev] = [e for e in client.get("/v1/audit", params={"action": "retrain_order.cancelled"}).json()["entries"]]
    assert "snapshot is stale" in ev["payload"]["reason"]
