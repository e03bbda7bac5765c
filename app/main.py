"""create_app(): routers, error handlers, body-size limit, and the worker wiring."""
from __future__ import annotations

import logging
import os
import re
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import text

from . import errors, limits, security
from .audit.checkpoints import Checkpointer
from .audit.router import keys_router
from .audit.service import AuditDrainer
from .audit.router import router as audit_router
from .catalogue.router import router as subjects_router
from .dashboard.router import CookieBearer
from .datasets import service as datasets_service
from .datasets.router import router as datasets_router
from .dashboard.router import router as dashboard_router
from .db import get_engine
from .deps import dispose_async_engine
from .forget.router import router as forget_router
from .jobs.dispatch import Dispatcher
from .limits import JsonDepthLimit
from .security.ratelimit import EXPENSIVE, SUBMIT, RateLimiter
from .metrics import Metrics
from .observability import RequestContext
from .jobs.sweeper import Sweeper
from .forget.nodata import NoDataResolver
from .registry.router import architectures_router, router as models_router, trainers_router
from .registry.orders_router import issue_router as order_issue_router, router as orders_router
from .registry.weights import router as weights_router
from .events.router import router as events_router
from .mirror.router import router as mlflow_router
from .mirror.service import MirrorPump
from .tenants.router import router as tenants_router
from .registry.service import ServingCache
from .settings import Settings, get_settings
from .webhooks.service import WebhookPump

log = logging.getLogger("lethe")


class BodyLimit:
    """Refuse request bodies above ``limit`` bytes with 413 (checks Content-Length and
    counts streamed chunks, so a chunked upload cannot slip past). ``overrides`` maps
    (method, path) to another limit (the weights upload); a path ending in ``/*/weights``
    stands for any one path segment there (a retrain order's upload)."""

    def __init__(self, app, limit: int, overrides: dict | None = None):
        self.app, self.limit, self.overrides = app, limit, overrides or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method, path = scope.get("method"), scope.get("path") or ""
        limit = self.overrides.get((method, path))
        if limit is None and path.endswith("/weights"):
            head = path[:-len("/weights")].rpartition("/")[0]
            limit = self.overrides.get((method, head + "/*/weights"))
        limit = self.limit if limit is None else limit
        for k, v in scope.get("headers", []):
            if k == b"content-length" and v.isdigit() and int(v) > limit:
                return await self._too_large(send, limit)
        seen = 0

        async def limited():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:  # FastAPI re-raises only HTTPException from body reading: 413 body_too_large
                    raise HTTPException(413, f"request body exceeds {limit} bytes")
            return msg

        await self.app(scope, limited, send)

    async def _too_large(self, send, limit: int):
        resp = errors.error_response(413, "body_too_large", f"request body exceeds {limit} bytes")
        await send({"type": "http.response.start", "status": 413, "headers": resp.raw_headers})
        await send({"type": "http.response.body", "body": resp.body})


class _RedactSubjects(logging.Filter):
    """Subject ids appear in a URL path (/v1/subjects/<id>/...); keep them out of access logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args and isinstance(record.args, tuple):
            record.args = tuple(_SUBJECT_PATH.sub(r"\1<redacted>", a) if isinstance(a, str) else a
                                for a in record.args)
        return True


_SUBJECT_PATH = re.compile(r"(/v1/subjects/)[^/?\s]+")


def _redact_access_log() -> None:
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _RedactSubjects) for f in logger.filters):
        logger.addFilter(_RedactSubjects())


class Readiness(BaseModel):
    """The readiness probe's report, the same shape whether ready (200) or not (503)."""

    status: str = Field(examples=["ready"], description="ready | not ready")
    checks: dict[str, str] | None = Field(default=None, examples=[{"database": "ok", "registry": "ok", "worker": "ok"}],
                                          description="each dependency: ok, or error: <why> (models:admin keys only)")


