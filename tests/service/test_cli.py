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

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app.audit.service import canonical_json
from app.cli import main
from app.db import session_scope
from app.jobs import service as jobs

from .conftest import MODEL, complete_request, counts, make_key, publish, save_net, submit_and_claim


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse: usage errors exit 2
        code = e.code
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


def _add_version(settings, seed: int) -> int:
    """A new version without an erasure (as a retrain or a fine-tune would make); no alias moves."""
    from app.registry import service as registry

    sha, rel = save_net(settings, seed=seed)
    with session_scope(settings.database_url) as db:
        return registry.add_version(db, model_name=MODEL, sha256=sha, storage_path=rel, parent_version=1,
                                    job_id=None, metrics={"ua": 0.0, "ta": 88.0}).version


def test_versions_and_commands_of_the_governance_api(live_server, seeded, capsys):
    code, out, _ = run(capsys, "versions", "--url", live_server, MODEL)
    assert code == 0
    lines = out.splitlines()
    assert lines[1].split() == ["v1", "-", lines[1].split()[2], "-", "-", "exact", "ready", "production"]
    assert lines[-1] == "alias moves: production: (new) -> v1"
    code, out, _ = run(capsys, "versions", "--url", live_server, MODEL, "--json")
    assert json.loads(out)["aliases"] == {"production": 1}

    # rollback = PUT /v1/models/{name}/aliases/{alias} {version, reason}: moves, with the reason
    assert _add_version(seeded, seed=5) == 2
    code, out, err = run(capsys, "rollback", "--url", live_server, MODEL, "2", "--reason", "promote the fine-tune")
    assert code == 0 and out.strip() == f"{MODEL}@production -> v2", err
    code, out, err = run(capsys, "rollback", "--url", live_server, MODEL, "1", "--reason", "v2 misbehaves on 7")
    assert code == 0 and out.strip() == f"{MODEL}@production -> v1", err
    code, out, _ = run(capsys, "rollback", "--url", live_server, MODEL, "1")
    assert code == 0 and out.strip() == f"{MODEL}@production -> v1 (already there)"
    code, out, _ = run(capsys, "rollback", "--url", live_server, MODEL, "1", "--alias", "staging", "--json")
    assert code == 0 and json.loads(out)["aliases"] == {"production": 1, "staging": 1}

    # models consolidate NAME = POST /v1/models/{name}/consolidate: a consolidation job (models:admin)
    code, out, err = run(capsys, "models", "--url", live_server, "consolidate", MODEL, "--json")
    assert code == 0 and json.loads(out)["objective"] == "consolidate", err
    code, out, err = run(capsys, "models", "--url", live_server, "consolidate")
    assert code == 2 and "usage" in err
    # ... needs models:admin: a key without it is refused with the scope named (--api-key beats LETHE_API_KEY)
    reader = make_key(seeded, ["forget:read"], name="reader")
    code, _, err = run(capsys, "rollback", "--url", live_server, "--api-key", reader, MODEL, "2")
    assert code == 3 and "not authorised (HTTP 403)" in err and "lacks scope models:admin" in err, err

    # an erasure (v1 -> v3): v1 and v2 still hold alice's instances, so rolling back to them is refused
    complete_request(seeded, "alice", metrics={"ua": 100.0, "ta": 90.0})
    for version in ("1", "2"):
        code, _, err = run(capsys, "rollback", "--url", live_server, MODEL, version)
        assert code == 3 and "HTTP 409 version_tainted: refused" in err, err
    code, out, _ = run(capsys, "versions", "--url", live_server, MODEL)
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:-1]}
    assert rows["v1"][-2:] == ["tainted", "staging"] and rows["v2"][-1] == "tainted"
    assert rows["v3"][1] == "v1" and rows["v3"][-2:] == ["ready", "production"]
    code, out, _ = run(capsys, "versions", "--url", live_server, MODEL, "--json")
    assert json.loads(out)["aliases"] == {"production": 3, "staging": 1}

    # the alias history: every move, with its reason and the key that made it
    code, out, _ = run(capsys, "history", "--url", live_server, MODEL, "--alias", "production")
    moves = out.splitlines()
    assert code == 0 and len(moves) == 4, out
    assert moves[1].split("  ", 1)[1].startswith("production: v1 -> v2 (promote the fine-tune)  by key:")
    assert moves[1].endswith(":operator") and moves[0].endswith("production: (new) -> v1  by test")
    assert "production: v2 -> v1 (v2 misbehaves on 7)  by key:" in moves[2] and moves[2].endswith(":operator")
    assert "production: v1 -> v3" in moves[3]
    code, out, _ = run(capsys, "history", "--url", live_server, MODEL, "--json")
    assert [m["alias"] for m in json.loads(out)] == ["production", "production", "production", "staging", "production"]


