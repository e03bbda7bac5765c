"""Fast service tests: a fresh SQLite database migrated with Alembic, a small catalogued
model (an untrained network, no training needed) and a dispatcher that only records."""
from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app.audit import service as audit
from app.catalogue import service as catalogue
from app.catalogue.models import TrainingInstance
from app.cli import migrate
from app.db import session_scope
from app.main import create_app
from app.registry import service as registry
from app.settings import Settings

MODEL = "toy-cnn"
SHAPE = (1, 8, 8)
CLASSES = [str(c) for c in range(10)]
SECRET = "test-secret"
ROOT_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class RecordingDispatcher:
    def __init__(self):
        self.sent: list[str] = []
        self.training: list[str] = []

    def dispatch(self, job_id: str) -> None:
        self.sent.append(job_id)

    def dispatch_training(self, run_id: str) -> None:
        self.training.append(run_id)

    def ready(self):
        return True, "ok"


def make_settings(tmp_path, **kw) -> Settings:
    return Settings(registry_dir=str(tmp_path / "registry"), data_dir=str(tmp_path / "data"), subject_secret=SECRET,
                    broker_url="", bootstrap_demo=False, embedded_worker=False,
                    **{"database_url": f"sqlite:///{tmp_path}/lethe.db", "sweeper_interval_s": 0,
                       "audit_checkpoint_file": str(tmp_path / "audit-anchor" / "checkpoints.jsonl"),
                       "webhook_poll_s": 0, "audit_checkpoint_poll_s": 0, "audit_drain_s": 0,
                       "risk_reference_models": 0,  # the risk job: tests/service/test_membership_risk.py
                       "no_data_hold_s": 0,  # a tenant sees its requests as they are (test_oracle_timeline.py: the hold)
                       **kw})


def make_key(settings: Settings, scopes=None, name: str = "test", tenant: str = "default") -> str:
    """A real API key (created the way `python -m app.security keys create` does)."""
    from app import security

    with session_scope(settings.database_url) as db:
        return security.create_key(db, name, scopes or security.SCOPES, actor="test", tenant=tenant)[1]


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def save_net(settings: Settings, seed: int) -> tuple[str, str]:
    from models.checkpoint import save_checkpoint
    from models.nets import build_model

    torch.manual_seed(seed)
    net = build_model("cnn", SHAPE, len(CLASSES))
    tmp = registry.weights_tmp_path(registry.weights(settings), MODEL)
    sha = save_checkpoint(net, tmp, arch="cnn", dataset="toy", input_shape=SHAPE, classes=CLASSES)
    return sha, registry.publish_weights(registry.weights(settings), MODEL, tmp, sha)


def add_model(settings: Settings, name: str, *, n: int = 12, seed: int = 5) -> None:
    """Model ``name`` v1 (production): another untrained CNN, trained (nominally) on the first
    ``n`` rows of dataset toy, as toy-cnn was."""
    from app.datasets import service as datasets
    from models.checkpoint import save_checkpoint
    from models.nets import build_model

    torch.manual_seed(seed)
    tmp = registry.weights_tmp_path(registry.weights(settings), name)
    sha = save_checkpoint(build_model("cnn", SHAPE, len(CLASSES)), tmp, arch="cnn", dataset="toy", input_shape=SHAPE,
                          classes=CLASSES)
    rel = registry.publish_weights(registry.weights(settings), name, tmp, sha)
    rows = catalogue.rows_for_model(datasets.store_dir(settings, "toy"), name, "toy", [f"toy-{i:05d}" for i in range(n)])
    with session_scope(settings.database_url) as db:
        registry.register_model(db, name=name, dataset="toy", arch="cnn", input_shape=SHAPE, classes=CLASSES)
        registry.add_version(db, model_name=name, sha256=sha, storage_path=rel, parent_version=None, job_id=None,
                             metrics=None)
        registry.move_alias(db, model_name=name, alias="production", to_version=1, actor="test")
        db.bulk_insert_mappings(TrainingInstance, rows)


