"""The MLflow Model Registry mirror (app/mirror) against a real ``mlflow server`` (SQLite
backend store, local artifact root) that this module starts once and stops: versions and
aliases out, loadable with ``mlflow.pyfunc.load_model`` without pickle; a purge deletes the
weights from MLflow's artifact store; sync is idempotent and catches up; a model comes in
from ``models:/NAME@alias``."""
import json
import os
import socket
import subprocess
import time

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app.db import session_scope
from app.jobs import service as jobs
from app.main import create_app
from app.mirror.service import Mirror
from app.registry import governance
from app.registry import service as registry

from .conftest import MODEL, ROOT_DIR, bearer, make_key, save_net

MLFLOW = os.path.join(ROOT_DIR, ".venv-mlflow", "bin", "mlflow")
pytestmark = pytest.mark.slow  # a real MLflow server starts (once for the module)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """One real MLflow tracking server for the module (``make mlflow-venv`` installs it)."""
    assert os.path.exists(MLFLOW), "the MLflow server is missing: run `make mlflow-venv`"
    d = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(d / "server.log", "wb")
    proc = subprocess.Popen([MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{d}/mlflow.db",
                             "--artifacts-destination", str(d / "artifacts")], stdout=log, stderr=subprocess.STDOUT,
                            cwd=d)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (d / "server.log").read_text()[-2000:]
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not start in 120 s"
            time.sleep(0.5)
        yield {"url": url, "artifacts": str(d / "artifacts")}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _files(root: str) -> list[str]:
    return [f for _, _, fs in os.walk(root) for f in fs]


def _deletion(s, subject: str, seed: int) -> int:
    from .conftest import RecordingDispatcher

    with TestClient(create_app(s, dispatcher=RecordingDispatcher())) as c:
        r = c.post("/v1/forget", headers=bearer(make_key(s, ["forget:write", "forget:read", "models:admin"], "ops")),
                   json={"model": MODEL, "subject_id": subject})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
    with session_scope(s.database_url) as db:
        claim = jobs.claim(db, job_id, worker="w1", lease_s=s.job_lease_s)
    sha, rel = save_net(s, seed=seed)
    with session_scope(s.database_url) as db:
        job = jobs.complete(db, job_id=job_id, token=claim.token, worker="w1", instance_ids=claim.instance_ids,
                            sha256=sha, storage_path=rel, metrics={"ua": 0.0}, stats=None)
        version = job.result_version
    with session_scope(s.database_url) as db:
        governance.purge_superseded(db, registry.weights(s), MODEL, actor="worker:w1")
    return version