def test_list_and_lifecycle_commands(live_server, seeded, capsys):
    done, _ = complete_request(seeded, "alice")
    rid, job_id, token, _ = submit_and_claim(seeded, "bob")
    with session_scope(seeded.database_url) as db:
        jobs.fail(db, job_id=job_id, token=token, worker="test-worker", error="VerificationFailed: test",
                  retryable=False)
    ids = {}
    for name, instance in (("to_cancel", "toy-00007"), ("to_deny", "toy-00008")):
        code, out, err = run(capsys, "forget", "--url", live_server, "--model", MODEL, "--instance", instance, "--json")
        assert code == 0, err
        ids[name] = json.loads(out)["id"]

    code, out, _ = run(capsys, "list", "--url", live_server, "--json")
    page = json.loads(out)
    assert code == 0 and page["total"] == 4 and {i["id"] for i in page["items"]} == {done, rid, *ids.values()}
    code, out, _ = run(capsys, "list", "--url", live_server, "--status", "queued")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 3 and lines[-1] == "1-2 of 2", out
    assert {line.split()[0] for line in lines[:2]} == set(ids.values()) and "d left" in lines[0]
    code, out, _ = run(capsys, "list", "--url", live_server, "--limit", "1", "--offset", "1")
    assert out.splitlines()[-1] == "2-2 of 4 (next: --offset 2)"
    code, out, _ = run(capsys, "list", "--url", live_server, "--status", "completed", "--model", "other")
    assert code == 0 and out.strip() == "no requests (0 in all match)"

    code, out, err = run(capsys, "cancel", "--url", live_server, ids["to_cancel"], "--reason", "withdrawn")
    assert code == 0 and out.strip() == f"request {ids['to_cancel']}: canceled", err
    code, _, err = run(capsys, "cancel", "--url", live_server, done)
    assert code == 3 and "HTTP 409" in err
    code, out, err = run(capsys, "deny", "--url", live_server, ids["to_deny"], "--reason-code", "duplicate",
                         "--reason", "same as ticket 41")
    assert code == 0 and out.strip() == f"request {ids['to_deny']}: denied (duplicate)", err
    code, _, err = run(capsys, "deny", "--url", live_server, ids["to_deny"], "--reason-code", "maybe", "--reason", "x")
    assert code == 2 and "invalid choice: 'maybe'" in err
    # watch ends on every final status (not only completed/failed)
    code, out, _ = run(capsys, "watch", "--url", live_server, ids["to_deny"], "--quiet", "--timeout", "5")
    assert code == 1 and out.strip() == f"request {ids['to_deny']} denied: duplicate: same as ticket 41"
    code, out, _ = run(capsys, "watch", "--url", live_server, ids["to_cancel"], "--quiet", "--timeout", "5")
    assert code == 1 and out.strip() == f"request {ids['to_cancel']} canceled: withdrawn"

    code, out, err = run(capsys, "retry", "--url", live_server, rid)
    assert code == 0 and out.strip() == f"request {rid}: queued", err
    code, out, _ = run(capsys, "list", "--url", live_server, "--status", "queued", "--json")
    assert [i["id"] for i in json.loads(out)["items"]] == [rid]
    for status, rid_ in (("canceled", ids["to_cancel"]), ("denied", ids["to_deny"]), ("completed", done)):
        code, out, _ = run(capsys, "list", "--url", live_server, "--status", status, "--json")
        assert [i["id"] for i in json.loads(out)["items"]] == [rid_], status