def _default_dispatcher(settings: Settings) -> Dispatcher:
    if settings.broker_url:
        from worker.celery_app import CeleryDispatcher

        return CeleryDispatcher(settings)
    from worker.embedded import EmbeddedWorker

    return EmbeddedWorker(settings)


class SecurityHeaders:
    """Browser hardening on every answer: no framing (X-Frame-Options, frame-ancestors), no
    MIME sniffing, no Referer leaving the site; the dashboard also gets a strict CSP (its one
    inline script allowed by hash, nothing loaded from elsewhere)."""

    COMMON = [(b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"),
              (b"referrer-policy", b"no-referrer")]

    def __init__(self, app):
        from .dashboard.router import CSP

        self.app, self.csp = app, CSP.encode("ascii")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        extra = list(self.COMMON)
        if scope["path"] == "/dashboard" or scope["path"].startswith("/dashboard/"):
            extra.append((b"content-security-policy", self.csp))

        async def send_with_headers(msg):
            if msg["type"] == "http.response.start":
                have = {k.lower() for k, _ in msg.get("headers", [])}
                msg = {**msg, "headers": [*msg.get("headers", []), *[(k, v) for k, v in extra if k not in have]]}
            await send(msg)

        await self.app(scope, receive, send_with_headers)


def _metrics_listener(settings: Settings, metrics: Metrics):
    """``LETHE_METRICS_BIND=host:port``: Prometheus text on its own listener (an internal
    address), not on the public API port."""
    if not settings.metrics_bind:
        return None
    from prometheus_client import start_http_server

    host, _, port = settings.metrics_bind.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=metrics.registry)
    log.info("metrics on http://%s/metrics", settings.metrics_bind)
    return server


def _telemetry() -> dict:
    """FastAPI's native OpenTelemetry: on when the process is set up for it (an ``OTEL_``
    variable, FastAPI's ``FASTAPI_OTEL_AUTO_CONFIGURE``), else off, decided once: left on,
    it asked the global providers (environment lookups) on every request, about 1.5% of a
    submission's CPU with nothing to export to (issue 16). Lethe's own metrics and logs are
    Prometheus and app.observability."""
    wanted = any(k.startswith("OTEL_") or k == "FASTAPI_OTEL_AUTO_CONFIGURE" for k in os.environ)
    return {} if wanted else {"tracing": False, "metrics": False, "logs": False}


