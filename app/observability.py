"""Structured logs: one JSON object per line, with the request id (gateway) or job id
(worker) of the work that wrote it.

No personal data: the gateway logs each request with its *route template*
(``/v1/subjects/{subject_id}/instances``), never the raw path or query string (a subject
id or a dashboard key can be in them), and no code logs subject ids or subject references.
"""
from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import re
import time
import uuid
from typing import Iterator

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("lethe_request_id", default=None)
job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("lethe_job_id", default=None)

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_STD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName",
                                                                             "color_message"}

access_log = logging.getLogger("lethe.access")
# the request id also rides in the ASGI scope: an unhandled exception reaches the outermost
# handler (app.errors) after the contextvar has been reset
REQUEST_ID_KEY = "lethe.request_id"
# polled every few seconds: their successful calls are logged at DEBUG, not INFO
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics", "/dashboard/live.json"})


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "request_id"?, "job_id"?, ...extra, "exc"?}``."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
               "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        rid, jid = request_id_var.get(), job_id_var.get()
        if rid:
            out["request_id"] = rid
        if jid:
            out["job_id"] = jid
        for k, v in record.__dict__.items():
            if k not in _STD_ATTRS and not k.startswith("_") and k not in out:
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        ids = " ".join(f"{k}={v}" for k, v in (("request_id", request_id_var.get()), ("job_id", job_id_var.get())) if v)
        return super().format(record) + (f" [{ids}]" if ids else "")


def configure_logging(fmt: str = "json", level: int = logging.INFO) -> None:
    """Route the root logger (and uvicorn's, celery's) through one handler on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # raw paths; RequestContext logs instead
    for name in ("httpx", "httpcore"):  # full URLs at INFO
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def job_context(job_id: str) -> Iterator[None]:
    token = job_id_var.set(job_id)
    try:
        yield
    finally:
        job_id_var.reset(token)


def _route_template(scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return path or "<unmatched>"


class RequestContext:
    """ASGI middleware: a request id per request (the caller's ``X-Request-ID`` when it is
    a short safe token, else a new one), echoed in the response header and attached to every
    log line written while the request is served; one access line per request; HTTP
    metrics when ``metrics`` is given."""

    def __init__(self, app, metrics=None):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _SAFE_ID.match(given) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        scope[REQUEST_ID_KEY] = rid
        status = [500]
        t0 = time.perf_counter()

        async def send_with_id(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
                msg = {**msg, "headers": [*msg.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(msg)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - t0
            route = _route_template(scope)
            if self.metrics is not None:
                self.metrics.observe_http(scope["method"], route, status[0], elapsed)
            level = logging.DEBUG if route in QUIET_ROUTES and status[0] < 400 else logging.INFO
            access_log.log(level, "%s %s %d", scope["method"], route, status[0],
                           extra={"method": scope["method"], "route": route, "status": status[0],
                                  "duration_ms": round(elapsed * 1000, 2)})
            request_id_var.reset(token)