def test_audit_verify(live_server, seeded, capsys):
    entries = counts(seeded)["AuditEvent"]  # the seeded model, and the creation of the operator's key
    assert entries >= 2
    code, out, _ = run(capsys, "audit", "verify", "--url", live_server)
    assert code == 0 and out.startswith(f"audit chain OK: {entries} entries, head ")
    portal = make_key(seeded, ["forget:write", "forget:read"], name="portal")
    code, _, err = run(capsys, "audit", "verify", "--url", live_server, "--api-key", portal)
    assert code == 3 and "HTTP 403" in err and "lacks scope audit:read" in err
    con = sqlite3.connect(seeded.database_url[len("sqlite:///"):])
    con.execute("DROP TRIGGER audit_events_no_update")
    con.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 1")
    con.commit()
    con.close()
    code, out, _ = run(capsys, "audit", "verify", "--url", live_server, "--json")
    assert code == 1 and json.loads(out)["first_bad_seq"] == 1 and json.loads(out)["ok"] is False


def test_certificate_verify_locally(live_server, seeded, tmp_path, capsys, monkeypatch):
    """The server's certificate ({certificate, canonical, signature: {alg, key_id, value}}),
    downloaded with the CLI and checked offline with the audit key in each accepted form."""
    done, _ = complete_request(seeded, "alice", metrics={"ua": 100.0, "ta": 90.0})
    cert = tmp_path / "cert.json"
    code, out, err = run(capsys, "certificate", "get", "--url", live_server, done, "-o", str(cert))
    assert code == 0 and out.startswith(f"certificate of request {done} written to {cert}"), err
    doc = json.loads(cert.read_text())
    assert set(doc) == {"certificate", "canonical", "signature"} and doc["certificate"]["request_id"] == done
    code, out, _ = run(capsys, "certificate", "get", "--url", live_server, done)
    assert json.loads(out) == doc  # deterministic

    # the key from the API (an open route: no API key needed), then from files
    operator = os.environ["LETHE_API_KEY"]
    monkeypatch.delenv("LETHE_API_KEY")
    code, out, err = run(capsys, "certificate", "verify", str(cert), "--url", live_server)
    assert code == 0 and out.startswith(f"certificate VALID: Ed25519 signature verified with key "
                                        f"{doc['signature']['key_id']} ({live_server}/v1/keys/audit); request {done}, "
                                        f"model {MODEL} v1 -> v2"), err
    info = httpx.get(f"{live_server}/v1/keys/audit").json()
    assert info["key_id"] == doc["signature"]["key_id"]
    raw = base64.b64decode(info["public_key_raw_b64"])
    keyfiles = {"pem": info["public_key_pem"], "b64": info["public_key_raw_b64"], "hex": raw.hex()}
    for kind, text in keyfiles.items():
        (tmp_path / f"audit.{kind}").write_text(text + "\n")
        keyfile = str(tmp_path / f"audit.{kind}")
        code, out, err = run(capsys, "certificate", "verify", str(cert), "--public-key", keyfile)
        assert code == 0 and out.startswith("certificate VALID: Ed25519 signature verified"), (kind, err)

    def verdict(changed: dict, key="pem") -> tuple[int, dict]:
        path = tmp_path / "changed.json"
        path.write_text(json.dumps(changed))
        code, out, _ = run(capsys, "certificate", "verify", str(path), "--public-key", str(tmp_path / f"audit.{key}"),
                           "--json")
        return code, json.loads(out)

    # the readable copy says something else than what was signed
    forged = json.loads(cert.read_text())
    forged["certificate"]["version_after"]["version"] = 3
    code, out = verdict(forged)
    assert code == 1 and out["valid"] is False
    assert "the readable certificate differs from what was signed (fields: version_after)" in out["reason"]
    # the signed text itself changed (the readable copy along with it)
    forged["canonical"] = canonical_json(forged["certificate"])
    code, out = verdict(forged)
    assert code == 1 and "does not match the signed canonical text" in out["reason"]
    # a signature of the same text by another key
    other = Ed25519PrivateKey.generate()
    stolen = dict(doc, signature=dict(doc["signature"], value=base64.b64encode(
        other.sign(doc["canonical"].encode())).decode()))
    code, out = verdict(stolen)
    assert code == 1 and "does not match" in out["reason"]
    code, out = verdict(dict(doc, signature=dict(doc["signature"], alg="RS256")))
    assert code == 1 and "not Ed25519" in out["reason"]
    code, out = verdict({"request_id": done, "signature": doc["signature"]["value"]})
    assert code == 1 and "expected {certificate, canonical, signature}" in out["reason"]

    # checked with another key: INVALID, and the key ids say why
    (tmp_path / "other.b64").write_text(base64.b64encode(other.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode())
    code, out, _ = run(capsys, "certificate", "verify", str(cert), "--public-key", str(tmp_path / "other.b64"))
    assert code == 1 and out.startswith(f"certificate INVALID: signed with key '{doc['signature']['key_id']}'")
    (tmp_path / "rsa.txt").write_text("not a key")
    code, _, err = run(capsys, "certificate", "verify", str(cert), "--public-key", str(tmp_path / "rsa.txt"))
    assert code == 2 and "not an Ed25519 public key" in err

    # certificates exist for completed requests only
    queued = submit_and_claim(seeded, "bob")[0]
    code, _, err = run(capsys, "certificate", "get", "--url", live_server, "--api-key", operator, queued)
    assert code == 3 and "HTTP 409" in err and "completed requests only" in err, err


def test_console_script_uses_lethe_url_from_the_environment(live_server):
    """LETHE_URL and LETHE_API_KEY from the environment, as an operator's shell sets them."""
    exe = os.path.join(os.path.dirname(sys.executable), "lethe")
    assert os.path.exists(exe), "console script not installed: run make venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    env["LETHE_URL"] = live_server
    r = subprocess.run([exe, "versions", MODEL, "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 3 and "not authorised (HTTP 401)" in r.stderr and "set LETHE_API_KEY" in r.stderr, r.stderr
    env["LETHE_API_KEY"] = os.environ["LETHE_API_KEY"]  # the operator's key (live_server)
    r = subprocess.run([exe, "versions", MODEL, "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model"] == MODEL


def test_key_from_api_answers_and_bearer_header(live_server):
    from app.audit.signing import key_id
    from app.cli.certificate import public_key_from_response
    from app.client import Api, CliError

    answer = httpx.get(f"{live_server}/v1/keys/audit").json()  # the real answer
    assert key_id(public_key_from_response(answer)) == answer["key_id"]
    assert key_id(public_key_from_response(answer, answer["key_id"])) == answer["key_id"]
    only_raw = {k: v for k, v in answer.items() if k != "public_key_pem"}
    assert key_id(public_key_from_response(only_raw)) == answer["key_id"]
    with pytest.raises(CliError, match="signed with key 'k9"):
        public_key_from_response(answer, "k9")
    with pytest.raises(CliError, match="inconsistent"):
        public_key_from_response(dict(answer, key_id="0" * 16))
    with pytest.raises(CliError, match="holds no public key"):
        public_key_from_response("-----BEGIN PUBLIC KEY-----")
    api = Api("http://example.invalid/", "lk_abc")
    assert api.url == "http://example.invalid" and api.http.headers["authorization"] == "Bearer lk_abc"
    assert "authorization" not in Api("http://example.invalid").http.headers


def test_non_json_answers_come_back_as_text(live_server):
    from app.client import Api

    api = Api(live_server, os.environ["LETHE_API_KEY"])  # /metrics needs metrics:read now
    assert isinstance(api.request("GET", "/healthz"), dict)
    assert api.request("GET", "/metrics").startswith("# HELP")


def test_a_route_the_server_lacks_is_named(live_server):
    from app.client import Api, CliError

    api = Api(live_server, os.environ["LETHE_API_KEY"])
    with pytest.raises(CliError, match=r"^this server does not provide GET /v1/nope: HTTP 404; try this$") as e:
        api.request("GET", "/v1/nope", hint="try this")
    assert e.value.code == 3
    # a 404 about a resource is not a missing route
    with pytest.raises(CliError, match="^HTTP 404 unknown_model: model 'no-such-model' is not registered$"):
        api.request("GET", "/v1/models/no-such-model/versions", hint="try this")


def test_models_lists_the_registry(live_server, seeded, capsys):
    code, out, err = run(capsys, "models", "--url", live_server, "--json")
    assert code == 0, err
    models = {m["name"]: m for m in json.loads(out)}
    assert models[MODEL]["aliases"]["production"] == models[MODEL]["latest_version"] == 1
    code, out, _ = run(capsys, "models", "--url", live_server)
    assert code == 0 and out.startswith(f"{MODEL}  ") and "production=v1" in out


def test_audit_export_then_verify_it_offline(live_server, seeded, tmp_path, capsys):
    """`lethe audit export` downloads the chain; `lethe audit verify-export` recomputes it with
    no server (the same answer as the server's own verification)."""
    export = tmp_path / "audit.jsonl"
    code, out, err = run(capsys, "audit", "export", "--url", live_server, "-o", str(export))
    assert code == 0 and out.startswith(f"audit export written to {export}"), err
    code, out, _ = run(capsys, "audit", "verify", "--url", live_server, "--json")
    online = json.loads(out)
    code, out, _ = run(capsys, "audit", "verify-export", str(export), "--json")
    offline = json.loads(out)
    assert code == 0 and offline == {k: online[k] for k in offline} and online["entries"] == len(export.read_text().splitlines())
    code, out, _ = run(capsys, "audit", "export", "--url", live_server)  # to stdout
    assert code == 0 and out == export.read_text()
    code, out, _ = run(capsys, "audit", "export", "--url", live_server, "--after-seq", "1")
    assert [json.loads(line)["seq"] for line in out.splitlines()][0] == 2

    lines = export.read_text().splitlines()
    event = json.loads(lines[1])
    event["actor"] = "mallory"
    (tmp_path / "tampered.jsonl").write_text("\n".join([lines[0], json.dumps(event), *lines[2:]]) + "\n")
    code, out, _ = run(capsys, "audit", "verify-export", str(tmp_path / "tampered.jsonl"))
    assert code == 1 and out.startswith(f"audit chain BROKEN at event {event['seq']}: ")
    (tmp_path / "junk.jsonl").write_text("not json\n")
    code, _, err = run(capsys, "audit", "verify-export", str(tmp_path / "junk.jsonl"))
    assert code == 1 and "is not an audit export" in err
    code, _, err = run(capsys, "audit", "verify-export", str(tmp_path / "missing.jsonl"))
    assert code == 2 and "cannot read" in err
    portal = make_key(seeded, ["forget:write", "forget:read"], name="portal")
    code, _, err = run(capsys, "audit", "export", "--url", live_server, "--api-key", portal, "-o", str(export))
    assert code == 3 and "HTTP 403" in err and "lacks scope audit:read" in err


def test_worker_runs_celery_only_with_a_broker(monkeypatch, capsys):
    from app.cli import server
    from app.settings import Settings

    execs = []
    monkeypatch.setattr(server.os, "execv", lambda exe, argv: execs.append(argv))
    monkeypatch.setattr(server, "get_settings", lambda: Settings(broker_url=""))  # embedded mode
    code, _, err = run(capsys, "worker")
    assert code == 2 and "LETHE_BROKER_URL is empty" in err and "LETHE_EMBEDDED_WORKER" in err and not execs
    monkeypatch.setattr(server, "get_settings", lambda: Settings(broker_url="redis://127.0.0.1:6379/9"))
    code, _, err = run(capsys, "worker")  # the development secrets: refused before Celery starts
    assert code == 2 and "LETHE_SUBJECT_SECRET" in err and not execs
    import secrets

    good = dict(subject_secret=secrets.token_hex(32), webhook_secret=secrets.token_hex(32),
                audit_checkpoint_file="/tmp/lethe-anchor.jsonl")
    monkeypatch.setattr(server, "get_settings", lambda: Settings(broker_url="redis://127.0.0.1:6379/9", **good))
    assert run(capsys, "worker", "--hostname", "gpu0@%h")[0] == 0
    assert execs == [[sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool=solo",
                      "--loglevel=INFO", "--hostname", "gpu0@%h"]]


def test_cli_adds_a_dataset_registers_a_model_and_starts_training(live_server, seeded, capsys, tmp_path):
    """`lethe datasets add`, `lethe models register` (a manifest file, or the whole training
    split), `lethe models train`: the user's path without curl."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.torch import save_file

    from models.nets import build_model

    n = 30
    rng = np.random.default_rng(0)
    pq.write_table(pa.table({"instance_id": [f"c-{i:03d}" for i in range(n)], "label": [i % 2 for i in range(n)],
                             "subject_id": [f"person-{i // 3}" for i in range(n)],
                             "split": ["test" if i % 5 == 0 else "train" for i in range(n)],
                             "a": rng.random(n), "b": rng.random(n), "c": rng.random(n)}), tmp_path / "c.parquet")
    u = ["--url", live_server]
    code, out, err = run(capsys, "datasets", "add", "custs", str(tmp_path / "c.parquet"), "--classes", "0,1", *u)
    assert code == 0, err
    assert out.startswith("dataset custs: ready, train 24 rows, test 6 rows, 10 subjects"), out
    code, out, _ = run(capsys, "datasets", *u)
    assert code == 0 and "custs" in out

    save_file(build_model("mlp", (3,), 2, {"widths": [8]}).state_dict(), tmp_path / "w.safetensors")
    (tmp_path / "m.json").write_text(json.dumps({"instances": [{"instance_id": "c-001"}, {"instance_id": "c-002"}]}))
    base = ["--dataset", "custs", "--arch", "mlp", "--arch-params", '{"widths": [8]}',
            "--weights", str(tmp_path / "w.safetensors"), *u]
    code, out, err = run(capsys, "models", "register", "custs-mlp", *base, "--manifest", str(tmp_path / "m.json"))
    assert code == 0, err
    assert out.startswith("custs-mlp v1 (mlp on custs): 2 training rows"), out
    code, out, err = run(capsys, "models", "register", "custs-all", *base, "--all-training-rows")
    assert code == 0 and "24 training rows" in out, err
    code, out, err = run(capsys, "models", "register", "custs-x", *base)  # neither a manifest nor the whole split
    assert code == 2 and "--all-training-rows" in err
    (tmp_path / "bad.json").write_text(json.dumps({"instances": [{"instance_id": "c-000"}]}))  # a held-out row
    code, out, err = run(capsys, "models", "register", "custs-y", *base, "--manifest", str(tmp_path / "bad.json"))
    assert code == 3 and "not_training_rows" in err and "c-000" in err

    code, out, err = run(capsys, "models", "train", "custs-lethe", "--dataset", "custs", "--arch", "mlp",
                         "--recipe", '{"epochs": 1}', "--no-wait", *u)
    assert code == 0 and out.startswith("training run ") and "of custs-lethe: queued" in out, (out, err)


def test_cli_follows_a_run_and_prints_its_progress(capsys):
    from app.cli.datasets import follow

    answers = iter([[{"id": "r", "status": "running", "stage": "epoch 1/2", "progress": 0.25}],
                    [{"id": "r", "status": "running", "stage": "epoch 2/2", "progress": 0.75}],
                    [{"id": "r", "status": "completed", "stage": "done", "progress": 1.0}]])

    class Fake:
        def request(self, method, path):
            return next(answers)

    got = follow(Fake(), "/v1/models/x/training", 10, lambda rs: (rs[0]["status"] == "completed", rs[0]["progress"],
                                                                  rs[0]["stage"]), every=0)
    assert got[0]["status"] == "completed"
    assert capsys.readouterr().err.splitlines() == ["epoch 1/2: 25%", "epoch 2/2: 75%", "done: 100%"]