def create_app(settings: Settings | None = None, dispatcher: Dispatcher | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.check_secrets()  # no development secrets outside the embedded demo
    settings.ensure_dirs()
    dispatcher = dispatcher or _default_dispatcher(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        security.bootstrap_keys(settings)  # a fresh install gets its first (admin) API key
        datasets_service.recover(settings)  # an ingestion cut short by a stop is marked failed
        start = getattr(dispatcher, "start", None)
        if start:
            start()
        # each off when its period is 0
        background = [Sweeper(settings, dispatcher), WebhookPump(settings), Checkpointer(settings),
                      AuditDrainer(settings), NoDataResolver(settings), MirrorPump(settings)]
        for b in background:
            b.start()
        metrics_server = _metrics_listener(settings, app.state.metrics)
        try:
            yield
        finally:
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            for b in background:
                b.stop()
            stop = getattr(dispatcher, "stop", None)
            if stop:
                stop()
            await dispose_async_engine(app.state)  # the hot routes' connections (app/deps.py)

    app = FastAPI(title="Lethe", version="0.1.0", lifespan=lifespan, telemetry=_telemetry(),
                  description="Machine-unlearning service: takes deletion requests and makes the served model "
                              "forget, with a versioned registry and a hash-chained audit trail.")
    app.state.limiter = RateLimiter({SUBMIT: settings.rate_submit_per_min, EXPENSIVE: settings.rate_expensive_per_min})
    app.state.settings, app.state.dispatcher, app.state.serving = settings, dispatcher, ServingCache()
    for r in (forget_router, mlflow_router, models_router, weights_router, architectures_router, trainers_router,
              datasets_router, subjects_router, audit_router, keys_router, tenants_router, events_router,
              dashboard_router, orders_router, order_issue_router):
        app.include_router(r)
    errors.install(app)  # every error answer is {code, detail}
    security.install(app)  # scopes published in OpenAPI (x-required-scopes)
    errors.document(app)  # ... and each route's error statuses, with ErrorResponse
    limits.document(app)  # ... and the character rules every string parameter and body field obeys
    _redact_access_log()

    @app.get("/healthz", tags=["health"], summary="The process is up (open)")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], response_model=Readiness, response_model_exclude_none=True,
             summary="Database, registry and broker or worker reachable (open; the checks for an operator)",
             responses={503: {"model": Readiness, "description": "not ready (the checks only for an operator's key)"}})
    def readyz(request: Request):
        """Open: ``{status: ready | not ready}`` (200 / 503). The checks and their errors are
        shown only to an operator's key (models:admin): error text names hosts and paths."""
        checks: dict[str, str] = {}
        ok = True
        try:
            with get_engine(settings.database_url).connect() as c:
                c.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as e:  # noqa: BLE001
            ok, checks["database"] = False, f"error: {e.__class__.__name__}: {e}"[:300]
        if os.path.isdir(settings.registry_dir) and os.access(settings.registry_dir, os.W_OK):
            checks["registry"] = "ok"
        else:
            ok, checks["registry"] = False, f"error: {settings.registry_dir} missing or not writable"
        b_ok, b_msg = dispatcher.ready()
        checks["broker" if settings.broker_url else "worker"] = "ok" if b_ok else f"error: {b_msg}"
        ok = ok and b_ok
        answer: dict = {"status": "ready" if ok else "not ready"}
        who = security.optional_principal(request)
        if who is not None and security.MODELS_ADMIN in who.scopes:
            answer["checks"] = checks
        elif not ok:
            log.warning("not ready: %s", checks)
        return JSONResponse(answer, status_code=200 if ok else 503)

    app.state.metrics = metrics = Metrics(settings.database_url)

    if not settings.metrics_bind:  # else a separate listener serves them (lifespan)
        guard = [] if settings.metrics_open else \
            [Depends(security.require_scope(security.METRICS_READ, security.MODELS_ADMIN))]

        @app.get("/metrics", tags=["health"], include_in_schema=False, dependencies=guard)
        def prometheus_metrics():  # a Prometheus key holds metrics:read (bearer_token in the scrape config)
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(JsonDepthLimit)  # deep JSON is a 422 before anything parses it (inside BodyLimit)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes,
                       overrides={("POST", "/v1/models"): settings.max_upload_bytes,  # weights upload
                                  ("PUT", "/v1/retrain-orders/*/weights"): settings.max_upload_bytes,
                                  # a dataset and its evaluation file; each is checked against the limit
                                  ("POST", "/v1/datasets"): 2 * settings.max_dataset_bytes + 1_000_000})
    app.add_middleware(CookieBearer)  # /dashboard: the key cookie becomes a bearer token
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestContext, metrics=metrics)  # outermost: every response gets a request id
    return app


def worker_process_app() -> FastAPI:
    """The app of one gateway process when ``LETHE_WEB_CONCURRENCY`` > 1 (uvicorn's factory,
    called in each worker process, which configures its own logging)."""
    from .observability import configure_logging

    settings = get_settings()
    configure_logging(settings.log_format)
    app = create_app(settings)
    tune_gc()
    return app


def tune_gc() -> None:
    """A serving process's garbage collector: what was built at start-up (modules, the app)
    is frozen out of every later collection, and the youngest generation is collected every
    10,000 net allocations instead of 700. A request allocates thousands of short-lived
    objects (SQLAlchemy, pydantic), so at the default a submission triggered several
    collections; measured at 32 clients (issue 16): POST 359 -> 387 req/s, p99 213 -> 205 ms;
    GET 556 -> 616 req/s, p99 145 -> 99 ms. Called once the app is built."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
