"""Issue 15 finding 7: every input bounded (422, never a 500), no traceback leaves the server,
and /readyz tells an anonymous caller only whether the service is ready."""
import io
import json
import logging

import pytest
from fastapi.testclient import TestClient

from app.main import create_app

from .conftest import MODEL, bearer, make_key, submit_and_claim

HUGE = 2**70


@pytest.mark.parametrize("method,path,kw", [
    ("GET", "/v1/audit", {"params": {"after_seq": HUGE}}),
    ("GET", "/v1/audit/export", {"params": {"after_seq": HUGE}}),
    ("GET", "/v1/audit/checkpoints", {"params": {"after_seq": HUGE}}),
    ("GET", "/v1/forget", {"params": {"offset": HUGE}}),
    ("PUT", f"/v1/models/{MODEL}/aliases/production", {"json": {"version": HUGE}}),
    ("POST", "/v1/forget", {"json": {"model": MODEL, "subject_id": "alice", "objective": "relabel",
                                     "target_label": HUGE}}),
])
def test_huge_integers_are_422(client, method, path, kw):
    r = client.request(method, path, **kw)
    assert r.status_code == 422 and r.json()["code"] == "invalid_request", (path, r.status_code, r.text)


@pytest.mark.parametrize("value", [1e300, -1e39, 10**400])
def test_predict_inputs_must_be_finite_as_float32(client, value):
    r = client.post(f"/v1/models/{MODEL}/predict", json={"inputs": [[value] * 64]})
    assert r.status_code == 422 and r.json()["code"] == "bad_input", r.text
    ok = client.post(f"/v1/models/{MODEL}/predict", json={"inputs": [[0.5] * 64]})
    assert ok.status_code == 200 and ok.json()["predictions"][0]["confidence"] is not None


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("path", ["/v1/forget", f"/v1/models/{MODEL}/predict", "/v1/forget/x/cancel"])
def test_deep_json_body_is_422_anywhere(client, path):
    body = '{"model": "m", "inputs": ' + _nested(50_000) + "}"
    r = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["code"] == "too_deep", r.text
    fine = '{"inputs": [[' + ",".join(["0.5"] * 64) + ']], "note": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}'
    assert client.post(f"/v1/models/{MODEL}/predict", content=fine,
                       headers={"Content-Type": "application/json"}).status_code == 422  # extra field, not depth
    assert "too_deep" not in client.post(f"/v1/models/{MODEL}/predict", content=fine,
                                         headers={"Content-Type": "application/json"}).text


def test_deep_manifest_is_422(client):
    files = {"weights": ("w.safetensors", io.BytesIO(b"\x00" * 16)),
             "manifest": ("m.json", io.BytesIO(('{"instances": ' + _nested(50_000) + "}").encode()))}
    r = client.post("/v1/models", data={"name": "deep", "arch": "cnn", "dataset": "digits"}, files=files)
    assert r.status_code == 422 and r.json()["code"] in ("too_deep", "bad_weights", "not_safetensors"), r.text
    from app.errors import LetheError
    from app.registry.upload import parse_manifest

    with pytest.raises(LetheError) as e:
        parse_manifest('{"instances": ' + _nested(50_000) + "}")
    assert e.value.code == "too_deep"


def test_failed_job_shows_a_reference_not_a_traceback(client, seeded, monkeypatch, caplog):
    import worker.driver as driver
    from worker import instance_wise

    def boom(*a, **kw):
        raise RuntimeError("disk full at /srv/secret/path")

    monkeypatch.setattr(instance_wise, "build", boom)
    rid = client.post("/v1/forget", json={"model": MODEL, "subject_id": "alice"}).json()["id"]
    job_id = client.get(f"/v1/forget/{rid}").json()["job"]["id"]
    with caplog.at_level(logging.ERROR, logger="lethe"):
        assert driver.execute_job(job_id, settings=seeded, worker_name="w") == "retry"
    error = client.get(f"/v1/jobs/{job_id}").json()["error"]
    assert "Traceback" not in error and 'File "' not in error and "reference " in error, error
    ref = error.split("reference ", 1)[1].split(";")[0]
    logged = [r for r in caplog.records if ref in r.getMessage()]
    assert logged and logged[0].exc_info is not None  # the traceback is in the log, under that reference


def test_readyz_tells_an_anonymous_caller_only_ready_or_not(seeded, dispatcher):
    class Down:
        def ready(self):
            return False, "redis://10.1.2.3:6379 connection refused"

        def dispatch(self, job_id):
            pass

    with TestClient(create_app(seeded, dispatcher=Down())) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json() == {"status": "not ready"}
        portal = c.get("/readyz", headers=bearer(make_key(seeded, ["forget:write"], name="portal")))
        assert portal.json() == {"status": "not ready"}
        op = c.get("/readyz", headers=bearer(make_key(seeded, ["models:admin"], name="op"))).json()
        assert op["status"] == "not ready" and "10.1.2.3" in op["checks"]["broker" if seeded.broker_url else "worker"]
    with TestClient(create_app(seeded, dispatcher=dispatcher)) as c:
        assert c.get("/readyz").json() == {"status": "ready"}
