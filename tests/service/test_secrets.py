"""Issue 15 finding 6: the development secrets are refused outside the embedded demo (with
them, HMAC("alice") matched the catalogue and anyone could forge webhooks)."""
import pytest

from app.main import create_app
from app.settings import DEV_SUBJECT_SECRET, DEV_WEBHOOK_SECRET, InsecureSettings, Settings

from .conftest import RecordingDispatcher


def _deployment(tmp_path, **kw) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path}/lethe.db", registry_dir=str(tmp_path / "registry"),
                    data_dir=str(tmp_path / "data"), broker_url="redis://127.0.0.1:1/0", **kw)


@pytest.mark.parametrize("missing,kw", [
    ("LETHE_SUBJECT_SECRET and LETHE_WEBHOOK_SECRET", {}),
    ("LETHE_SUBJECT_SECRET", {"webhook_secret": "a-real-webhook-secret-123"}),
    ("LETHE_WEBHOOK_SECRET", {"subject_secret": "a-real-subject-secret-123"}),
    ("LETHE_WEBHOOK_SECRET", {"subject_secret": "a-real-subject-secret-123", "webhook_secret": "short"}),
])
def test_a_deployment_refuses_to_start_with_development_secrets(tmp_path, missing, kw):
    with pytest.raises(InsecureSettings, match=missing):
        create_app(_deployment(tmp_path, **kw), dispatcher=RecordingDispatcher())
    pg = Settings(database_url="postgresql+psycopg://u@127.0.0.1:1/x", broker_url="", **kw)  # embedded on Postgres
    with pytest.raises(InsecureSettings):
        pg.check_secrets()


def test_the_embedded_demo_and_a_configured_deployment_start(tmp_path):
    demo = Settings(database_url=f"sqlite:///{tmp_path}/demo.db", registry_dir=str(tmp_path / "r"),
                    data_dir=str(tmp_path / "d"), broker_url="")
    assert (demo.subject_secret, demo.webhook_secret) == (DEV_SUBJECT_SECRET, DEV_WEBHOOK_SECRET)
    create_app(demo, dispatcher=RecordingDispatcher())  # `make run` works out of the box
    create_app(_deployment(tmp_path, subject_secret="a-real-subject-secret-123",
                           webhook_secret="a-real-webhook-secret-123"), dispatcher=RecordingDispatcher())


def test_a_celery_worker_refuses_development_secrets(monkeypatch):
    from app.settings import get_settings
    from worker.celery_app import _refuse_development_secrets

    monkeypatch.setenv("LETHE_BROKER_URL", "redis://127.0.0.1:1/0")
    monkeypatch.delenv("LETHE_SUBJECT_SECRET", raising=False)
    monkeypatch.setenv("LETHE_WEBHOOK_SECRET", "a-real-webhook-secret-123")
    get_settings.cache_clear()
    try:
        with pytest.raises(InsecureSettings, match="LETHE_SUBJECT_SECRET"):
            _refuse_development_secrets()
    finally:
        get_settings.cache_clear()
