"""How a job reaches a worker. Two implementations, one task function
(``worker.driver.execute_job``): ``worker.celery_app.CeleryDispatcher`` sends it to Celery,
``worker.embedded.EmbeddedWorker`` runs it on a thread inside the gateway."""
from __future__ import annotations

from typing import Protocol


class Dispatcher(Protocol):
    def dispatch(self, job_id: str) -> None: ...

    def dispatch_training(self, run_id: str) -> None: ...  # POST /v1/models/{name}/train (worker/training.py)

    def ready(self) -> tuple[bool, str]: ...
