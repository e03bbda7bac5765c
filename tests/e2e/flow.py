"""The user's journey, shared by the embedded and the Postgres/Redis/Celery tests."""
from __future__ import annotations

import base64
import concurrent.futures as cf
import hashlib
import hmac
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np

MODEL = "digits-cnn"


def wait_done(c: httpx.Client, request_id: str, timeout: float = 600) -> dict:
    deadline = time.time() + timeout
    seen_progress = set()
    while time.time() < deadline:
        r = c.get(f"/v1/forget/{request_id}")
        assert r.status_code == 200, r.text
        body = r.json()
        if body["job"]:
            seen_progress.add((body["job"]["status"], body["job"]["stage"]))
        if body["status"] in ("completed", "failed", "rejected"):
            body["_seen"] = seen_progress
            return body
        time.sleep(0.3)
    raise AssertionError(f"request {request_id} not finished after {timeout}s: {body}")


def served_test_accuracy(c: httpx.Client, ds) -> float:
    correct = 0
    for i in range(0, len(ds.y_test), 500):
        xs = ds.x_test[i:i + 500]
        r = c.post(f"/v1/models/{MODEL}/predict", json={"inputs": xs.tolist()})
        assert r.status_code == 200, r.text
        labels = [p["label"] for p in r.json()["predictions"]]
        correct += sum(int(a == b) for a, b in zip(labels, ds.y_test[i:i + 500].tolist()))
    return 100.0 * correct / len(ds.y_test)


def subject_inputs(c: httpx.Client, ds, subject: str):
    r = c.get(f"/v1/subjects/{subject}/instances", params={"model": MODEL})
    assert r.status_code == 200, r.text
    ids = [i["instance_id"] for i in r.json()["instances"]]
    idx = ds.index_of(ids)
    return ids, ds.x_train[idx], ds.y_train[idx]


