"""Weights out (app/registry/weights.py): a serving system downloads a version's safetensors
file by version or alias with the digest the registry recorded, resumes with Range, reads the
version's card; purged versions answer 410, other tenants' models 404; ``models:read`` keys
see models and weights and nothing of requests or subjects; ``lethe models pull``."""
import base64
import hashlib
import os

import pytest
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from app.db import session_scope
from app.main import create_app
from app.registry import service as registry
from app.registry.models import PURGED

from .conftest import MODEL, add_model, bearer, error_contract, make_key, save_net

OTHER = "secret-cnn"


@pytest.fixture
def gw(seeded, dispatcher):
    add_model(seeded, OTHER, seed=7)
    keys = {"serving": bearer(make_key(seeded, ["models:read"], "acme-serving", tenant="acme")),
            "operator": bearer(make_key(seeded, ["models:admin"], "ops")),
            "portal": bearer(make_key(seeded, ["forget:read", "forget:write"], "portal")),
            "auditor": bearer(make_key(seeded, ["audit:read"], "auditor"))}
    with TestClient(create_app(seeded, dispatcher=dispatcher)) as c:
        c.event_hooks["response"].append(error_contract(c.app.openapi()))
        assert c.put(f"/v1/tenants/acme/models/{MODEL}", headers=keys["operator"]).status_code == 200
        yield c, keys


def _file(settings, name=MODEL, version=1) -> bytes:
    with session_scope(settings.database_url) as db:
        v = registry.get_version(db, name, version)
        return open(registry.absolute_path(registry.weights(settings), v.storage_path), "rb").read()


def test_download_by_version_and_alias_carries_the_recorded_digest(gw, seeded, tmp_path):
    c, k = gw
    raw = _file(seeded)
    sha = hashlib.sha256(raw).hexdigest()
    for path in (f"/v1/models/{MODEL}/versions/1/weights", f"/v1/models/{MODEL}/aliases/production/weights"):
        r = c.get(path, headers=k["serving"])
        assert r.status_code == 200, r.text
        assert r.content == raw and r.headers["etag"] == f'"{sha}"'
        assert r.headers["digest"] == "sha-256=" + base64.b64encode(bytes.fromhex(sha)).decode()
        assert r.headers["lethe-version"] == "1" and r.headers["content-length"] == str(len(raw))
    (tmp_path / "w.safetensors").write_bytes(r.content)
    assert load_file(str(tmp_path / "w.safetensors"))  # a real safetensors state dict
    assert r.headers["content-location"] == f"/v1/models/{MODEL}/versions/1/weights"
    assert r.headers["cache-control"] == "no-cache"
    # the alias moves: the same URL serves the new version
    sha2, rel = save_net(seeded, seed=9)
    with session_scope(seeded.database_url) as db:
        registry.add_version(db, model_name=MODEL, sha256=sha2, storage_path=rel, parent_version=1, job_id=None,
                             metrics=None)
        registry.move_alias(db, model_name=MODEL, alias="production", to_version=2, actor="test")
    r = c.get(f"/v1/models/{MODEL}/aliases/production/weights", headers=k["serving"])
    assert r.headers["lethe-version"] == "2" and hashlib.sha256(r.content).hexdigest() == sha2
    assert c.get(f"/v1/models/{MODEL}/versions/1/weights", headers={**k["serving"], "If-None-Match": f'"{sha}"'}
                 ).status_code == 304


