"""The error contract: every error answer is exactly ``{code, detail}`` (two strings), and
the OpenAPI schema documents it (``ErrorResponse``) for the statuses each route answers."""
from __future__ import annotations

import logging

from fastapi.testclient import TestClient

from app.errors import LetheError
from app.main import BodyLimit, create_app

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
    r = client.delete("/v1/models")
    assert_error(r, 405, "method_not_allowed")
    assert {"GET", "POST"} <= set(r.headers["allow"].split(", ")), r.headers  # both routes on the path
    # a literal path is its own resource: /aliases/history is not the alias "history" of
    # /aliases/{alias}, whose PUT refuses that name
    r = client.delete("/v1/models/toy-cnn/aliases/history")
    assert_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "GET", r.headers
    assert_error(client.put("/v1/models/toy-cnn/aliases/history", json={"version": 1}), 422, "bad_alias")


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


def test_huge_numbers_in_a_body_are_refused_not_overflowed(client):
    r = client.put(f"/v1/models/{MODEL}/aliases/production", json={"version": 10**20})
    assert_error(r, 422, "invalid_request")
    assert r.json()["detail"].startswith("version: ")


def test_the_schema_advertises_error_response_not_fastapis_validation_error(client):
    schema = client.get("/openapi.json").json()
    comps = schema["components"]["schemas"]
    assert "HTTPValidationError" not in comps and set(comps["ErrorResponse"]["properties"]) == {"code", "detail"}
    ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, item in schema["paths"].items():
        for method, op in item.items():
            for status, res in op["responses"].items():
                if int(status) >= 400 and (method, path, status) != ("get", "/readyz", "503"):  # a probe report
                    assert res["content"]["application/json"]["schema"] == ref, (method, path, status)


# --- the walk: every operation of the schema, provoked into each error it can give cheaply ------

UNKNOWN = "x-does-not-exist"
LIMITS = {"max_body_bytes": 4096, "max_upload_bytes": 8192}

# what makes each operation answer "unknown id" (404), given ids that do not exist; None: the
# operation names nothing by id. A new route fails the walk until it is listed here.
NOT_FOUND = {
    ("POST", "/v1/forget"): {"json": {"model": UNKNOWN, "instance_ids": ["a"]}},
    ("GET", "/v1/forget"): None,
    ("POST", "/v1/forget/{request_id}/cancel"): {},
    ("POST", "/v1/forget/{request_id}/deny"): {"json": {"reason_code": "duplicate", "reason": "asked twice"}},
    ("POST", "/v1/forget/{request_id}/retry"): {},
    ("GET", "/v1/forget/{request_id}/certificate"): {},
    ("GET", "/v1/forget/{request_id}/webhooks"): {},
    ("GET", "/v1/forget/{request_id}"): {},
    ("GET", "/v1/jobs/{job_id}"): {},
    ("POST", "/v1/datasets"): None,
    ("GET", "/v1/datasets"): None,
    ("GET", "/v1/datasets/{name}"): {},
    ("GET", "/v1/erasures/{erasure_id}"): {},
    ("GET", "/v1/erasures/{erasure_id}/certificate"): {},
    ("GET", "/v1/architectures"): None,
    ("GET", "/v1/models"): None,
    ("GET", "/v1/models/{name}"): {},
    ("POST", "/v1/models/{name}/train"): {"json": {"dataset": UNKNOWN, "arch": "mlp"}},
    ("GET", "/v1/models/{name}/training"): {},
    ("POST", "/v1/models"): None,
    ("GET", "/v1/models/{name}/versions"): {},
    ("GET", "/v1/models/{name}/versions/{version}"): {},
    ("POST", "/v1/subscriptions"): {"json": {"url": "http://127.0.0.1:9/x", "model": UNKNOWN}},
    ("GET", "/v1/subscriptions"): None,
    ("POST", "/v1/models/import"): None,
    ("GET", "/v1/trainers"): None,
    ("POST", "/v1/models/{name}/retrain-orders"): {},
    ("GET", "/v1/retrain-orders"): None,
    ("GET", "/v1/retrain-orders/{order_id}"): {},
    ("GET", "/v1/retrain-orders/{order_id}/snapshot"): {},
    ("POST", "/v1/retrain-orders/{order_id}/claim"): {},
    ("PUT", "/v1/retrain-orders/{order_id}/weights"): {
        "headers": {"X-Order-Token": "t", "X-Content-SHA256": "0" * 64},
        "files": {"weights": ("w.safetensors", b"x", "application/octet-stream"),
                  "manifest": ("m.json", b'{"instance_ids": []}', "application/json")}},
    ("GET", "/v1/subscriptions/{sub_id}"): {},
    ("GET", "/v1/subscriptions/{sub_id}/deliveries"): {},
    ("DELETE", "/v1/subscriptions/{sub_id}"): {},
    ("GET", "/v1/events"): {"params": {"model": UNKNOWN}},
    ("GET", "/v1/models/{name}/versions/{version}/weights"): {},
    ("GET", "/v1/models/{name}/aliases/{alias}/weights"): {},
    ("POST", "/v1/models/{name}/consolidate"): {},
    ("GET", "/v1/models/{name}/aliases/history"): {},
    ("PUT", "/v1/models/{name}/aliases/{alias}"): {"json": {"version": 1}},
    ("POST", "/v1/models/{name}/predict"): {"json": {"inputs": [[0.0]]}},
    ("GET", "/v1/subjects/{subject_id}/instances"): {},
    ("GET", "/v1/tenants"): None,
    ("GET", "/v1/tenants/{tenant}"): {},
    ("PUT", "/v1/tenants/{tenant}"): None,
    ("PUT", "/v1/tenants/{tenant}/models/{model}"): {},
    ("DELETE", "/v1/tenants/{tenant}/models/{model}"): {},
    ("GET", "/v1/audit"): None,
    ("GET", "/v1/audit/verify"): None,
    ("GET", "/v1/audit/export"): None,
    ("GET", "/v1/audit/checkpoints"): None,
    ("GET", "/v1/keys/audit"): None,
    ("GET", "/healthz"): None,
    ("GET", "/readyz"): None,
}


