"""One error type and one way to answer it.

Services and routes raise ``LetheError(status, code, detail)``; nothing else builds an
error response. ``install(app)`` answers it — and FastAPI's own ``HTTPException``, a
``RequestValidationError`` and any unhandled exception — as JSON ``{code, detail}``:

- ``code`` is stable and machine-readable (``unknown_model``, ``missing_scope``, ...);
- ``detail`` is one readable sentence that says what is wrong;
- an unhandled exception answers 500 ``internal_error`` with a reference (the request id);
  the traceback goes to the server log under that id, never into the answer.

``ErrorResponse`` is that shape for the OpenAPI schema, and ``responses(404, 409, ...)``
documents a route's error statuses with it (``document(app)`` adds what every route shares:
401/403 for scoped routes, 400/413/422 for routes with a body, 422 where a parameter can be
invalid, 500).
"""
from __future__ import annotations

import http
import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from .observability import REQUEST_ID_KEY

log = logging.getLogger("lethe.errors")
DB_RETRY_AFTER_S = 5  # Retry-After of the 503 answered while the database is unreachable


class LetheError(Exception):
    """An answer that is an error: HTTP ``status``, stable ``code``, readable ``detail``.

    Raised by services (forget, registry, security, audit) and routes alike; a service that
    runs outside HTTP (the worker, the CLI) reads ``code`` and ``detail`` the same way."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers

    def __repr__(self) -> str:
        return f"LetheError({self.status}, {self.code!r}, {self.detail!r})"


class ErrorResponse(BaseModel):
    """Every error answer of every route."""

    code: str = Field(description="stable, machine-readable: unknown_model, missing_scope, invalid_request, ...",
                      examples=["unknown_model"])
    detail: str = Field(description="what is wrong, in one readable sentence",
                        examples=["model 'nope' is not registered; known models: ['digits-mlp']"])


# codes for errors raised as a bare HTTPException (by FastAPI itself or by a middleware)
_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 409: "conflict", 410: "gone", 413: "body_too_large",
               415: "unsupported_media_type", 422: "invalid_request", 429: "too_many_requests",
               500: "internal_error", 503: "unavailable"}

# what each status means in Lethe, for the OpenAPI schema (a route may say more)
DESCRIPTIONS = {
    400: "the body cannot be read at all (not UTF-8 JSON, broken multipart)",
    401: "no valid API key: missing, malformed, unknown or revoked (`WWW-Authenticate: Bearer`)",
    403: "the API key lacks the scope this route requires",
    404: "an id in the path or body names nothing",
    409: "conflicts with the current state",
    410: "gone: the data was erased",
    413: "request body larger than LETHE_MAX_BODY_BYTES",
    415: "unsupported content",
    422: "invalid request: the detail names the field and what is wrong with it",
    429: "too many requests",
    500: "internal error: the detail gives a reference to find in the server log",
    503: "unavailable: a dependency (database, broker) is down",
}


def code_for(status: int) -> str:
    if status in _HTTP_CODES:
        return _HTTP_CODES[status]
    try:
        return http.HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def body(code: str, detail: str) -> dict[str, str]:
    return {"code": code, "detail": detail}


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body(code, detail), status_code=status, headers=headers)


def responses(*statuses: int, **described: str) -> dict[int | str, dict]:
    """``responses=`` for a route: each status answered with ``ErrorResponse``. A keyword
    ``e404="unknown model or version"`` says what that status means for this route."""
    out: dict[int | str, dict] = {}
    for s in (*statuses, *(int(k[1:]) for k in described)):
        out[s] = {"model": ErrorResponse, "description": described.get(f"e{s}") or DESCRIPTIONS.get(s, code_for(s))}
    return out


def validation_detail(exc: RequestValidationError) -> str:
    """``field: what is wrong`` for each error, the field named by its path without the
    ``body``/``query`` prefix (``instance_ids.3: Input should be a valid string``)."""
    parts = []
    for e in exc.errors():
        loc = [str(p) for p in e.get("loc", ())]
        where = ".".join(loc[1:] if len(loc) > 1 and loc[0] in ("body", "query", "path", "header", "cookie")
                         else loc) or "body"
        parts.append(f"{where}: {e.get('msg')}")
    return "; ".join(parts) or "invalid request"


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route offers on this path (Starlette's 405 names only the first
    route that matched the path, e.g. POST /v1/forget but not GET)."""
    from fastapi.routing import iter_route_contexts
    from starlette.routing import compile_path

    path, found = request.url.path, []
    for route in iter_route_contexts(request.app.routes):  # included routers flattened
        if route.path_format and route.methods and compile_path(route.path_format)[0].match(path):
            found.append((route.path_format.count("{"), route.methods))
    # the most specific paths only: /aliases/history is a resource of its own, not an alias
    # named "history" of /aliases/{alias} (whose PUT refuses that name)
    fewest = min((n for n, _ in found), default=0)
    return sorted({m for n, methods in found if n == fewest for m in methods})


