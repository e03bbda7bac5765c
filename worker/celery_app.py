"""Celery: settings for long unlearning jobs, the task definitions, and the gateway's
dispatcher. The tasks only adapt Celery to ``worker.driver``, which does the work (the
embedded worker calls the same driver).

Tasks: ``lethe.run_job(job_id)`` runs a job (``driver.execute_job``). A sharded model's
member retrains fan out as a chord: a group of ``lethe.exact_member(spec, m)`` tasks
(``sharded.retrain_member``), joined
by the callback ``lethe.exact_assemble`` (``driver.finish_sharded``: verify, publish), with
the errback ``lethe.exact_failed`` (a member failed: nothing is published, the alias stays,
and the job is tried again while it has attempts left).

Settings:
- acks_late + reject_on_worker_lost: a job whose worker dies is redelivered, and the
  database (job attempts, claim token, one version per job) makes the redelivery safe.
- prefetch 1: a worker never holds a second job while it runs one.
- visibility_timeout longer than the longest job: Redis would otherwise redeliver a job
  still running (its default is 1 h).
Run one worker per GPU with ``celery -A worker.celery_app worker --pool=solo``; CUDA is
initialised in the task, never before a fork.
"""
from __future__ import annotations

import logging
import os
import sys
import queue
import threading
import time

from celery import Celery, chord, group
from celery.signals import setup_logging, worker_init, worker_ready

from app.settings import Settings, get_settings

from . import driver, sharded, training
from .job import JobSpec, default_worker_name


def make_celery(settings: Settings, *, results: bool = True) -> Celery:
    """``results=False`` for the gateway: it only sends ``lethe.run_job`` and never waits
    for a result, so it must not subscribe to a result backend (with Redis down, that
    subscription retried for ~20 s inside the HTTP request)."""
    app = Celery("lethe", broker=settings.broker_url or None)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        task_default_queue=settings.queue_name,
        task_ignore_result=True,
        # chords (exact-unlearning member retrains) join on stored results
        result_backend=(settings.broker_url or None) if results else None,
        broker_connection_retry_on_startup=True,
    )
    return app


log = logging.getLogger("lethe.dispatch")
celery_app = make_celery(get_settings())


@setup_logging.connect
def _json_logs(**_):
    """Celery leaves logging to us: the same JSON lines (with job ids) as the gateway."""
    from app.observability import configure_logging

    configure_logging(get_settings().log_format)


@worker_init.connect
def _refuse_development_secrets(**_):
    """A worker writes subject references and webhook rows: with development or weak secrets
    it exits (status 2) before it takes a task. Celery's signal dispatch logs and swallows an
    exception raised here, so the refusal ends the process itself."""
    from app.settings import InsecureSettings

    try:
        get_settings().check_secrets()
    except InsecureSettings as e:
        logging.getLogger("lethe.worker").critical("refusing to start: %s", e)
        sys.stderr.write(f"refusing to start: {e}\n")
        sys.stderr.flush()
        os._exit(2)


@worker_ready.connect
def _sweep_weights_cache(**_):
    """With weights on an object store: drop cached weights whose objects were purged by
    another node every LETHE_CACHE_SWEEP_S, also while no job comes (each job checks at its
    start and end too)."""
    s = get_settings()
    if not s.registry_url:
        return

    def loop():
        while True:
            time.sleep(s.cache_sweep_s)
            driver.reconcile_cache(s)

    threading.Thread(target=loop, name="lethe-cache-sweep", daemon=True).start()


def _name(task) -> str:
    return f"celery:{task.request.hostname}:{os.getpid()}"


@celery_app.task(name="lethe.run_job", bind=True, acks_late=True, max_retries=None)
def run_job(self, job_id: str) -> str:
    s = get_settings()
    outcome = driver.execute_job(job_id, worker_name=_name(self), fan_out=_chord if s.exact_fan_out else None,
                                 dispatch=lambda next_job: run_job.apply_async((next_job,), countdown=3))
    if outcome == "defer":
        raise self.retry(countdown=3)
    if outcome == "retry":
        raise self.retry(countdown=min(60, 2 ** (self.request.retries or 0)))
    return outcome


