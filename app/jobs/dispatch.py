"""How a job reaches a worker. Two implementations, one task function
(``worker.driver.execute_job``): ``worker.celery_app.CeleryDispatcher`` sends it to Celery,
``worker.embedded.EmbeddedWorker`` runs it on a thread inside the gateway.

Dispatch happens after the commit that accepted the request, and never fails the request:
``send_after_commit`` logs a fault and leaves the job ``queued`` in the database, where the
sweeper (``app/jobs/sweeper.py``) and the next start-up send it again."""
from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger("lethe.dispatch")


class Dispatcher(Protocol):
    def dispatch(self, job_id: str) -> None: ...

    def dispatch_training(self, run_id: str) -> None: ...  # POST /v1/models/{name}/train (worker/training.py)

    def ready(self) -> tuple[bool, str]: ...


def send_after_commit(dispatcher: Dispatcher, job_id: str | None) -> None:
    """Hand a committed job to the workers; a fault here is logged, not raised (the request
    is already accepted and recorded)."""
    if not job_id:
        return
    try:
        dispatcher.dispatch(job_id)
    except Exception as e:  # noqa: BLE001
        log.warning("dispatch of job %s failed after commit (%s: %s); the sweeper will send it again",
                    job_id, e.__class__.__name__, str(e)[:200])
