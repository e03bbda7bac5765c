"""The `lethe` CLI against a live gateway (uvicorn in a thread; jobs moved through the real
claim / heartbeat / publish services, no training)."""
from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app.audit.service import canonical_json
from app.cli import main
from app.db import session_scope
from app.jobs import service as jobs

from .conftest import MODEL, publish, submit_and_claim


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_forget_submits_and_replays(live_server, capsys):
    args = ["forget", "--url", live_server, "--model", MODEL, "--subject", "alice", "--idempotency-key", "k-1"]
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    first = json.loads(out)
    assert first["status"] == "queued" and first["job_id"]
    code, out, _ = run(capsys, *args, "--json")
    assert code == 0 and json.loads(out)["id"] == first["id"]
    code, out, _ = run(capsys, "forget", "--url", live_server, "--model", MODEL, "--instance", "toy-00005",
                       "--instance", "toy-00006")
    assert code == 0 and out.startswith("request ") and "accepted: status queued" in out
    code, out, err = run(capsys, "status", "--url", live_server, first["id"])
    assert code == 0 and f"{first['id']}: queued ({MODEL}, 3 instances" in out


def test_api_errors_are_clear(live_server, capsys):
    code, _, err = run(capsys, "forget", "--url", live_server, "--model", "nope", "--subject", "alice")
    assert code == 3 and "HTTP 404 unknown_model: model 'nope' is not registered" in err
    code, _, err = run(capsys, "forget", "--url", live_server, "--model", MODEL)
    assert code == 2 and "give --subject and/or --instance" in err
    code, _, err = run(capsys, "versions", "--url", "http://127.0.0.1:9", "x")
    assert code == 3 and "cannot reach Lethe at http://127.0.0.1:9" in err


def _finish_later(settings, subject, *, fail=False):
    rid, job_id, token, ids = submit_and_claim(settings, subject)

    def work():
        for f in (0.2, 0.5, 0.8):
            time.sleep(0.3)
            with session_scope(settings.database_url) as db:
                jobs.heartbeat(db, job_id, token, stage="unlearning", fraction=f)
        time.sleep(0.3)
        if fail:
            with session_scope(settings.database_url) as db:
                jobs.fail(db, job_id=job_id, token=token, worker="test-worker", error="VerificationFailed: test",
                          retryable=False)
        else:
            publish(settings, job_id, token, ids, metrics={"ua": 100.0, "ta": 90.0})

    t = threading.Thread(target=work)
    t.start()
    return rid, t


def test_watch_shows_progress_until_completed(live_server, seeded, capsys):
    rid, t = _finish_later(seeded, "alice")
    code, out, err = run(capsys, "watch", "--url", live_server, rid, "--interval", "0.1", "--json")
    t.join()
    assert code == 0, err
    body = json.loads(out)
    assert body["status"] == "completed" and (body["version_before"], body["version_after"]) == (1, 2)
    bars = err.strip().splitlines()
    assert bars[0].startswith("[") and "running" in bars[0]
    assert any("50.0%" in b and "unlearning" in b for b in bars), bars
    assert bars[-1] == "[" + "#" * 30 + "] 100.0%  completed · completed"
    code, out, _ = run(capsys, "watch", "--url", live_server, rid, "--quiet")
    assert code == 0 and out.strip() == f"request {rid} completed: {MODEL} v1 -> v2, UA 100.0 %"


def test_watch_failed_and_timeout(live_server, seeded, capsys):
    rid, t = _finish_later(seeded, "bob", fail=True)
    code, out, err = run(capsys, "watch", "--url", live_server, rid, "--interval", "0.1", "--quiet")
    t.join()
    assert code == 1 and "failed: VerificationFailed: test" in out
    rid2, _, _, _ = submit_and_claim(seeded, "alice")
    code, _, err = run(capsys, "watch", "--url", live_server, rid2, "--interval", "0.1", "--timeout", "0.5", "--quiet")
    assert code == 4 and "still running after 0.5s" in err


def test_forget_with_watch(live_server, seeded, capsys):
    code, out, err = run(capsys, "forget", "--url", live_server, "--model", MODEL, "--subject", "alice", "--watch",
                         "--timeout", "0.3", "--interval", "0.1")
    assert code == 4 and "accepted, due" in err  # nothing runs the job here: it stays queued


def test_versions_and_commands_of_the_governance_api(live_server, capsys):
    code, out, _ = run(capsys, "versions", "--url", live_server, MODEL)
    assert code == 0
    lines = out.splitlines()
    assert lines[1].split() == ["v1", "-", lines[1].split()[2], "-", "-", "production"]
    assert lines[-1] == "alias moves: production: (new) -> v1"
    code, out, _ = run(capsys, "versions", "--url", live_server, MODEL, "--json")
    assert json.loads(out)["aliases"] == {"production": 1}
    # endpoints that come with the access-control/governance work: a clear message, exit 3
    for argv, what in ((["rollback", MODEL, "1"], f"PUT /v1/models/{MODEL}/aliases/production"),
                       (["list", "--status", "queued"], "GET /v1/forget"),
                       (["certificate", "get", "some-id"], "GET /v1/forget/some-id/certificate")):
        code, _, err = run(capsys, *argv, "--url", live_server)
        assert code == 3 and f"this server does not provide {what} (it comes with the governance API" in err, err


