"""Faults around an accepted request (issue 13, item 6): a broker fault after the commit
still answers 202 (the job stays queued for the sweeper), the gateway never waits on a
result backend, and an unreachable database answers JSON 503 with Retry-After."""
import os
import tempfile
import time

from fastapi.testclient import TestClient

from app.db import session_scope
from app.forget.models import ForgetRequest
from app.jobs.models import Job
from app.main import create_app

from .conftest import MODEL, RecordingDispatcher, bearer, make_key

# a deployment (Postgres or a broker) refuses the development secrets (Settings.check_secrets)
DEPLOYMENT_SECRETS = {"subject_secret": "a-deployment-secret-4f0c9e27b1d85a36", "webhook_secret":
                      "a-deployment-webhook-secret-9b2e7d41c06f3a58",
                      "audit_checkpoint_file": os.path.join(tempfile.gettempdir(), "lethe-faults-anchor.jsonl")}


class BrokenDispatcher(RecordingDispatcher):
    def dispatch(self, job_id: str) -> None:
        self.sent.append(job_id)
        raise ConnectionError("broker down")


def _recorded(settings, request_id):
    with session_scope(settings.database_url) as db:
        req = db.get(ForgetRequest, request_id)
        return req.status, db.get(Job, req.job_id).status


def test_a_dispatch_fault_after_commit_still_answers_202(seeded):
    broken = BrokenDispatcher()
    with TestClient(create_app(seeded, dispatcher=broken), headers=bearer(make_key(seeded))) as c:
        r = c.post("/v1/forget", json={"model": MODEL, "subject_id": "alice"})
    assert r.status_code == 202, r.text
    assert broken.sent == [r.json()["job_id"]]  # it was tried, and failed
    assert _recorded(seeded, r.json()["id"]) == ("queued", "queued")  # the sweeper sends it later


def test_broker_down_answers_202_at_once(seeded):
    """Celery with an unreachable Redis: no result-backend subscription, no retries inside
    the request (it hung 19 s and answered a plain-text 500 before)."""
    from worker.celery_app import CeleryDispatcher

    s = seeded.model_copy(update={"broker_url": "redis://127.0.0.1:1/0", **DEPLOYMENT_SECRETS})
    d = CeleryDispatcher(s)
    d.RETRY_S = (30.0,)  # keep the background retry out of this test
    with TestClient(create_app(s, dispatcher=d), headers=bearer(make_key(s))) as c:
        t0 = time.monotonic()
        r = c.post("/v1/forget", json={"model": MODEL, "instance_ids": ["toy-00001", "toy-00002"]})
        took = time.monotonic() - t0
    assert r.status_code == 202, r.text
    assert took < 2.0, f"POST took {took:.1f} s with the broker down"
    assert d.celery.conf.result_backend is None
    assert d.flush(30) and d.failed >= 1 and d.sent == 0
    assert _recorded(s, r.json()["id"]) == ("queued", "queued")


def test_database_unreachable_answers_json_503(tmp_path):
    from app.settings import Settings

    s = Settings(database_url="postgresql+psycopg://postgres@127.0.0.1:1/none", registry_dir=str(tmp_path / "r"),
                 data_dir=str(tmp_path / "d"), embedded_worker=False, sweeper_interval_s=0, webhook_poll_s=0,
                 **DEPLOYMENT_SECRETS)
    c = TestClient(create_app(s, dispatcher=RecordingDispatcher()))  # no lifespan: it would need the database
    for method, path, body in (("POST", "/v1/forget", {"model": MODEL, "subject_id": "alice"}),
                               ("GET", "/v1/forget/some-id", None), ("GET", "/v1/jobs/some-id", None)):
        r = c.request(method, path, json=body, headers=bearer("k" * 40))
        assert r.status_code == 503, (path, r.text)
        assert r.headers["retry-after"] == "5"
        assert r.json()["code"] == "database_unavailable" and "retry" in r.json()["detail"]


def test_several_gateway_processes_need_celery(tmp_path):
    """LETHE_WEB_CONCURRENCY > 1 with the embedded worker is refused before anything starts."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    env.update(LETHE_WEB_CONCURRENCY="2", LETHE_DATABASE_URL=f"sqlite:///{tmp_path}/l.db",
               LETHE_REGISTRY_DIR=str(tmp_path / "r"), LETHE_DATA_DIR=str(tmp_path / "d"))
    r = subprocess.run([sys.executable, "-m", "app.cli", "serve"], env=env, capture_output=True, text=True,
                       timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert r.returncode == 2, r.stderr
    assert "LETHE_BROKER_URL" in r.stderr and "LETHE_EMBEDDED_WORKER=false" in r.stderr
    assert not (tmp_path / "l.db").exists()  # refused before migrating