def _fill(path: str) -> str:
    import re

    return re.sub(r"\{[^}]+\}", UNKNOWN, path.replace("{version}", "1"))  # an unknown model's version 1


def _malformed(op: dict) -> list[dict]:
    """Requests that must fail validation: a body of the wrong type, a body that is not JSON,
    and each constrained query/header parameter given a value it refuses."""
    out = []
    content = op.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        out += [{"json": ["not", "an", "object"]}, {"content": b"{not json", "headers": {"Content-Type": "application/json"}}]
    if "multipart/form-data" in content:
        out.append({"files": {"unexpected": ("x.bin", b"123")}})
    for p in op.get("parameters", ()):
        sch = p["schema"]
        sch = next((s for s in sch.get("anyOf", [sch]) if s.get("type") != "null"), sch)
        bad = {"integer": "not-a-number", "boolean": "maybe"}.get(sch.get("type"))
        if bad is None and "maxLength" in sch:
            bad = "x" * (sch["maxLength"] + 1)
        if bad is None and p["name"] == "Idempotency-Key":
            bad = "k" * 201
        if bad is not None and p["in"] == "query":
            out.append({"params": {p["name"]: bad}})
        elif bad is not None and p["in"] == "header":
            out.append({"headers": {p["name"]: bad}})
    return out


def test_every_error_of_every_route_is_code_and_detail_and_documented(seeded, dispatcher):
    from app import security

    from .conftest import bearer, make_key

    settings = seeded.model_copy(update=LIMITS)
    every = make_key(settings, name="contract-all")
    only = {s: make_key(settings, [s], name=f"contract-{s}") for s in security.SCOPES}
    answered: dict[tuple[str, str], set[int]] = {}
    app = create_app(settings, dispatcher=dispatcher)
    (limits,) = [m.kwargs for m in app.user_middleware if m.cls is BodyLimit]
    body_limits = {None: limits["limit"], **limits["overrides"]}
    with TestClient(app) as c:
        schema = c.get("/openapi.json").json()
        ops = {(m.upper(), p): op for p, item in schema["paths"].items() for m, op in item.items()}
        assert set(ops) == set(NOT_FOUND), "list each new operation in NOT_FOUND (None if it names no id)"

        def check(method: str, path: str, r, status: int | None = None, code: str | None = None) -> None:
            if status is not None:
                assert r.status_code == status, (method, path, r.status_code, r.text)
            assert r.status_code >= 400, (method, path, r.status_code, r.text)
            assert str(r.status_code) in ops[(method, path)]["responses"], \
                f"{method} {path} answers {r.status_code} but its schema does not say so: {r.text}"
            body = r.json()
            assert set(body) == {"code", "detail"} and all(isinstance(v, str) and v for v in body.values()), \
                (method, path, body)
            assert code is None or body["code"] == code, (method, path, body)
            answered.setdefault((method, path), set()).add(r.status_code)

        for (method, path), op in ops.items():
            url, scopes = _fill(path), op.get("x-required-scopes")
            if scopes:
                check(method, path, c.request(method, url), 401, "missing_api_key")
                check(method, path, c.request(method, url, headers=bearer("lethe_not-a-key-at-all-000")), 401,
                      "invalid_api_key")
                lacking = next(s for s in security.SCOPES if s not in scopes)
                check(method, path, c.request(method, url, headers=bearer(only[lacking])), 403, "missing_scope")
            auth = bearer(every) if scopes else {}
            for kw in _malformed(op):
                kw = {**kw, "headers": {**auth, **kw.get("headers", {})}}
                check(method, path, c.request(method, url, **kw), 422)
            if "requestBody" in op:  # not UTF-8 JSON, or multipart without a boundary: cannot be decoded at all
                kind = next(iter(op["requestBody"]["content"]))
                check(method, path, c.request(method, url, content=b"\xff\xfe{", headers={**auth, "Content-Type": kind}),
                      400, "bad_request")
                limit = body_limits.get((method, url), body_limits.get(
                    (method, url.rsplit("/", 2)[0] + "/*/weights"), body_limits[None]))
                check(method, path, c.request(method, url, content=b"x" * (limit + 1),
                                              headers={**auth, "Content-Type": "application/json"}),
                      413, "body_too_large")
            for p in op.get("parameters", ()):  # a huge integer is refused, never overflows the database (500)
                sch = next((x for x in p["schema"].get("anyOf", [p["schema"]]) if x.get("type") == "integer"), None)
                if sch is not None and p["in"] == "query":
                    check(method, path, c.request(method, url, headers=auth, params={p["name"]: 10**20}), 422)
            if NOT_FOUND[(method, path)] is not None:
                kw = NOT_FOUND[(method, path)]
                kw = {**kw, "headers": {**auth, **kw.get("headers", {})}}
                check(method, path, c.request(method, url, **kw), 404)
    walked = {k for k, v in ops.items() if v.get("x-required-scopes")}
    assert walked <= set(answered) and len(walked) >= 19, sorted(walked - set(answered))