def _request_id(request: Request) -> str:
    return request.scope.get(REQUEST_ID_KEY) or uuid.uuid4().hex


def install(app: FastAPI) -> None:
    """The one set of exception handlers: every error answer is ``{code, detail}``."""

    @app.exception_handler(LetheError)
    async def _lethe(_: Request, exc: LetheError):
        return error_response(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return error_response(exc.status_code, code_for(exc.status_code), detail, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        return error_response(422, "invalid_request", validation_detail(exc))

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(PoolTimeout)
    async def _database_unavailable(_: Request, exc: Exception):
        # the database is down, unreachable or too busy (pool exhausted, deadlock): nothing
        # was committed, so the client may simply try again
        log.warning("database unavailable: %s: %s", exc.__class__.__name__, (str(exc).splitlines() or [""])[0][:300])
        return error_response(503, "database_unavailable", "the database is unavailable or busy; retry later "
                                                           "(an Idempotency-Key makes a retried POST safe)",
                              {"Retry-After": str(DB_RETRY_AFTER_S)})

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception):
        ref = _request_id(request)
        log.error("unhandled %s on %s %s (reference %s)", exc.__class__.__name__, request.method,
                  getattr(request.scope.get("route"), "path_format", "<unmatched>"), ref,
                  exc_info=(type(exc), exc, exc.__traceback__))
        return error_response(500, "internal_error", f"internal error; quote reference {ref} to the operator",
                              {"X-Request-ID": ref})


_REF = "#/components/schemas/ErrorResponse"
_VALIDATION_REF = "#/components/schemas/HTTPValidationError"


def document(app: FastAPI) -> None:
    """Make the OpenAPI schema say what is answered: FastAPI's default 422
    (``HTTPValidationError``, ``detail: array``) becomes ``ErrorResponse``, and every
    operation lists the statuses it shares with the others: 401/403 where it requires a
    scope (``x-required-scopes``, added by ``security.install``), 400/413/422 where it takes a
    body (400: FastAPI cannot even decode it), 500 everywhere. Statuses particular to a route come from its ``responses=``."""
    previous = app.openapi

    def openapi() -> dict:
        schema = previous()  # cached by FastAPI; rebuilt when routes change
        if schema.get("x-errors-documented"):
            return schema
        schema["x-errors-documented"] = True
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        comps["ErrorResponse"] = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        for path_item in schema.get("paths", {}).values():
            for op in path_item.values():
                if isinstance(op, dict) and "responses" in op:
                    _document_operation(op)
        for name in ("HTTPValidationError", "ValidationError"):  # nothing answers them any more
            comps.pop(name, None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _document_operation(op: dict) -> None:
    res = op["responses"]
    statuses = [500]
    if op.get("x-required-scopes"):
        statuses += [401, 403, 503]  # the key is looked up in the database
    if "requestBody" in op:
        statuses += [400, 413, 422]
    elif op.get("parameters"):
        statuses.append(422)  # a control character in a path or query parameter (app/limits.py)
    if any(p.get("in") == "path" for p in op.get("parameters", [])):
        statuses.append(404)  # an id in the path that names nothing
    for s in statuses:
        res.setdefault(str(s), {"description": DESCRIPTIONS[s]})
    for status, r in res.items():
        if not (status.isdigit() and int(status) >= 400):
            continue
        if status == "422" and r.get("description") == "Validation Error":
            r["description"] = DESCRIPTIONS[422]
        media = (r.get("content") or {}).get("application/json") or {}
        if media.get("schema", {}).get("$ref", _VALIDATION_REF) == _VALIDATION_REF:  # a route's own model stays
            r["content"] = {"application/json": {**media, "schema": {"$ref": _REF}}}