def test_range_resumes_a_download(gw, seeded):
    c, k = gw
    raw = _file(seeded)
    url = f"/v1/models/{MODEL}/versions/1/weights"
    r = c.get(url, headers={**k["serving"], "Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == raw[100:200]
    assert r.headers["content-range"] == f"bytes 100-199/{len(raw)}"
    tail = c.get(url, headers={**k["serving"], "Range": "bytes=1000-"})
    assert tail.status_code == 206 and raw[:1000] + tail.content == raw
    assert c.get(url, headers={**k["serving"], "Range": "bytes=-10"}).content == raw[-10:]
    # a Range past the end: 416 with the size; an If-Range of another file: the whole file
    r = c.get(url, headers={**k["serving"], "Range": f"bytes={len(raw)}-"})
    assert r.status_code == 416, (r.status_code, r.headers, r.content[:100])
    assert r.json()["code"] == "range_not_satisfiable"
    assert r.headers["content-range"] == f"bytes */{len(raw)}"
    r = c.get(url, headers={**k["serving"], "Range": "bytes=0-9", "If-Range": '"0000"'})
    assert r.status_code == 200 and r.content == raw
    assert c.get(url, headers={**k["serving"], "Range": "bytes=5-2"}).status_code == 200  # not a valid range


def test_unknown_purged_and_other_tenants_models(gw, seeded):
    c, k = gw
    s = k["serving"]
    assert c.get(f"/v1/models/{MODEL}/versions/9/weights", headers=s).json()["code"] == "unknown_version"
    assert c.get(f"/v1/models/{MODEL}/aliases/staging/weights", headers=s).json()["code"] == "unknown_alias"
    assert c.get("/v1/models/ghost/versions/1/weights", headers=s).json()["code"] == "unknown_model"
    assert c.get(f"/v1/models/{MODEL}/versions/0/weights", headers=s).status_code == 422
    # a model not granted to acme reads exactly like one that does not exist
    mine = c.get(f"/v1/models/{OTHER}/versions/1/weights", headers=s)
    ghost = c.get("/v1/models/ghost/versions/1/weights", headers=s)
    assert mine.status_code == 404 and mine.json()["detail"].replace(OTHER, "X") == \
        ghost.json()["detail"].replace("ghost", "X")
    assert c.get(f"/v1/models/{OTHER}/versions/1", headers=s).status_code == 404
    assert c.get(f"/v1/models/{OTHER}/versions/1/weights", headers=k["operator"]).status_code == 200
    with session_scope(seeded.database_url) as db:
        v = registry.get_version(db, OTHER, 1)
        v.status = PURGED
        os.unlink(registry.absolute_path(registry.weights(seeded), v.storage_path))
    r = c.get(f"/v1/models/{OTHER}/versions/1/weights", headers=k["operator"])
    assert (r.status_code, r.json()["code"]) == (410, "version_purged")
    assert c.get(f"/v1/models/{OTHER}/aliases/production/weights", headers=k["operator"]).status_code == 410


def test_models_read_sees_models_and_weights_and_nothing_of_requests(gw):
    c, k = gw
    s = k["serving"]
    assert [m["name"] for m in c.get("/v1/models", headers=s).json()] == [MODEL]
    assert c.get(f"/v1/models/{MODEL}/versions", headers=s).status_code == 200
    for path in ("/v1/forget", "/v1/subjects/alice/instances", "/v1/audit", "/v1/jobs/x", "/v1/datasets",
                 "/v1/tenants"):
        assert c.get(path, headers=s).status_code == 403, path
    r = c.post("/v1/forget", headers=s, json={"model": MODEL, "instance_ids": ["toy-00001"]})
    assert r.status_code == 403
    # weights are for serving systems and operators, not portals or auditors
    for who in ("portal", "auditor"):
        assert c.get(f"/v1/models/{MODEL}/versions/1/weights", headers=k[who]).status_code == 403


def test_model_card(gw, seeded):
    c, k = gw
    card = c.get(f"/v1/models/{MODEL}/versions/1", headers=k["serving"]).json()
    raw = _file(seeded)
    assert card["sha256"] == hashlib.sha256(raw).hexdigest() and card["size_bytes"] == len(raw)
    assert card["architecture"]["arch"] == "cnn" and card["architecture"]["input_shape"] == [1, 8, 8]
    assert card["aliases"] == ["production"] and card["exact"] is True and card["parent_version"] is None
    assert card["dataset"] == {"name": "toy", "rows": 12} and card["recipe"]["optimizer"]
    assert card["weights_url"] == f"/v1/models/{MODEL}/versions/1/weights" and card["certificates"] == []
    assert c.get(f"/v1/models/{MODEL}/versions/3", headers=k["serving"]).json()["code"] == "unknown_version"


def test_lethe_models_pull_verifies_the_digest(seeded, tmp_path, monkeypatch, capsys):
    """`lethe models pull` against a live gateway: by alias and version; a file whose digest
    does not match what the server announced is refused and not left behind."""
    import threading

    import uvicorn

    from app import cli
    from app.client import Api

    from .conftest import RecordingDispatcher

    app = create_app(seeded, dispatcher=RecordingDispatcher())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    while not server.started:
        t.join(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        monkeypatch.setenv("LETHE_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("LETHE_API_KEY", make_key(seeded, ["models:read"], "puller"))
        raw = _file(seeded)
        out = tmp_path / "prod.safetensors"
        assert cli.main(["models", "pull", f"{MODEL}@production", "-o", str(out)]) == 0
        assert out.read_bytes() == raw and "v1" in capsys.readouterr().out
        assert cli.main(["models", "pull", f"{MODEL}:1", "-o", str(tmp_path / "v1.safetensors")]) == 0
        assert cli.main(["models", "pull", f"{MODEL}:7", "-o", str(tmp_path / "v7.safetensors")]) == 3
        assert not (tmp_path / "v7.safetensors").exists()
        # the server announces a digest the bytes do not have: refused, nothing written
        real = Api.download

        def tampered(self, path, f, **kw):
            n = real(self, path, f, **kw)
            f.write(b"x")
            return n + 1

        monkeypatch.setattr(Api, "download", tampered)
        bad = tmp_path / "bad.safetensors"
        assert cli.main(["models", "pull", MODEL, "-o", str(bad)]) == 1
        assert not bad.exists() and "sha256" in capsys.readouterr().err
    finally:
        server.should_exit = True
        t.join(10)


def test_a_download_holds_no_database_session():
    """The weights routes read in short sessions of their own: a long download holds neither a
    connection nor a place at the request-session gate (app/deps.py), which every other
    route's session takes until its answer is sent."""
    from fastapi.routing import APIRoute

    from app.deps import request_db, request_session
    from app.registry.weights import router

    def calls(dependant):
        stack, out = [dependant], set()
        while stack:
            d = stack.pop()
            out.add(d.call)
            stack.extend(d.dependencies)
        return out

    weights = [r for r in router.routes if isinstance(r, APIRoute) and r.path.endswith("/weights")]
    assert len(weights) == 2
    for r in weights:
        assert not calls(r.dependant) & {request_session, request_db}, r.path
    card = next(r for r in router.routes if isinstance(r, APIRoute) and r.path.endswith("/versions/{version}"))
    assert request_session in calls(card.dependant)  # (the check can see one)