def test_versions_aliases_and_purges_reach_mlflow(seeded, mlflow_server, monkeypatch, capsys):
    import mlflow
    from mlflow.tracking import MlflowClient

    s = seeded.model_copy(update={"mlflow_tracking_uri": mlflow_server["url"]})
    mirror = Mirror(s)
    done = mirror.sync()
    assert done["created"] == [f"{MODEL}:1"] and done["aliases"] == [f"{MODEL}@production=1"]
    assert mirror.sync() == {"created": [], "aliases": [], "purged": []}  # idempotent
    client = MlflowClient(mlflow_server["url"])
    mv1 = client.get_model_version_by_alias(MODEL, "production")
    with session_scope(s.database_url) as db:
        v1 = registry.get_version(db, MODEL, 1)
        sha1, path1 = v1.sha256, registry.absolute_path(registry.weights(s), v1.storage_path)
    assert mv1.tags["lethe.version"] == "1" and mv1.tags["lethe.sha256"] == sha1 and mv1.tags["lethe.exact"] == "true"
    assert f"{sha1}.safetensors" in _files(mlflow_server["artifacts"])
    assert not [f for f in _files(mlflow_server["artifacts"]) if f.endswith((".pkl", ".pickle"))]

    # loadable the MLflow way, without pickle, and it predicts what Lethe's own weights predict
    from models.checkpoint import load_checkpoint

    mlflow.set_tracking_uri(mlflow_server["url"])
    loaded = mlflow.pyfunc.load_model(f"models:/{MODEL}@production")
    x = np.random.default_rng(1).random((4, 1, 8, 8), dtype=np.float32)
    net, _ = load_checkpoint(path1)
    with torch.no_grad():
        want = torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()
    assert np.allclose(np.asarray(loaded.predict(x)), want, atol=1e-6)

    # a deletion while the mirror is down: the next sync catches up (new version, alias, purge)
    v2 = _deletion(s, "alice", seed=21)
    assert v2 == 2
    with session_scope(s.database_url) as db:
        assert registry.get_version(db, MODEL, 1).status == "PURGED"
    monkeypatch.setenv("LETHE_DATABASE_URL", s.database_url)
    monkeypatch.setenv("LETHE_REGISTRY_DIR", s.registry_dir)
    monkeypatch.setenv("LETHE_MLFLOW_TRACKING_URI", mlflow_server["url"])
    from app import cli
    from app.settings import get_settings

    get_settings.cache_clear()  # the command reads the environment set above, not an earlier test's
    try:
        assert cli.main(["mlflow", "sync"]) == 0
    finally:
        get_settings.cache_clear()
    printed = capsys.readouterr().out
    out = json.loads(printed.strip().splitlines()[-1]) if printed.strip() else printed
    assert (out["created"], out["aliases"], out["purged"]) == (1, 1, 1), printed
    assert client.get_model_version_by_alias(MODEL, "production").tags["lethe.version"] == "2"
    old = client.get_model_version(MODEL, mv1.version)
    assert old.tags["lethe.status"] == "PURGED" and "PURGED" in old.description and not old.aliases
    assert f"{sha1}.safetensors" not in _files(mlflow_server["artifacts"])  # the erased data left MLflow too
    assert Mirror(s).sync() == {"created": [], "aliases": [], "purged": []}


def test_the_gateway_mirrors_by_itself_and_imports_from_mlflow(seeded, mlflow_server):
    """The gateway's pump mirrors a published version within seconds; POST /v1/models/import
    registers a model from models:/NAME@production (its one safetensors file)."""
    from mlflow.tracking import MlflowClient

    s = seeded.model_copy(update={"mlflow_tracking_uri": mlflow_server["url"], "mlflow_sync_s": 0.2})
    client = MlflowClient(mlflow_server["url"])
    with TestClient(create_app(s), headers=bearer(make_key(s, ["models:admin"], "ops"))) as c:
        v = _deletion(s, "bob", seed=31)
        with session_scope(s.database_url) as db:
            sha = registry.get_version(db, MODEL, v).sha256
        deadline = time.monotonic() + 60
        while True:
            try:  # (the server also holds the first test's versions: the sha256 tells them apart)
                prod = client.get_model_version_by_alias(MODEL, "production")
                if prod.tags.get("lethe.sha256") == sha:
                    break
            except Exception:  # noqa: BLE001 - not there yet
                pass
            assert time.monotonic() < deadline, "the gateway did not mirror the new version within 60 s"
            time.sleep(0.2)
        manifest = {"instances": [{"instance_id": f"toy-{i:05d}"} for i in range(12)]}
        r = c.post("/v1/models/import", json={"name": "toy-from-mlflow", "source": f"models:/{MODEL}@production",
                                              "arch": "cnn", "dataset": "toy", "manifest": manifest})
        assert r.status_code == 201, r.text
        assert r.json()["uploaded_sha256"] == sha and r.json()["version"] == 1 and r.json()["instances"] == 12
        r = c.post("/v1/models/import", json={"name": "nothing", "source": f"models:/{MODEL}/999", "arch": "cnn",
                                              "dataset": "toy", "manifest": manifest})
        assert (r.status_code, r.json()["code"]) == (422, "bad_mlflow_source")
        r = c.post("/v1/models/import", json={"name": "nothing", "source": "s3://bucket/x", "arch": "cnn",
                                              "dataset": "toy", "manifest": manifest})
        assert (r.status_code, r.json()["code"]) == (422, "bad_mlflow_source")