@celery_app.task(name="lethe.train_model", bind=True, acks_late=True)
def train_model(self, run_id: str) -> str:
    """POST /v1/models/{name}/train: a training run (worker/training.py); a redelivered
    message finds the run taken and does nothing."""
    return training.run_training(run_id, worker_name=_name(self))


def _chord(spec: dict) -> None:
    """Member retrains as a group across all workers, joined by a chord (needs the result backend)."""
    callback = exact_assemble.s(spec).on_error(exact_failed.s(spec))
    chord(group(exact_member.s(spec, m) for m in spec["affected"]), callback).apply_async()


@celery_app.task(name="lethe.exact_member", bind=True, acks_late=True, ignore_result=False)
def exact_member(self, spec: dict, member: int) -> dict:
    return sharded.retrain_member(get_settings(), JobSpec.from_json(spec), member)


@celery_app.task(name="lethe.exact_assemble", bind=True, acks_late=True, ignore_result=False)
def exact_assemble(self, results: list[dict], spec: dict) -> str:
    return driver.finish_sharded(get_settings(), JobSpec.from_json(spec), results, _name(self))


@celery_app.task(name="lethe.exact_failed")
def exact_failed(request, exc, traceback, spec: dict) -> str:
    """The chord's errback: a member retrain failed, so nothing is published and the attempt
    fails; while attempts are left the job is queued again and sent after a back-off (a new
    claim, a new chord), else it fails for good with this error."""
    job = JobSpec.from_json(spec)
    outcome = driver.fail_job(get_settings(), job, f"member retrain failed: {exc.__class__.__name__}: {exc}",
                              f"celery:{default_worker_name()}", retryable=True)
    if outcome == "retry":
        run_job.apply_async((job.job_id,), countdown=5)
    return outcome


class CeleryDispatcher:
    """Gateway side: sends job ids to the Celery queue (the same task name the worker runs).

    ``dispatch`` only puts the id on an in-process queue and returns: a sender thread
    publishes it, so an HTTP answer never waits on the broker and a broker fault after the
    commit never turns an accepted request into an error. A failed send is retried by the
    thread with backoff (``RETRY_S``); if the process dies first, the job is still ``queued``
    in the database and the sweeper (or the next start) sends it again — claiming makes
    duplicates harmless."""

    RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0)

    def __init__(self, settings: Settings):
        self.settings = settings
        self.celery = make_celery(settings, results=False)
        self._outbox: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.sent = self.failed = 0

    def dispatch(self, job_id: str) -> None:
        self._ensure_thread()
        self._outbox.put((job_id, 0))

    def send_now(self, job_id: str) -> None:
        """Publish at once (raises on a broker fault); the sender thread calls this."""
        self.celery.send_task("lethe.run_job", args=[job_id], queue=self.settings.queue_name, ignore_result=True,
                              retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2,
                                                        "interval_step": 0.5, "interval_max": 1.0})

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every dispatched id was sent or given up for now; True when empty."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._outbox.unfinished_tasks == 0:
                return True
            time.sleep(0.02)
        return False

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="lethe-dispatch", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            job_id, tries = self._outbox.get()
            try:
                self.send_now(job_id)
                self.sent += 1
            except Exception as e:  # noqa: BLE001 - the job stays queued in the database
                self.failed += 1
                delay = self.RETRY_S[min(tries, len(self.RETRY_S) - 1)]
                log.warning("dispatch of job %s failed (%s: %s); retrying in %.0f s", job_id,
                            e.__class__.__name__, str(e)[:200], delay)
                t = threading.Timer(delay, self._outbox.put, args=((job_id, tries + 1),))
                t.daemon = True
                t.start()
            finally:
                self._outbox.task_done()

    def dispatch_training(self, run_id: str) -> None:
        """A training run (POST /v1/models/{name}/train): task lethe.train_model in worker/training.py."""
        self.celery.send_task("lethe.train_model", args=[run_id], queue=self.settings.queue_name, ignore_result=True)

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
        except Exception:  # noqa: BLE001 - readiness reports database trouble
            log.exception("could not list the jobs to re-send at start")
