"""The claim a worker holds on a running job, and every write it makes under that claim.

One object, ``Lease``, per job attempt:

* as a context manager it keeps the job's heartbeat fresh from a daemon thread, whether or
  not the method reports progress (``jobs.touch`` every ``LETHE_JOB_LEASE_S`` / 6 s);
* ``beat(stage, fraction)`` writes progress to the job row (``jobs.heartbeat``);
* ``progress(lo, hi)`` is the ``progress(stage, fraction)`` callback a method receives:
  throttled beats mapped into [lo, hi] of the job's progress;
* ``record_plan(plan)`` writes the planner's choice to the job row (``jobs.record_plan``).

Each write carries the claim token: one the database refuses means another worker owns the
job now, and the next beat raises ``ClaimLost``, which stops the attempt. A database outage
does not stop it: the thread tries again at its next tick, or the lease expires and the
sweeper hands the job over. A member retrain of a sharded job running in a Celery task of
its own uses a lease without entering it: its beats, no thread (the parent's keeps the job).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from app.db import session_scope
from app.jobs import service as jobs
from app.settings import Settings

from .job import ClaimLost, JobSpec, default_worker_name, with_db_retry

log = logging.getLogger("lethe.worker")


class Lease:
    def __init__(self, s: Settings, spec: JobSpec):
        self.s, self.spec = s, spec
        self.every = max(0.5, s.job_lease_s / 6)
        self.lost = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"lease-{spec.job_id[:8]}", daemon=True)

    def __enter__(self) -> "Lease":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> bool:
        self.stop.set()
        self.thread.join(timeout=5)
        return False

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                with session_scope(self.s.database_url) as db:
                    if not jobs.touch(db, self.spec.job_id, self.spec.token):
                        self.lost = True
                        return
            except Exception as e:  # noqa: BLE001 - an outage: the next tick tries again
                log.warning("heartbeat of job %s failed: %s", self.spec.job_id, str(e).splitlines()[0][:200])

    def _lost(self) -> ClaimLost:
        return ClaimLost(f"job {self.spec.job_id} was taken over or finished elsewhere")

    def beat(self, stage: str, fraction: float) -> None:
        """Progress on the job row. The claim lost (here or seen by the thread) stops the job;
        a database outage does not (the thread keeps the job alive or lets it expire)."""
        from sqlalchemy.exc import OperationalError

        if self.lost:
            raise self._lost()
        try:
            with session_scope(self.s.database_url) as db:
                ok = jobs.heartbeat(db, self.spec.job_id, self.spec.token, stage=stage, fraction=fraction)
        except OperationalError as e:
            log.warning("progress of job %s not recorded: %s", self.spec.job_id, str(e).splitlines()[0][:200])
            return
        if not ok:
            raise self._lost()

    def progress(self, *, lo: float = 0.0, hi: float = 1.0, every_s: float = 0.5) -> Callable[[str, float], None]:
        """A method's ``progress(stage, fraction)``: a beat at most every ``every_s`` seconds
        (always at fraction 1), the fraction mapped into [lo, hi] of the job's progress."""
        last = float("-inf")

        def report(stage: str, fraction: float) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last < every_s and fraction < 1.0:
                return
            last = now
            self.beat(stage, lo + (hi - lo) * fraction)

        return report

    def record_plan(self, plan: dict) -> None:
        """The planner's choice on the job row (and its audit event)."""
        def record():
            with session_scope(self.s.database_url) as db:
                return jobs.record_plan(db, self.spec.job_id, self.spec.token, plan, worker=default_worker_name())

        if not with_db_retry(record, what=f"recording the plan of job {self.spec.job_id}"):
            raise self._lost()
        log.info("job %s plan: %s (%s)", self.spec.job_id, plan["method"], plan["reason"])
