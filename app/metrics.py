"""Prometheus metrics, served by the gateway at ``/metrics``.

Two sources:
- HTTP traffic, counted in this process (``lethe_http_requests_total``,
  ``lethe_http_request_duration_seconds``);
- the state of the service, read from the database at scrape time by ``StateCollector``,
  so the figures are the same whichever process (gateway thread or Celery worker) did the
  work: forget requests by status, overdue open requests, queue depth, job durations by
  method, time to completion against the due date, and the verification metrics of the
  latest version of each model.
Each app gets its own ``CollectorRegistry`` (tests build many apps in one process).
"""
from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy import func, select

from .db import session_scope, utcnow

log = logging.getLogger("lethe.metrics")

JOB_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 24 * 3600)
# completion time as a fraction of the time the request was given (due_at - received_at):
# <= 1 on time, > 1 late
DEADLINE_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.5, 2.0)
QUALITY_KEYS = ("ua", "ra", "ta", "mia_efficacy", "loss_auc", "flip_rate", "ta_drop")


def _histogram(name: str, doc: str, labels: list[str], groups: dict[tuple, list[float]], buckets) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, doc, labels=labels)
    for key, values in sorted(groups.items()):
        counts = [sum(1 for v in values if v <= b) for b in buckets]
        fam.add_metric(list(key), [(str(float(b)), c) for b, c in zip(buckets, counts)] + [("+Inf", len(values))],
                       sum(values))
    return fam


class StateCollector:
    """Reads the database on every scrape (a handful of small queries)."""

    def __init__(self, database_url: str):
        self.database_url = database_url

    def describe(self):
        return []  # no metric descriptions up front: collect() runs only when scraped

    def collect(self):
        from .forget.models import ForgetRequest
        from .jobs.models import Job
        from .registry.models import ModelVersion, RetrainOrder

        try:
            with session_scope(self.database_url) as db:
                now = utcnow()
                req_status = db.execute(select(ForgetRequest.status, func.count()).group_by(ForgetRequest.status)).all()
                overdue = db.execute(select(func.count()).select_from(ForgetRequest).where(
                    ForgetRequest.status.in_(["queued", "running"]), ForgetRequest.due_at < now)).scalar()
                job_status = db.execute(select(Job.status, func.count()).group_by(Job.status)).all()
                finished_jobs = db.execute(select(Job.method, Job.status, Job.started_at, Job.finished_at).where(
                    Job.status.in_(["completed", "failed"]), Job.started_at.is_not(None),
                    Job.finished_at.is_not(None))).all()
                completed = db.execute(select(ForgetRequest.model_name, ForgetRequest.received_at,
                                              ForgetRequest.due_at, ForgetRequest.completed_at).where(
                    ForgetRequest.status == "completed", ForgetRequest.completed_at.is_not(None))).all()
                order_states = db.execute(select(RetrainOrder.status, RetrainOrder.escalated_at.is_not(None),
                                                 func.count()).group_by(RetrainOrder.status,
                                                                        RetrainOrder.escalated_at.is_not(None))).all()
                latest = db.execute(select(ModelVersion.model_name, func.max(ModelVersion.version))
                                    .group_by(ModelVersion.model_name)).all()
                versions = [db.execute(select(ModelVersion).where(ModelVersion.model_name == m,
                                                                  ModelVersion.version == v)).scalar_one()
                            for m, v in latest]
        except Exception:  # noqa: BLE001 - a scrape must not fail because the database is down
            log.exception("metrics: reading the database failed")
            up = GaugeMetricFamily("lethe_state_up", "1 when the database could be read for these metrics")
            up.add_metric([], 0)
            yield up
            return
        up = GaugeMetricFamily("lethe_state_up", "1 when the database could be read for these metrics")
        up.add_metric([], 1)
        yield up
        from .audit.checkpoints import Anchor

        g = GaugeMetricFamily("lethe_audit_anchor_ok", "0 when this process's checkpointer refused to sign the audit "
                                                       "chain (it does not follow from its signed checkpoints); alert on 0")
        g.add_metric([], 1 if Anchor.ok else 0)
        yield g

        g = GaugeMetricFamily("lethe_forget_requests", "forget requests by status", labels=["status"])
        for status, n in sorted(req_status):
            g.add_metric([status], n)
        yield g
        g = GaugeMetricFamily("lethe_forget_requests_overdue", "queued or running requests past their due date")
        g.add_metric([], overdue)
        yield g
        g = GaugeMetricFamily("lethe_retrain_orders", "retrain orders to the customers' pipelines by status and "
                                                      "whether they were escalated (app/registry/orders.py)",
                              labels=["status", "escalated"])
        for status, escalated, n in sorted(order_states):
            g.add_metric([status, "true" if escalated else "false"], n)
        yield g
        jobs = dict(job_status)
        g = GaugeMetricFamily("lethe_queue_depth", "jobs waiting for a worker (status queued)")
        g.add_metric([], jobs.get("queued", 0))
        yield g
        g = GaugeMetricFamily("lethe_jobs", "jobs by status", labels=["status"])
        for status, n in sorted(jobs.items()):
            g.add_metric([status], n)
        yield g

        durations: dict[tuple, list[float]] = {}
        for method, status, started, finished in finished_jobs:
            durations.setdefault((method, status), []).append(max(0.0, (finished - started).total_seconds()))
        yield _histogram("lethe_job_duration_seconds", "finished jobs: started_at to finished_at, by method",
                         ["method", "status"], durations, JOB_BUCKETS)

        ttc: dict[tuple, list[float]] = {}
        used: dict[tuple, list[float]] = {}
        for model, received, due, done in completed:
            took = max(0.0, (done - received).total_seconds())
            allowed = max(1.0, (due - received).total_seconds())
            ttc.setdefault((model,), []).append(took)
            used.setdefault((model,), []).append(took / allowed)
        yield _histogram("lethe_forget_time_to_completion_seconds", "completed requests: received_at to completed_at",
                         ["model"], ttc, JOB_BUCKETS)
        yield _histogram("lethe_forget_deadline_used_ratio",
                         "completed requests: time taken / time allowed until the due date (> 1 = late)",
                         ["model"], used, DEADLINE_BUCKETS)

        q = GaugeMetricFamily("lethe_model_quality", "verification metrics of the latest version of each model "
                                                     "(percent, except loss_auc)", labels=["model", "metric"])
        lv = GaugeMetricFamily("lethe_model_latest_version", "latest version number of each model", labels=["model"])
        for v in versions:
            lv.add_metric([v.model_name], v.version)
            for k in QUALITY_KEYS:
                val = (v.metrics or {}).get(k)
                if isinstance(val, (int, float)) and not isinstance(val, bool):
                    q.add_metric([v.model_name, k], float(val))
        yield lv
        yield q


class Metrics:
    def __init__(self, database_url: str):
        self.registry = CollectorRegistry(auto_describe=False)
        self.http_requests = Counter("lethe_http_requests_total", "HTTP requests served, by route template and status",
                                     ["method", "route", "status"], registry=self.registry)
        self.http_duration = Histogram("lethe_http_request_duration_seconds", "HTTP request latency",
                                       ["method", "route"], registry=self.registry)
        self.registry.register(StateCollector(database_url))

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_duration.labels(method, route).observe(seconds)
