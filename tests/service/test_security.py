"""Access control: hashed keys with scopes, bearer tokens, every route checked."""
import json
import os
import re
import stat
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app import security
from app.audit.models import AuditEvent
from app.db import session_scope
from app.main import create_app
from app.security.models import ApiKey

from .conftest import ROOT_DIR, bearer, make_key

# Routes anyone may call: liveness/readiness, the API docs, and the public key that
# verifies deletion certificates (a public key is meant to be public).
OPEN = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/v1/keys/audit")}


def _fill(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x-does-not-exist", path)


def _call(c: TestClient, method: str, path: str, headers: dict):
    kw = {"headers": headers}
    if method in ("POST", "PUT", "PATCH"):
        kw["json"] = {}
    return c.request(method, _fill(path), **kw)


def test_scope_walk_over_every_route_in_the_openapi_schema(seeded, dispatcher):
    """Every operation in the schema: no key -> 401, a key without the scope -> 403,
    a key with it -> neither (404/422 are fine: the dummy ids do not exist)."""
    keys = {s: make_key(seeded, [s], name=f"only-{s}") for s in security.SCOPES}
    with TestClient(create_app(seeded, dispatcher=dispatcher)) as c:
        schema = c.get("/openapi.json").json()
        assert c.get("/docs").status_code == 200
        walked = 0
        for path, ops in schema["paths"].items():
            for method, op in ops.items():
                method = method.upper()
                scopes = op.get("x-required-scopes")
                if (method, path) in OPEN:
                    assert scopes is None, (method, path)
                    assert _call(c, method, path, {}).status_code not in (401, 403), (method, path)
                    continue
                assert scopes, f"{method} {path} checks no scope: add require_scope(...) or list it as open"
                assert set(scopes) <= set(security.SCOPES)
                r = _call(c, method, path, {})
                assert r.status_code == 401 and r.json()["code"] == "missing_api_key", (method, path, r.text)
                assert r.headers["www-authenticate"].startswith("Bearer")
                for s in security.SCOPES:
                    r = _call(c, method, path, bearer(keys[s]))
                    if s in scopes:
                        assert r.status_code not in (401, 403), (method, path, s, r.text)
                    else:
                        assert r.status_code == 403, (method, path, s, r.text)
                        assert " or ".join(scopes) in r.json()["detail"] and r.json()["code"] == "missing_scope"
                walked += 1
        assert walked >= 19  # every scoped operation of this slice


def test_bad_tokens_get_401_with_a_clear_message(client, seeded):
    assert client.get("/v1/audit/verify").status_code == 200  # the fixture's key has every scope
    url = "/v1/audit/verify"
    for headers, code, words in [
        ({"Authorization": ""}, "missing_api_key", "missing API key"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "malformed_authorization", "Bearer <key>"),
        ({"Authorization": "Bearer"}, "malformed_authorization", "Bearer <key>"),
        ({"Authorization": "Bearer lethe_not-a-real-key"}, "invalid_api_key", "invalid API key"),
    ]:
        r = client.get(url, headers=headers)
        assert r.status_code == 401 and r.json()["code"] == code and words in r.json()["detail"], r.text


def test_keys_are_stored_hashed_and_revocation_is_immediate(client, seeded):
    with session_scope(seeded.database_url) as db:
        key_id, plain = security.create_key(db, "auditor", ["audit:read"])
    assert plain.startswith("lethe_") and len(plain) > 40
    with session_scope(seeded.database_url) as db:
        row = db.get(ApiKey, key_id)
        assert row.key_hash == security.hash_key(plain) and plain not in (row.key_hash, row.prefix)
        assert row.scopes == ["audit:read"]
    r = client.get("/v1/audit/verify", headers=bearer(plain))
    assert r.status_code == 200
    r = client.get("/v1/forget/x", headers=bearer(plain))
    assert r.status_code == 403 and "lacks scope forget:read" in r.json()["detail"] and key_id in r.json()["detail"]
    with session_scope(seeded.database_url) as db:
        security.revoke_key(db, key_id)
    r = client.get("/v1/audit/verify", headers=bearer(plain))
    assert r.status_code == 401 and r.json()["code"] == "revoked_api_key" and key_id in r.json()["detail"]
    with session_scope(seeded.database_url) as db:
        events = db.execute(select(AuditEvent).where(AuditEvent.action.in_(["key.created", "key.revoked"]))).scalars()
        texts = [e.payload for e in events]
    assert any(key_id in t and "audit:read" in t for t in texts) and all(plain not in t for t in texts)
    with pytest.raises(ValueError, match="unknown scope"):
        with session_scope(seeded.database_url) as db:
            security.create_key(db, "x", ["forget:everything"])
    with pytest.raises(KeyError):
        with session_scope(seeded.database_url) as db:
            security.revoke_key(db, "k_nope")


def test_actor_of_a_submission_is_the_key(client, seeded):
    key = make_key(seeded, ["forget:write"], name="portal")
    r = client.post("/v1/forget", json={"model": "toy-cnn", "subject_id": "alice"}, headers=bearer(key))
    assert r.status_code == 202, r.text
    ev = client.get("/v1/audit", params={"action": "forget.received"}).json()["entries"][0]
    assert ev["actor"].startswith("key:k_") and ev["actor"].endswith(":portal")


def test_fresh_install_writes_one_admin_key_0600(settings, dispatcher):
    with TestClient(create_app(settings, dispatcher=dispatcher)) as c:
        path = security.admin_key_path(settings)
        assert os.path.exists(path) and stat.S_IMODE(os.stat(path).st_mode) == 0o600
        key = open(path).read().strip()
        assert c.get("/v1/audit/verify", headers=bearer(key)).status_code == 200
    os.unlink(path)
    with TestClient(create_app(settings, dispatcher=dispatcher)):
        assert not os.path.exists(path)  # a key exists already: nothing is created again
    with session_scope(settings.database_url) as db:
        assert [k.name for k in security.list_keys(db)] == ["admin"]


def test_bootstrap_admin_key_setting(settings, dispatcher):
    s = settings.model_copy(update={"bootstrap_admin_key": "k" * 40})
    for _ in range(2):  # idempotent
        with TestClient(create_app(s, dispatcher=dispatcher)) as c:
            assert c.get("/v1/audit/verify", headers=bearer("k" * 40)).status_code == 200
    with session_scope(s.database_url) as db:
        assert [k.name for k in security.list_keys(db)] == ["bootstrap-admin"]
    assert not os.path.exists(security.admin_key_path(s))
    with pytest.raises(ValueError, match="at least 24"):
        security.bootstrap_keys(settings.model_copy(update={"bootstrap_admin_key": "short"}))


def test_command_line(settings):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LETHE_")},
           "LETHE_DATABASE_URL": settings.database_url, "LETHE_REGISTRY_DIR": settings.registry_dir,
           "LETHE_DATA_DIR": settings.data_dir, "PYTHONPATH": ROOT_DIR}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "app.cli", "keys", *args], cwd=ROOT_DIR, env=env,
                              capture_output=True, text=True, timeout=120)

    r = run("create", "--name", "portal", "--scopes", "forget:write,forget:read", "--json")
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout.strip().splitlines()[-1])
    with session_scope(settings.database_url) as db:
        assert security.authenticate(db, made["key"]).id == made["key_id"]
    listed = run("list")
    assert made["key_id"] in listed.stdout and "active" in listed.stdout and made["key"] not in listed.stdout
    assert run("revoke", made["key_id"]).returncode == 0
    assert "revoked" in run("list").stdout
    bad = run("create", "--name", "x", "--scopes", "root")
    assert bad.returncode == 2 and "unknown scope" in bad.stderr
    # a portal of tenant acme (tests/service/test_tenants.py: what the tenant changes)
    r = run("create", "--name", "acme-portal", "--scopes", "forget:read", "--tenant", "acme", "--json")
    assert r.returncode == 0 and json.loads(r.stdout.strip().splitlines()[-1])["tenant"] == "acme", r.stderr
    with session_scope(settings.database_url) as db:
        assert security.authenticate(db, json.loads(r.stdout.strip().splitlines()[-1])["key"]).tenant == "acme"
    assert made["key_id"] in run("list").stdout and "\tacme\t" in run("list").stdout
    bad = run("create", "--name", "x", "--scopes", "forget:read", "--tenant", "Acme Corp")
    assert bad.returncode == 2 and "tenant 'Acme Corp'" in bad.stderr


def test_subject_ids_in_paths_are_redacted_from_the_access_log():
    import logging

    from app.main import _redact_access_log

    _redact_access_log()
    logger = logging.getLogger("uvicorn.access")
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", "/v1/subjects/alice%40example.org/instances?model=m", "1.1",
                                200), None)
    for f in logger.filters:
        f.filter(record)
    line = record.getMessage()
    assert "alice" not in line and "/v1/subjects/<redacted>/instances?model=m" in line
