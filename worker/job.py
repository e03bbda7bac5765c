"""What every module of the worker shares about one job: its spec (``JobSpec``), what an
execution path hands back (``Built``), how an attempt ends early (``JobFailed`` and its kinds),
the publishing gate (``verify``) and the database retry (``with_db_retry``).

Nothing here runs a job: ``worker.driver`` is the lifecycle, ``worker.lease`` the claim held
while it runs, ``worker.instance_wise`` and ``worker.sharded`` the execution paths.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

from app.jobs import publishing
from app.settings import Settings

log = logging.getLogger("lethe.worker")


@dataclass
class JobSpec:
    """What every step of a claimed job needs. JSON-serialisable: it travels in Celery
    messages to member tasks. ``base_path`` is the base version's storage path as the
    registry records it: relative to the registry directory."""

    job_id: str
    token: str
    model_name: str
    family: str
    method: str                  # as requested: a catalogue name, possibly a choice ("instance")
    objective: str
    target_label: int | None
    base_path: str
    base_sha: str
    base_version: int
    forget_ids: list[str]
    t0: float = field(default_factory=time.time)
    affected: list[int] = field(default_factory=list)  # sharded: the members a deletion retrains
    recipe: dict | None = None   # the model's stored training recipe (models.train.Recipe): retraining uses it
    dataset: str = ""            # the registered dataset whose store holds the model's rows
    plan: dict | None = None     # a consolidation job's plan as requested (why it retrains)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "JobSpec":
        return cls(**d)


class JobFailed(Exception):
    """A final failure: the job fails now, no retry (the request says why)."""

    def __init__(self, message: str, metrics: dict | None = None):
        super().__init__(message)
        self.metrics = metrics


class VerificationFailed(JobFailed):
    """The new model did not pass ``verify``; its metrics are recorded with the refusal."""


class ClaimLost(JobFailed):
    """Another worker owns the job now (its claim token replaced ours)."""


@dataclass
class Built:
    """What an execution path hands the lifecycle: the evidence to verify, and how to write
    and publish the new version once it passed."""

    metrics: dict | None
    stats: dict
    write: Callable[[], tuple[str, str]] | None = None    # -> (sha256, storage path)
    in_publish: Callable[..., None] | None = None         # extra writes in the publishing transaction
    after_publish: Callable[[], object] | None = None      # clean-up once the transaction committed


def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def verify(s: Settings, objective: str, m: dict) -> None:
    """Publish only a model that did what was asked without wrecking the rest: raise
    ``VerificationFailed`` for what ``app.jobs.publishing.refusals`` names (the limit is
    recorded with the refused metrics)."""
    problems = publishing.refusals(objective, m, max_test_accuracy_drop=s.max_test_accuracy_drop)
    if problems:
        m.setdefault("max_test_accuracy_drop", s.max_test_accuracy_drop)
        raise VerificationFailed("; ".join(problems), metrics=m)


def with_db_retry(fn, *, what: str, waits=(0.5, 1, 2, 4, 8, 15)):
    """A database outage must not kill the record of a job: retry for ~30 s, then give up
    (the job's lease expires and the sweeper takes it over)."""
    from sqlalchemy.exc import OperationalError

    for wait in (*waits, None):
        try:
            return fn()
        except OperationalError as e:
            if wait is None:
                raise
            log.warning("database unavailable while %s (%s); retrying in %s s", what,
                        str(e).splitlines()[0][:200], wait)
            time.sleep(wait)
