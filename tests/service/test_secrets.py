"""Development and weak secrets, and a deployment without an audit anchor outside the
database, are refused outside the embedded demo — by the gateway, by migrate / bootstrap /
serve before they touch data, and by a Celery worker, which exits non-zero (issue 15
finding 6, issue 22 findings 5 and 7)."""
import os
import secrets
import subprocess
import sys

import pytest

from app.main import create_app
from app.settings import DEV_SUBJECT_SECRET, DEV_WEBHOOK_SECRET, InsecureSettings, Settings, weak_secret

from .conftest import ROOT_DIR, RecordingDispatcher

GOOD = secrets.token_hex(32)
GOOD2 = secrets.token_hex(32)


def _deployment(tmp_path, **kw) -> Settings:
    kw = {"audit_checkpoint_file": str(tmp_path / "anchor" / "cp.jsonl"), **kw}
    return Settings(database_url=f"sqlite:///{tmp_path}/lethe.db", registry_dir=str(tmp_path / "registry"),
                    data_dir=str(tmp_path / "data"), broker_url="redis://127.0.0.1:1/0", **kw)


@pytest.mark.parametrize("missing,kw", [
    ("LETHE_SUBJECT_SECRET is the development default", {}),
    ("LETHE_SUBJECT_SECRET is the development default", {"webhook_secret": GOOD}),
    ("LETHE_WEBHOOK_SECRET is the development default", {"subject_secret": GOOD}),
    ("LETHE_WEBHOOK_SECRET is shorter than 32 bytes", {"subject_secret": GOOD, "webhook_secret": "a-real-secret-0123456789"}),
    ("LETHE_SUBJECT_SECRET is a shorter string repeated", {"subject_secret": "x" * 40, "webhook_secret": GOOD}),
    ("LETHE_SUBJECT_SECRET has low entropy", {"subject_secret": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaabbc", "webhook_secret": GOOD}),
    ("LETHE_AUDIT_CHECKPOINT_FILE is not set", {"subject_secret": GOOD, "webhook_secret": GOOD2,
                                                "audit_checkpoint_file": ""}),
])
def test_a_deployment_refuses_to_start_with_weak_settings(tmp_path, missing, kw):
    with pytest.raises(InsecureSettings, match=missing):
        create_app(_deployment(tmp_path, **kw), dispatcher=RecordingDispatcher())
    pg = Settings(database_url="postgresql+psycopg://u@127.0.0.1:1/x", broker_url="",  # embedded on Postgres
                  **{"audit_checkpoint_file": "/tmp/x", **kw})
    with pytest.raises(InsecureSettings):
        pg.check_secrets()


def test_random_secrets_pass_and_obvious_ones_do_not():
    assert all(weak_secret(secrets.token_hex(16)) is None for _ in range(2000))
    assert all(weak_secret(secrets.token_urlsafe(24)) is None for _ in range(2000))
    for bad in ("0" * 32, "ab" * 16, "password" * 4, "short-but-random-9f8e"):
        assert weak_secret(bad) is not None, bad


def test_the_embedded_demo_and_a_configured_deployment_start(tmp_path):
    demo = Settings(database_url=f"sqlite:///{tmp_path}/demo.db", registry_dir=str(tmp_path / "r"),
                    data_dir=str(tmp_path / "d"), broker_url="")
    assert (demo.subject_secret, demo.webhook_secret) == (DEV_SUBJECT_SECRET, DEV_WEBHOOK_SECRET)
    create_app(demo, dispatcher=RecordingDispatcher())  # `make run` works out of the box
    create_app(_deployment(tmp_path, subject_secret=GOOD, webhook_secret=GOOD2), dispatcher=RecordingDispatcher())


def _env(tmp_path, **kw) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    env.update(LETHE_DATABASE_URL=f"sqlite:///{tmp_path}/lethe.db", LETHE_REGISTRY_DIR=str(tmp_path / "registry"),
               LETHE_DATA_DIR=str(tmp_path / "data"), LETHE_BROKER_URL="redis://127.0.0.1:6379/15",
               LETHE_WEBHOOK_SECRET=GOOD, LETHE_AUDIT_CHECKPOINT_FILE=str(tmp_path / "cp.jsonl"),
               PYTHONPATH=ROOT_DIR, **kw)
    return env


@pytest.mark.parametrize("command", ["migrate", "bootstrap"])
def test_migrate_and_bootstrap_refuse_before_touching_data(tmp_path, command):
    r = subprocess.run([sys.executable, "-m", "app.cli", command], env=_env(tmp_path), cwd=ROOT_DIR,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "LETHE_SUBJECT_SECRET" in r.stderr, (r.returncode, r.stderr[-2000:])
    assert not (tmp_path / "lethe.db").exists()  # not even created


def test_a_celery_worker_with_development_secrets_exits_non_zero(tmp_path):
    """Celery's signal dispatch swallowed the refusal and the worker reported ready; now it
    exits with status 2 before taking a task."""
    r = subprocess.run([sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool", "solo",
                        "--loglevel", "WARNING"], env=_env(tmp_path), cwd=ROOT_DIR, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 2 and "LETHE_SUBJECT_SECRET" in r.stderr, (r.returncode, r.stderr[-2000:])
    assert not (tmp_path / "lethe.db").exists()
