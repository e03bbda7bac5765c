"""Deletion certificates (Ed25519) verified the way a third party would, and the audit
export recomputed offline."""
import base64
import json
import os
import stat

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from fastapi.testclient import TestClient

from app.audit import service as audit
from app.audit import signing
from app.db import session_scope
from app.jobs import service as jobs
from app.main import create_app
from models.unlearn import DEFAULT_OBJECTIVE

from .conftest import MODEL, save_net


def _completed_request(client, settings):
    r = client.post("/v1/forget", json={"model": MODEL, "subject_id": "alice", "external_id": "DSR-1"}).json()
    with session_scope(settings.database_url) as db:
        c = jobs.claim(db, r["job_id"], worker="w1", lease_s=settings.job_lease_s)
    sha, rel = save_net(settings, seed=2)
    metrics = {"ua": 100.0, "ra": 98.5, "ta": 96.25, "ta_drop": 0.5, "mia_efficacy": 51.0, "method": "lethe"}
    with session_scope(settings.database_url) as db:
        jobs.complete(db, job_id=r["job_id"], token=c.token, worker="w1", instance_ids=c.instance_ids, sha256=sha,
                      storage_path=rel, metrics=metrics, stats={})
    return r["id"], sha


def third_party_verifies(public_key_pem: str, doc: dict) -> bool:
    """The recipe of docs/service.md, with nothing but `cryptography`."""
    key = load_pem_public_key(public_key_pem.encode())
    try:
        key.verify(base64.b64decode(doc["signature"]["value"]), doc["canonical"].encode("utf-8"))
    except InvalidSignature:
        return False
    return json.loads(doc["canonical"]) == doc["certificate"]


def test_certificate_verifies_with_the_public_key_and_not_after_one_byte_changes(client, seeded):
    rid, sha_after = _completed_request(client, seeded)
    r = client.get(f"/v1/forget/{rid}/certificate")
    assert r.status_code == 200, r.text
    doc = r.json()
    cert = doc["certificate"]
    with session_scope(seeded.database_url) as db:
        from app.registry import service as registry

        sha_before = registry.get_version(db, MODEL, 1).sha256
    assert cert["request_id"] == rid and cert["external_id"] == "DSR-1" and cert["instances"] == 3
    assert cert["subject_ref"] and "alice" not in doc["canonical"]
    assert cert["version_before"] == {"version": 1, "sha256": sha_before}
    assert cert["version_after"] == {"version": 2, "sha256": sha_after}
    assert cert["method"] == "lethe" and cert["objective"] == DEFAULT_OBJECTIVE and cert["verification"]["ua"] == 100.0
    assert cert["completed_within_due"] is True and cert["received_at"] < cert["completed_at"] < cert["due_at"]
    completed = client.get("/v1/audit", params={"action": "forget.completed"}).json()["entries"][0]
    assert cert["audit_entry"] == {"seq": completed["seq"], "action": "forget.completed", "hash": completed["hash"]}

    pub = TestClient(client.app).get("/v1/keys/audit")  # no API key needed for the public key
    assert pub.status_code == 200
    key = pub.json()
    assert key["alg"] == "Ed25519" and key["key_id"] == doc["signature"]["key_id"]
    assert third_party_verifies(key["public_key_pem"], doc)
    assert signing.verify_certificate(doc, signing.load_public_key(key["public_key_pem"])) == (True, None)

    for i in (0, len(doc["canonical"]) // 2, len(doc["canonical"]) - 2):  # change one byte anywhere
        text = doc["canonical"]
        flipped = text[:i] + chr(ord(text[i]) ^ 1) + text[i + 1:]
        assert not third_party_verifies(key["public_key_pem"], {**doc, "canonical": flipped})
    sig = bytearray(base64.b64decode(doc["signature"]["value"]))
    sig[5] ^= 0x01
    assert not third_party_verifies(key["public_key_pem"],
                                    {**doc, "signature": {**doc["signature"], "value": base64.b64encode(sig).decode()}})
    forged = {**doc, "certificate": {**cert, "instances": 0}}  # the readable copy must match the signed text
    assert not third_party_verifies(key["public_key_pem"], forged)

    assert client.get(f"/v1/forget/{rid}/certificate").json() == doc  # deterministic
    path = signing.key_path(seeded)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_certificate_only_for_completed_requests(client):
    r = client.post("/v1/forget", json={"model": MODEL, "subject_id": "bob"}).json()
    got = client.get(f"/v1/forget/{r['id']}/certificate")
    assert got.status_code == 409 and "queued" in got.json()["detail"]
    assert client.get("/v1/forget/nope/certificate").status_code == 404


def test_offline_cli_verifies_certificate_and_export(client, seeded, tmp_path, capsys):
    """What an auditor runs with no server: `lethe certificate verify --public-key`, `lethe audit verify-export`."""
    from app.cli import main

    rid, _ = _completed_request(client, seeded)
    (tmp_path / "cert.json").write_text(client.get(f"/v1/forget/{rid}/certificate").text)
    (tmp_path / "pub.pem").write_text(client.get("/v1/keys/audit").json()["public_key_pem"])
    assert main(["certificate", "verify", str(tmp_path / "cert.json"), "--public-key", str(tmp_path / "pub.pem")]) == 0
    doc = json.loads((tmp_path / "cert.json").read_text())
    doc["canonical"] = doc["canonical"].replace('"instances":3', '"instances":4')
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    assert main(["certificate", "verify", str(tmp_path / "bad.json"), "--public-key", str(tmp_path / "pub.pem")]) == 1
    (tmp_path / "audit.jsonl").write_bytes(client.get("/v1/audit/export").content)
    assert main(["audit", "verify-export", str(tmp_path / "audit.jsonl")]) == 0


def test_audit_export_streams_json_lines_that_verify_offline(client, seeded):
    _completed_request(client, seeded)
    r = client.get("/v1/audit/export")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = r.text.splitlines()
    online = client.get("/v1/audit/verify").json()
    offline = audit.verify_lines(lines)
    assert offline == {k: online[k] for k in offline} and offline["ok"] and offline["entries"] == len(lines) >= 8
    first = json.loads(lines[0])
    assert set(first) == {"seq", "ts", "actor", "action", "subject_ref", "payload", "prev_hash", "hash"}
    # tampering with one exported line is caught at that line
    bad = list(lines)
    ev = json.loads(bad[4])
    ev["actor"] = "mallory"
    bad[4] = json.dumps(ev)
    res = audit.verify_lines(bad)
    assert res["ok"] is False and res["first_bad_seq"] == ev["seq"]
    dropped = lines[:3] + lines[4:]
    assert audit.verify_lines(dropped)["ok"] is False
    tail = client.get("/v1/audit/export", params={"after_seq": 5}).text.splitlines()
    assert json.loads(tail[0])["seq"] == 6


@pytest.mark.parametrize("path", ["/v1/audit/export", "/v1/forget/x/certificate"])
def test_evidence_needs_a_key(seeded, dispatcher, path):
    with TestClient(create_app(seeded, dispatcher=dispatcher)) as c:
        assert c.get(path).status_code == 401
