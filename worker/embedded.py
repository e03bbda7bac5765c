"""Embedded mode (no broker): a thread inside the gateway runs the very same
``execute_job`` the Celery task runs, one job at a time."""
from __future__ import annotations

import logging
import os
import queue
import socket
import threading

from app.db import session_scope
from app.settings import Settings

log = logging.getLogger("lethe.embedded")
_STOP = object()


class EmbeddedWorker:
    def __init__(self, settings: Settings, *, retry_delay_s: float = 2.0):
        self.settings = settings
        self.retry_delay_s = retry_delay_s
        self.queue: queue.Queue = queue.Queue()
        self.thread: threading.Thread | None = None
        self.name = f"embedded:{socket.gethostname()}:{os.getpid()}"

    def dispatch(self, job_id: str) -> None:
        self.queue.put(job_id)

    def dispatch_training(self, run_id: str) -> None:
        """A training run on its own thread: the model is not ready yet, so no forget job of it
        can wait behind it, and unlearning jobs of other models go on meanwhile."""
        from .training import run_training

        threading.Thread(target=run_training, args=(run_id,), kwargs={"settings": self.settings},
                         name=f"lethe-train-{run_id[:8]}", daemon=True).start()

    def ready(self) -> tuple[bool, str]:
        if not self.settings.embedded_worker:
            return True, "embedded worker disabled"
        alive = self.thread is not None and self.thread.is_alive()
        return alive, "ok" if alive else "embedded worker thread is not running"

    def start(self) -> None:
        if not self.settings.embedded_worker or (self.thread and self.thread.is_alive()):
            return
        from app.catalogue import service as catalogue
        from app.catalogue import subjects
        from app.jobs import service as jobs

        with session_scope(self.settings.database_url) as db:
            catalogue.purge_erased_raw(db)  # a crash after an erasure commit leaves no raw data behind
        subjects.erase_pending(self.settings)  # and no row of a subject erased everywhere
        with session_scope(self.settings.database_url) as db:
            jobs.release_orphans(db, "embedded:")  # one gateway per embedded database: earlier ones are gone
            for job_id in jobs.recoverable(db):
                self.queue.put(job_id)
        self.thread = threading.Thread(target=self._loop, name="lethe-embedded-worker", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        if self.thread and self.thread.is_alive():
            self.queue.put(_STOP)
            self.thread.join(timeout)

    def _loop(self) -> None:
        from .driver import execute_job

        while True:
            job_id = self.queue.get()
            if job_id is _STOP:
                return
            try:
                outcome = execute_job(job_id, settings=self.settings, worker_name=self.name, dispatch=self.dispatch)
            except Exception:  # noqa: BLE001 - never let the thread die
                log.exception("embedded worker: job %s crashed", job_id)
                outcome = "retry"
            if outcome in ("defer", "retry"):
                t = threading.Timer(self.retry_delay_s, self.queue.put, args=(job_id,))
                t.daemon = True
                t.start()
