"""Celery settings for long unlearning jobs.

- acks_late + reject_on_worker_lost: a job whose worker dies is redelivered, and the
  database (job attempts, claim token, one version per job) makes the redelivery safe.
- prefetch 1: a worker never holds a second job while it runs one.
- visibility_timeout longer than the longest job: Redis would otherwise redeliver a job
  still running (its default is 1 h).
Run one worker per GPU with ``celery -A worker.celery_app worker --pool=solo``; CUDA is
initialised in the task, never before a fork.
"""
from __future__ import annotations

from celery import Celery
from celery.signals import setup_logging, worker_init

from app.settings import Settings, get_settings


def make_celery(settings: Settings) -> Celery:
    app = Celery("lethe", broker=settings.broker_url or None, include=["worker.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        task_default_queue=settings.queue_name,
        task_ignore_result=True,
        # chords (exact-unlearning member retrains) join on stored results
        result_backend=settings.broker_url or None,
        broker_connection_retry_on_startup=True,
    )
    return app


celery_app = make_celery(get_settings())


@setup_logging.connect
def _json_logs(**_):
    """Celery leaves logging to us: the same JSON lines (with job ids) as the gateway."""
    from app.observability import configure_logging

    configure_logging(get_settings().log_format)


@worker_init.connect
def _refuse_development_secrets(**_):
    get_settings().check_secrets()  # a worker writes subject references and webhook rows


class CeleryDispatcher:
    """Gateway side: sends job ids to the Celery queue (the same task name the worker runs)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.celery = make_celery(settings)

    def dispatch(self, job_id: str) -> None:
        self.celery.send_task("lethe.run_job", args=[job_id], queue=self.settings.queue_name)

    def ready(self) -> tuple[bool, str]:
        try:
            with self.celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            return True, "ok"
        except Exception as e:  # noqa: BLE001
            return False, f"{e.__class__.__name__}: {e}"[:300]

    def start(self) -> None:
        """Re-send jobs a crash may have left undelivered; claiming makes duplicates harmless."""
        from app.db import session_scope
        from app.jobs import service as jobs

        try:
            with session_scope(self.settings.database_url) as db:
                pending = jobs.recoverable(db)
            for job_id in pending:
                self.dispatch(job_id)
        except Exception:  # noqa: BLE001 - readiness reports broker trouble
            pass
