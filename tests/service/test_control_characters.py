"""NUL and control characters answer 422 on every route, on SQLite and on Postgres (which
cannot store NUL in text: it was a 500 on 15+ routes). The test walks every operation of the
OpenAPI schema and puts NUL into each string parameter in turn: path, query, JSON body and
multipart form fields."""
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from app.main import create_app

from .conftest import bearer, make_key

NUL = "a\x00b"


def _string_props(schema: dict, spec: dict) -> dict:
    """The top-level properties of a request body schema whose type may be a string."""
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    out = {}
    for name, prop in (schema.get("properties") or {}).items():
        kinds = {prop.get("type")} | {p.get("type") for p in prop.get("anyOf", [])}
        if "string" in kinds and prop.get("format") != "binary":
            out[name] = prop
    return out


def _operations(spec: dict):
    for path, item in spec["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, op in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            yield path, method, op


def test_nul_in_every_string_parameter_is_a_422(seeded_on, dispatcher):
    s = seeded_on
    key = make_key(s)
    walked = []
    with TestClient(create_app(s, dispatcher=dispatcher), headers=bearer(key)) as c:
        spec = c.app.openapi()
        for path, method, op in _operations(spec):
            params = op.get("parameters", [])
            fill = {p["name"]: "x" for p in params if p["in"] == "path"}
            for p in params:
                if (p.get("schema") or {}).get("type") not in ("string", None) and "anyOf" not in p.get("schema", {}):
                    continue
                where, name = p["in"], p["name"]
                if where == "path":
                    url = path.format(**{**fill, name: quote(NUL, safe="")})
                    r = c.request(method.upper(), url)
                elif where == "query":
                    r = c.request(method.upper(), path.format(**fill), params={name: NUL})
                else:
                    continue
                walked.append((method, path, where, name))
                assert r.status_code == 422 and r.json()["code"] == "control_character", (method, path, name, r.text)
            content = (op.get("requestBody") or {}).get("content") or {}
            for ctype, media in content.items():
                props = _string_props(media.get("schema") or {}, spec)
                for name in props:
                    url = path.format(**fill)
                    if "json" in ctype:
                        r = c.request(method.upper(), url, json={name: NUL})
                        walked.append((method, path, "json", name))
                        assert r.status_code == 422 and r.json()["code"] == "control_character", \
                            (method, path, name, r.text)
                    elif "multipart" in ctype:
                        r = c.request(method.upper(), url, data={name: NUL}, files={"_": ("x", b"x")})
                        walked.append((method, path, "form", name))
                        assert r.status_code == 422, (method, path, name, r.text)
    assert len(walked) > 60, walked
