"""The error contract: every error answer is exactly ``{code, detail}`` (two strings), and
the OpenAPI schema documents it (``ErrorResponse``) for the statuses each route answers."""
from __future__ import annotations

import logging

from fastapi.testclient import TestClient

from app.errors import LetheError
from app.main import create_app

from .conftest import MODEL


def assert_error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"code", "detail"} and all(isinstance(v, str) and v for v in body.values()), body
    if code is not None:
        assert body["code"] == code, body
    return body


def test_validation_errors_name_the_field_in_one_string(client):
    body = assert_error(client.post("/v1/forget", json={"model": MODEL, "instance_ids": ["ok", 3]}), 422,
                        "invalid_request")
    assert body["detail"].startswith("instance_ids.1: "), body
    body = assert_error(client.get("/v1/forget", params={"limit": 0}), 422, "invalid_request")
    assert body["detail"].startswith("limit: "), body


def test_framework_errors_get_a_code(client):
    assert_error(client.get("/v1/no-such-route"), 404, "not_found")
    assert_error(client.delete("/v1/models"), 405, "method_not_allowed")


def test_an_unhandled_exception_answers_a_reference_not_a_traceback(seeded, dispatcher, caplog):
    app = create_app(seeded, dispatcher=dispatcher)

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals: /var/lib/lethe/x")

    @app.get("/refused")
    def refused():
        raise LetheError(409, "some_conflict", "it conflicts", {"Retry-After": "3"})

    with TestClient(app, raise_server_exceptions=False) as c, caplog.at_level(logging.ERROR, "lethe.errors"):
        r = c.get("/boom", headers={"X-Request-ID": "req-123"})
        body = assert_error(r, 500, "internal_error")
        assert "req-123" in body["detail"] and "secret" not in r.text and "Traceback" not in r.text
        assert r.headers["x-request-id"] == "req-123"
        logged = [rec for rec in caplog.records if rec.name == "lethe.errors"]
        assert logged and "req-123" in logged[0].getMessage() and logged[0].exc_info[0] is RuntimeError
        r = c.get("/refused")
        assert_error(r, 409, "some_conflict")
        assert r.headers["retry-after"] == "3"


def test_the_schema_advertises_error_response_not_fastapis_validation_error(client):
    schema = client.get("/openapi.json").json()
    comps = schema["components"]["schemas"]
    assert "HTTPValidationError" not in comps and set(comps["ErrorResponse"]["properties"]) == {"code", "detail"}
    ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, item in schema["paths"].items():
        for method, op in item.items():
            for status, res in op["responses"].items():
                if int(status) >= 400:
                    assert res["content"]["application/json"]["schema"] == ref, (method, path, status)