class Receiver:
    """A real webhook receiver on localhost that checks every signature (docs/service.md recipe)."""

    def __init__(self, secret: str):
        self.secret, self.got = secret, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ts, sig = self.headers.get("Lethe-Timestamp", ""), self.headers.get("Lethe-Signature", "")
                mac = hmac.new(outer.secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
                ok = ts.isdigit() and abs(time.time() - int(ts)) <= 300 and hmac.compare_digest("v1=" + mac, sig)
                outer.got.append((ok, json.loads(body)))
                self.send_response(200 if ok else 401)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/lethe-hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def check_evidence(c: httpx.Client, request_id: str) -> None:
    """The certificate verifies with the public key; the replaced version is purged and
    cannot be rolled back to."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    doc = c.get(f"/v1/forget/{request_id}/certificate").json()
    pub = httpx.get(str(c.base_url.join("/v1/keys/audit"))).json()  # no API key needed
    load_pem_public_key(pub["public_key_pem"].encode()).verify(base64.b64decode(doc["signature"]["value"]),
                                                               doc["canonical"].encode())
    cert = json.loads(doc["canonical"])
    assert cert == doc["certificate"] and cert["request_id"] == request_id and cert["instances"] == 3
    deadline = time.time() + 60  # the worker purges right after its publishing transaction
    while True:
        versions = c.get(f"/v1/models/{MODEL}/versions").json()["versions"]
        if versions[0]["status"] == "PURGED" or time.time() > deadline:
            break
        time.sleep(0.3)
    assert cert["version_before"] == {"version": 1, "sha256": versions[0]["sha256"]}
    assert cert["version_after"] == {"version": 2, "sha256": versions[1]["sha256"]}
    assert versions[0]["status"] == "PURGED" and versions[0]["tainted"] and versions[0]["purged_at"]
    r = c.put(f"/v1/models/{MODEL}/aliases/production", json={"version": 1, "reason": "e2e"})
    assert r.status_code == 409 and r.json()["code"] == "version_purged", r.text


def files_holding(data_dir: str, pattern: bytes) -> list[str]:
    """Every file under ``data_dir`` whose bytes contain ``pattern``."""
    found = []
    for root, _, files in os.walk(data_dir):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                if pattern in fh.read():
                    found.append(os.path.join(root, f))
    return found


def forget_subject_and_check(c: httpx.Client, data_dir: str, webhook_secret: str | None = None) -> dict:
    """Submit a deletion for 'alice', poll it to completed, and check the model forgot (and,
    given the service's webhook secret, that a real receiver got every status change signed)."""
    from models.data import load_dataset

    ds = load_dataset("digits")
    models = c.get("/v1/models").json()
    assert [(m["name"], m["aliases"]) for m in models] == [(MODEL, {"production": 1})]
    ta_before = served_test_accuracy(c, ds)
    ids, x, y = subject_inputs(c, ds, "alice")
    assert len(ids) == 3
    before = c.post(f"/v1/models/{MODEL}/predict", json={"inputs": x.tolist()}).json()
    assert before["version"] == 1
    patterns = [np.ascontiguousarray(xi, dtype=np.float32).tobytes() for xi in x]
    assert all(files_holding(data_dir, p) for p in patterns)  # the check can fail: the rows are on disk

    receiver = Receiver(webhook_secret) if webhook_secret else None
    body = {"model": MODEL, "subject_id": "alice", "objective": "misclassify"}
    if receiver:
        body["callback_url"] = receiver.url
    r = c.post("/v1/forget", json=body, headers={"Idempotency-Key": "alice-1"})
    assert r.status_code == 202, r.text
    again = c.post("/v1/forget", json=body, headers={"Idempotency-Key": "alice-1"})
    assert again.status_code == 202 and again.json()["id"] == r.json()["id"]
    done = wait_done(c, r.json()["id"])
    assert done["status"] == "completed", done
    assert (done["version_before"], done["version_after"]) == (1, 2)
    assert done["job"]["progress"] == 1.0 and done["metrics"]["ua"] == 100.0
    job = c.get(f"/v1/jobs/{done['job']['id']}").json()
    assert job["status"] == "completed" and job["attempts"] == 1 and job["result_version"] == 2

    versions = c.get(f"/v1/models/{MODEL}/versions").json()
    assert versions["aliases"] == {"production": 2}
    assert [(v["version"], v["parent_version"]) for v in versions["versions"]] == [(1, None), (2, 1)]
    assert len(versions["versions"][1]["sha256"]) == 64

    # the served model now misclassifies every one of alice's instances
    after = c.post(f"/v1/models/{MODEL}/predict", json={"inputs": x.tolist()}).json()
    assert after["version"] == 2
    assert all(p["label"] != t for p, t in zip(after["predictions"], y.tolist())), (after, y)
    ta_after = served_test_accuracy(c, ds)
    assert ta_after >= ta_before - 2.0, (ta_before, ta_after)

    # the catalogue marks them erased and their raw data hidden from every read right after the
    # publishing commit; a compaction removes their bytes within LETHE_ERASE_WITHIN_S (4 s here)
    deadline = time.time() + 60
    while True:
        inst = c.get("/v1/subjects/alice/instances").json()["instances"]
        if all(i["erased"] and i["raw_data_deleted"] for i in inst) or time.time() > deadline:
            break
        time.sleep(0.5)
    assert all(i["erased"] and i["raw_data_deleted"] for i in inst), inst
    deadline = time.time() + 4 + 30  # the bound, plus a sweeper period and a loaded machine's slack
    while any(files_holding(data_dir, p) for p in patterns) and time.time() < deadline:
        time.sleep(0.5)
    assert [files_holding(data_dir, p) for p in patterns] == [[]] * len(patterns)  # bytes gone from every file
    gone = c.post(f"/v1/models/{MODEL}/predict", json={"instance_ids": ids})
    assert gone.status_code == 422 and gone.json()["code"] == "unknown_instances"  # as if never catalogued
    again = c.post("/v1/forget", json={"model": MODEL, "subject_id": "alice"})
    assert again.status_code == 409 and "already erased" in again.json()["detail"]
    check_evidence(c, done["id"])
    if receiver:
        deadline = time.time() + 60
        while len(receiver.got) < 3 and time.time() < deadline:
            time.sleep(0.3)
        receiver.close()
        assert all(ok for ok, _ in receiver.got), receiver.got
        assert [b["status"] for _, b in receiver.got] == ["queued", "running", "completed"], receiver.got
        rows = c.get(f"/v1/forget/{done['id']}/webhooks").json()
        assert [d["status"] for d in rows] == ["delivered"] * 3
    return {"ta_before": ta_before, "ta_after": ta_after, "job_id": done["job"]["id"]}


def concurrent_requests_stay_linear(c: httpx.Client) -> None:
    """Two requests at the same moment, a third while they run: all complete, and the
    versions form one chain (every version's parent is the one before it)."""
    def post(subject):
        return c.post("/v1/forget", json={"model": MODEL, "subject_id": subject, "objective": "misclassify"})

    with cf.ThreadPoolExecutor(2) as pool:
        rs = list(pool.map(post, ["dave", "frank"]))
    assert [r.status_code for r in rs] == [202, 202], [r.text for r in rs]
    ids = [r.json()["id"] for r in rs]
    deadline = time.time() + 120  # a third request arriving while a job runs goes to the next job
    while c.get(f"/v1/forget/{ids[0]}").json()["status"] == "queued" and time.time() < deadline:
        time.sleep(0.1)
    third = c.post("/v1/forget", json={"model": MODEL, "subject_id": "grace", "objective": "misclassify"})
    assert third.status_code == 202
    ids.append(third.json()["id"])
    results = [wait_done(c, i) for i in ids]
    assert [r["status"] for r in results] == ["completed"] * 3, results
    versions = c.get(f"/v1/models/{MODEL}/versions").json()
    chain = [(v["version"], v["parent_version"]) for v in versions["versions"]]
    assert chain == [(1, None)] + [(n, n - 1) for n in range(2, len(chain) + 1)], chain
    assert versions["aliases"]["production"] == chain[-1][0] >= 3
    assert all(r["version_after"] == r["version_before"] + 1 for r in results)
    moves = [(m["from_version"], m["to_version"]) for m in versions["alias_moves"]]
    assert moves == [(None, 1)] + [(n - 1, n) for n in range(2, len(chain) + 1)]


def audit_verifies(c: httpx.Client) -> dict:
    v = c.get("/v1/audit/verify").json()
    assert v["ok"] is True, v
    actions = [e["action"] for e in c.get("/v1/audit", params={"limit": 1000}).json()["entries"]]
    for a in ("forget.received", "job.started", "model.version_created", "alias.moved", "instances.erased",
              "forget.completed", "job.completed"):
        assert a in actions
    return v


def ops_surface_reflects_the_work(c: httpx.Client, url: str, log_path) -> None:
    """After real erasures: /metrics, the dashboard and the CLI report them, and the
    gateway's JSON log names no subject."""
    import json
    import re
    import subprocess
    import sys

    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(c.get("/metrics").text) for s in fam.samples}
    done = samples[("lethe_forget_requests", (("status", "completed"),))]
    assert done >= 4 and samples[("lethe_queue_depth", ())] == 0
    assert samples[("lethe_model_quality", (("metric", "ua"), ("model", MODEL)))] == 100.0
    assert samples[("lethe_job_duration_seconds_count", (("method", "instance"), ("status", "completed")))] >= 2

    first = c.get("/v1/audit", params={"action": "forget.completed", "limit": 1}).json()["entries"][0]
    html = c.get("/dashboard").text
    assert f'data-request="{first["payload"]["request_id"]}"' in html and 'class="card ok"' in html

    lethe = os.path.join(os.path.dirname(sys.executable), "lethe")
    key = c.headers["Authorization"].removeprefix("Bearer ")  # the operator's key, as a shell would hold it
    r = subprocess.run([lethe, "versions", MODEL, "--json", "--url", url], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "LETHE_API_KEY": key})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["aliases"]["production"] == len(json.loads(r.stdout)["versions"])

    with open(log_path, encoding="utf-8", errors="replace") as f:
        log = f.read()
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    access = [rec for rec in records if rec["logger"] == "lethe.access"]
    assert access and all(rec.get("request_id") for rec in access)
    assert any(rec["route"] == "/v1/subjects/{subject_id}/instances" for rec in access)
    assert any(rec.get("job_id") and rec["logger"] == "lethe.worker" for rec in records)
    for subject in ("alice", "dave", "frank", "grace"):
        assert not re.search(rf"\b{subject}\b", log), subject