def subject_of(i: int) -> str:
    return ["alice", "alice", "alice", "bob", "bob"][i] if i < 5 else f"user-{i}"


@pytest.fixture
def settings(tmp_path):
    s = make_settings(tmp_path)
    migrate(s)
    return s


def register_toy_dataset(settings: Settings, n: int = 12) -> None:
    """Dataset ``toy``: ``n`` random 8x8 training rows (subjects alice x3, bob x2, user-5..) and
    the real digits test split as its held-out rows, registered through the service a
    user's upload goes through."""
    import pyarrow as pa

    from app.datasets import service as datasets
    from app.datasets.formats import Spec
    from models.data import load_dataset

    x = np.random.default_rng(0).random((n, *SHAPE), dtype=np.float32)
    d = load_dataset("digits")
    xt, yt = d.x_test.numpy(), d.y_test.numpy()
    feats = np.concatenate([x.reshape(n, -1), xt.reshape(len(xt), -1)])
    table = pa.table({"instance_id": [f"toy-{i:05d}" for i in range(n)] + [f"toy-test-{i:05d}" for i in range(len(xt))],
                      "label": [i % 10 for i in range(n)] + yt.tolist(),
                      "subject_id": [subject_of(i) for i in range(n)] + [None] * len(xt),
                      "split": ["train"] * n + ["test"] * len(xt),
                      "features": pa.FixedSizeListArray.from_arrays(pa.array(feats.ravel()), feats.shape[1])})
    datasets.register(settings, "toy", datasets.TableSource(table), Spec(kind="tensor", shape=list(SHAPE),
                      classes=CLASSES), source_desc="test", actor="test")


def seed(settings: Settings, n: int = 12) -> Settings:
    """Model toy-cnn v1 (production) trained (nominally) on the ``n`` rows of dataset toy."""
    from app.datasets import service as datasets

    register_toy_dataset(settings, n)
    sha, rel = save_net(settings, seed=1)
    rows = catalogue.rows_for_model(datasets.store_dir(settings, "toy"), MODEL, "toy",
                                    [f"toy-{i:05d}" for i in range(n)])
    with session_scope(settings.database_url) as db:
        registry.register_model(db, name=MODEL, dataset="toy", arch="cnn", input_shape=SHAPE, classes=CLASSES)
        registry.add_version(db, model_name=MODEL, sha256=sha, storage_path=rel, parent_version=None,
                             job_id=None, metrics=None)
        registry.move_alias(db, model_name=MODEL, alias="production", to_version=1, actor="test")
        audit.append(db, actor="test", action="model.version_created", payload={"version": 1})
        db.bulk_insert_mappings(TrainingInstance, rows)
    return settings


@pytest.fixture
def seeded(settings):
    """Model toy-cnn v1 (production) and 12 catalogued instances with raw data."""
    return seed(settings)


@pytest.fixture(params=["sqlite", "postgres"])
def seeded_on(request, tmp_path):
    """``seeded`` on SQLite, and again on a fresh Postgres database (dropped after), with
    deployment-grade random secrets."""
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else f"sqlite:///{tmp_path}/lethe.db"
    return seed(deployment_settings(tmp_path, url))


def deployment_settings(tmp_path, url: str, **kw) -> Settings:
    """Settings on database ``url`` (migrated) with deployment-grade random secrets."""
    import secrets

    s = make_settings(tmp_path, database_url=url, webhook_secret=secrets.token_hex(32), **kw)
    s = s.model_copy(update={"subject_secret": secrets.token_hex(32)})
    migrate(s)
    return s


@pytest.fixture
def dispatcher():
    return RecordingDispatcher()


@pytest.fixture
def client(seeded, dispatcher):
    """A client holding a key with every scope (the scope walk in test_security checks less)."""
    key = make_key(seeded, name="test-all-scopes")
    with TestClient(create_app(seeded, dispatcher=dispatcher), headers=bearer(key)) as c:
        c.event_hooks["response"].append(error_contract(c.app.openapi()))
        yield c