def test_audit_verify(live_server, seeded, capsys):
    code, out, _ = run(capsys, "audit", "verify", "--url", live_server)
    assert code == 0 and out.startswith("audit chain OK: 1 entries, head ")
    con = sqlite3.connect(seeded.database_url[len("sqlite:///"):])
    con.execute("DROP TRIGGER audit_events_no_update")
    con.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 1")
    con.commit()
    con.close()
    code, out, _ = run(capsys, "audit", "verify", "--url", live_server, "--json")
    assert code == 1 and json.loads(out)["first_bad_seq"] == 1


@pytest.fixture
def signer(tmp_path):
    key = Ed25519PrivateKey.generate()
    pub = key.public_key()
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    files = {"pem": pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
             "b64": base64.b64encode(raw).decode(), "hex": raw.hex()}
    paths = {}
    for k, v in files.items():
        paths[k] = tmp_path / f"audit.{k}"
        paths[k].write_text(v + "\n")
    return key, paths


CLAIMS = {"request_id": "r-1", "model": MODEL, "version_before": 1, "version_after": 2,
          "instances": 3, "completed_at": "2026-01-01T00:00:00+00:00", "metrics": {"ua": 100.0}}


def test_certificate_verify_locally(live_server, tmp_path, signer, capsys):
    key, keyfiles = signer
    flat = dict(CLAIMS, alg="Ed25519", signature=base64.b64encode(key.sign(canonical_json(CLAIMS).encode())).decode())
    payload_text = canonical_json(CLAIMS)
    wrapped = {"payload": payload_text, "signature": key.sign(payload_text.encode()).hex(), "key_id": "k1"}
    for name, doc in (("flat", flat), ("wrapped", wrapped)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(doc, indent=2))
        for kind, keyfile in keyfiles.items():
            code, out, err = run(capsys, "certificate", "verify", str(path), "--public-key", str(keyfile))
            assert code == 0 and out.startswith("certificate VALID: Ed25519 signature verified"), (name, kind, err)

    tampered = dict(flat, version_after=3)
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(tampered))
    code, out, _ = run(capsys, "certificate", "verify", str(path), "--public-key", str(keyfiles["pem"]), "--json")
    assert code == 1 and json.loads(out)["valid"] is False and "does not match" in json.loads(out)["reason"]

    other = Ed25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.Raw,
                                                                   serialization.PublicFormat.Raw)
    (tmp_path / "other.b64").write_text(base64.b64encode(other).decode())
    good = tmp_path / "flat.json"
    code, out, _ = run(capsys, "certificate", "verify", str(good), "--public-key", str(tmp_path / "other.b64"))
    assert code == 1 and out.startswith("certificate INVALID")
    (tmp_path / "rsa.txt").write_text("not a key")
    code, _, err = run(capsys, "certificate", "verify", str(good), "--public-key", str(tmp_path / "rsa.txt"))
    assert code == 2 and "not an Ed25519 public key" in err
    # without --public-key the key comes from the API, which this server does not have yet
    code, _, err = run(capsys, "certificate", "verify", str(good), "--url", live_server)
    assert code == 3 and "GET /v1/keys/audit" in err


def test_console_script_uses_lethe_url_from_the_environment(live_server):
    exe = os.path.join(os.path.dirname(sys.executable), "lethe")
    assert os.path.exists(exe), "console script not installed: run make venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    env["LETHE_URL"] = live_server
    r = subprocess.run([exe, "versions", MODEL, "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model"] == MODEL


def test_key_from_api_answers_and_bearer_header(signer):
    from app.client import Api, CliError, key_fingerprint, public_key_from_response

    key, files = signer
    pem, b64 = files["pem"].read_text().strip(), files["b64"].read_text().strip()
    want = key_fingerprint(key.public_key())
    for answer in (pem, {"public_key": b64}, {"public_key_pem": pem, "key_id": "k1"},
                   {"keys": [{"key_id": "old", "public_key": base64.b64encode(b"x" * 32).decode()},
                             {"key_id": "k1", "public_key": b64}]}):
        assert key_fingerprint(public_key_from_response(answer, "k1")) == want, answer
    with pytest.raises(CliError, match="no audit key with key_id 'k9'"):
        public_key_from_response({"keys": [{"key_id": "k1", "public_key": b64}]}, "k9")
    api = Api("http://example.invalid/", "lk_abc")
    assert api.url == "http://example.invalid" and api.http.headers["authorization"] == "Bearer lk_abc"
    assert "authorization" not in Api("http://example.invalid").http.headers


def test_non_json_answers_come_back_as_text(live_server):
    from app.client import Api

    api = Api(live_server)
    assert isinstance(api.request("GET", "/healthz"), dict)
    assert api.request("GET", "/metrics").startswith("# HELP")  # as a PEM key from /v1/keys/audit would