def error_contract(schema: dict):
    """An httpx response hook: every error answer a test provokes through ``client`` must be
    exactly ``{code, detail}`` (strings) with a status the route's OpenAPI entry documents."""
    import re

    routes = [(m.upper(), re.compile("^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(p)) + "$"), op)
              for p, item in schema["paths"].items() for m, op in item.items()]

    def check(response) -> None:
        if response.status_code < 400 or not response.request.url.path.startswith("/v1/"):
            return
        response.read()
        where = f"{response.request.method} {response.request.url.path} -> {response.status_code}: {response.text}"
        body = response.json()
        assert set(body) == {"code", "detail"} and all(isinstance(v, str) for v in body.values()), where
        ops = [op for m, rx, op in routes if m == response.request.method and rx.match(response.request.url.path)]
        if ops:  # an unknown route or method answers 404/405 not_found/method_not_allowed
            assert str(response.status_code) in ops[0]["responses"], "undocumented status: " + where

    return check


def counts(settings: Settings) -> dict:
    from sqlalchemy import func, select

    from app.audit.models import AuditEvent, AuditOutbox
    from app.forget.models import ForgetRequest, PendingClaim
    from app.jobs.models import Job

    with session_scope(settings.database_url) as db:
        n = {t.__name__: db.execute(select(func.count()).select_from(t)).scalar()
             for t in (ForgetRequest, Job, AuditEvent, AuditOutbox, PendingClaim)}
    n["AuditEvent"] += n.pop("AuditOutbox")  # recorded events, chained or still in the outbox
    return n



def submit_and_claim(settings: Settings, subject: str) -> tuple[str, str, str, list[str]]:
    """Submit a forget request for ``subject`` and claim its job as a worker would.
    Returns (request id, job id, claim token, instance ids)."""
    from app.forget.schemas import ForgetCreate
    from app.forget.service import submit
    from app.jobs import service as jobs

    with session_scope(settings.database_url) as db:
        req, _, _ = submit(db, settings, ForgetCreate(model=MODEL, subject_id=subject), idempotency_key=None,
                           actor="test")
        rid, job_id = req.id, req.job_id
    with session_scope(settings.database_url) as db:
        c = jobs.claim(db, job_id, worker="test-worker", lease_s=settings.job_lease_s)
        assert c.outcome == "run", c.reason
        return rid, job_id, c.token, list(c.instance_ids)


def close_no_data(settings: Settings) -> int:
    """Close every no-data request now (the gateway's resolver draws when: app/forget/timeline.py)."""
    from app.forget import nodata

    with session_scope(settings.database_url) as db:
        return len(nodata.resolve(db, hold_s=0))


def publish(settings: Settings, job_id: str, token: str, ids: list[str], *, metrics: dict | None = None,
            seed: int = 2) -> None:
    """The job's real publishing transaction, with another untrained net as the new weights."""
    from app.jobs import service as jobs

    sha, rel = save_net(settings, seed=seed)
    with session_scope(settings.database_url) as db:
        jobs.complete(db, job_id=job_id, token=token, worker="test-worker", instance_ids=ids, sha256=sha,
                      storage_path=rel, metrics=metrics or {"ua": 100.0}, stats={})


def complete_request(settings: Settings, subject: str, *, metrics: dict | None = None, seed: int = 2) -> tuple[str, str]:
    """Submit, claim and publish (no training). Returns (request id, job id)."""
    rid, job_id, token, ids = submit_and_claim(settings, subject)
    publish(settings, job_id, token, ids, metrics=metrics, seed=seed)
    return rid, job_id


@contextlib.contextmanager
def serving(app):
    """``app`` on a real loopback port (uvicorn in a thread of this process): yields its base URL."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="live-server", daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "live server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture
def live_server(seeded, dispatcher, monkeypatch):
    """The gateway on a real port (uvicorn in a thread of this process): for a browser or
    the CLI. Yields its base URL; LETHE_API_KEY holds an all-scopes key, as an operator's
    shell would."""
    monkeypatch.setenv("LETHE_API_KEY", make_key(seeded, name="operator"))
    with serving(create_app(seeded, dispatcher=dispatcher)) as url:
        yield url
