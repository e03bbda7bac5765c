"""Bounds on every input that the types alone do not bound.

- Integers: query parameters and body fields that end up in SQL carry an upper bound
  (``MAX_DB_INT``, the largest value of a 32-bit INTEGER column, which is what Postgres
  stores sequence numbers and versions in): a larger value is a 422, never an overflow.
- Control characters: Postgres cannot store NUL in a text column (a 500 if it got there),
  and no identifier holds a control character. ``JsonDepthLimit`` also answers 422
  ``control_character`` to a URL path or query string holding any C0 control character or
  DEL (percent-encoded or not) and to a JSON body holding NUL (raw, or ``\u0000`` in a
  string), on every route and every database, before anything reads them.
- Nesting: Python's JSON parser recurses, so a body nested tens of thousands deep raised
  ``RecursionError`` (a 500). ``JsonDepthLimit`` refuses a JSON request body nested deeper
  than ``MAX_JSON_DEPTH`` with 422 before anything parses it; ``check_depth`` does the same
  for JSON that arrives inside another format (a model manifest in a multipart upload).
"""
from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from typing import Annotated

import numpy as np
from pydantic import BeforeValidator, Field
from starlette.exceptions import HTTPException

from .errors import LetheError, error_response

MAX_DB_INT = 2**31 - 1


def _integral(v):
    return int(v) if isinstance(v, float) and v.is_integer() else v


def json_int(ge: int = 0, le: int = MAX_DB_INT):
    """An integer field of a JSON body in ``[ge, le]`` (request models are strict: ``false``
    is no 0, ``"3"`` no 3), counted as JSON Schema counts integers: 3.0 is one."""
    return Annotated[int, Field(ge=ge, le=le), BeforeValidator(_integral)]
MAX_JSON_DEPTH = 64

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
# a JSON escape of NUL that is not itself an escaped backslash followed by "u0000"
_JSON_NUL = re.compile(rb'(?<!\\)(?:\\\\)*\\u0000')
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_CONTROL_BYTES = re.compile(b"[\x00-\x1f\x7f]")


def control_character_problem(scope, body: bytes | None = None) -> str | None:
    """What is wrong, or None: a control character in the URL path or query string, or NUL
    in a JSON body."""
    path = scope.get("path", "")
    if _CONTROL.search(path):
        return "the URL path holds a control character (NUL, CR, LF, ...); percent-encoded or not, none is valid"
    qs = scope.get("query_string", b"") or b""
    if qs and _CONTROL_BYTES.search(unquote_to_bytes(qs)):
        return "a query parameter holds a control character (NUL, CR, LF, ...); none is valid"
    if body is not None and (b"\x00" in body or (b"\\u0000" in body and _JSON_NUL.search(body))):
        return "the JSON body holds a NUL character (\\u0000); no field accepts one"
    return None


def json_depth(raw: bytes | str) -> int:
    """The deepest nesting of ``[``/``{`` in a JSON text (strings skipped), without parsing
    it: a vectorised running sum, so a 1 MB body costs about a millisecond."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if b"[" not in raw and b"{" not in raw:
        return 0
    b = np.frombuffer(_STRING.sub(b'""', raw), dtype=np.uint8)
    step = ((b == ord("[")) | (b == ord("{"))).astype(np.int32) - ((b == ord("]")) | (b == ord("}"))).astype(np.int32)
    return int(np.cumsum(step).max(initial=0))


def may_exceed(raw: bytes, limit: int) -> bool:
    """Whether ``raw`` could nest deeper than ``limit``: not when it holds ``limit`` brackets
    or fewer (two C-level counts: a small body, e.g. every submission, skips the scan)."""
    return raw.count(b"[") + raw.count(b"{") > limit


def check_depth(raw: bytes | str, what: str = "body", limit: int = MAX_JSON_DEPTH) -> None:
    depth = json_depth(raw)
    if depth > limit:
        raise LetheError(422, "too_deep", f"{what}: JSON nested {depth} levels deep; at most {limit}")


class JsonDepthLimit:
    """ASGI middleware: a request whose body is JSON (by content type) and nested deeper than
    ``limit`` answers 422 ``too_deep``. The body is read once here (``BodyLimit``, outside
    this middleware, has already bounded its size) and handed on unchanged."""

    def __init__(self, app, limit: int = MAX_JSON_DEPTH):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        problem = control_character_problem(scope)
        if problem:
            return await error_response(422, "control_character", problem)(scope, receive, send)
        if scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        ctype = next((v for k, v in scope.get("headers", []) if k == b"content-type"), b"").lower()
        if b"json" not in ctype:
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            try:
                msg = await receive()
            except HTTPException as e:  # BodyLimit counted past its limit while streaming
                return await error_response(e.status_code, "body_too_large", str(e.detail))(scope, receive, send)
            if msg["type"] != "http.request":  # disconnected: let the app see it
                return await self.app(scope, _replay([msg]), send)
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        body = b"".join(chunks)
        problem = control_character_problem({}, body)
        if problem:
            return await error_response(422, "control_character", problem)(scope, receive, send)
        depth = json_depth(body) if may_exceed(body, self.limit) else 0
        if depth > self.limit:
            resp = error_response(422, "too_deep", f"body: JSON nested {depth} levels deep; at most {self.limit}")
            return await resp(scope, receive, send)
        await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send)


def _replay(messages, then=None):
    queue = list(messages)

    async def receive():
        if queue:
            return queue.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


# The rules above, as the OpenAPI schema states them (``document``): what a schema-valid
# request is must be what the gateway accepts, so a client (or a fuzzer) reading the schema
# is never refused for something the schema allows.
NO_CONTROL_PATTERN = "^[^\\x00-\\x1f\\x7f]*$"  # a path or query parameter: no C0 control character, no DEL
NO_NUL_PATTERN = "^[^\\x00]*$"  # a string anywhere in a JSON body or a form field: no NUL


def document(app) -> None:
    """Make the OpenAPI schema state the character rules ``JsonDepthLimit`` enforces: every
    string path or query parameter gets ``NO_CONTROL_PATTERN``, every string of a JSON or
    multipart request body (and every key of a free-form object) ``NO_NUL_PATTERN``, where a
    route gave no stricter pattern or an enum. A multipart form field cannot be null (an
    omitted field is its default) and an empty one is read as omitted: form schemas lose
    their ``null`` alternatives and a required text field gets ``minLength: 1``."""
    previous = app.openapi

    def openapi() -> dict:
        schema = previous()
        if schema.get("x-limits-documented"):
            return schema
        schema["x-limits-documented"] = True
        comps = schema.get("components", {}).get("schemas", {})
        seen: set[int] = set()
        for item in schema.get("paths", {}).values():
            for op in item.values():
                if not isinstance(op, dict):
                    continue
                for p in op.get("parameters", []):
                    if p.get("in") in ("path", "query"):
                        _constrain_strings(p.get("schema") or {}, NO_CONTROL_PATTERN)
                for ctype, media in ((op.get("requestBody") or {}).get("content") or {}).items():
                    body = _resolve(media.get("schema") or {}, comps)
                    if "multipart" in ctype:
                        _form_fields(body, comps)
                    if "json" in ctype or "multipart" in ctype:
                        _walk_body(media.get("schema") or {}, comps, seen)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _resolve(s: dict, comps: dict) -> dict:
    ref = s.get("$ref")
    return comps.get(ref.rsplit("/", 1)[1], {}) if isinstance(ref, str) else s


def _is_binary(s: dict) -> bool:
    return s.get("format") == "binary" or "contentMediaType" in s


def _constrain_strings(s: dict, pattern: str) -> None:
    """``pattern`` on ``s`` if it is a plain string schema (or on its string alternatives)."""
    for alt in s.get("anyOf", [s]) if "anyOf" in s else [s]:
        if alt.get("type") == "string" and not ({"pattern", "enum", "const"} & alt.keys()) and not _is_binary(alt) \
                and "enum" not in s:
            alt["pattern"] = pattern


def _walk_body(s: dict, comps: dict, seen: set[int]) -> None:
    """NUL-free strings everywhere in a request body schema (components once each)."""
    s = _resolve(s, comps)
    if id(s) in seen:
        return
    seen.add(id(s))
    _constrain_strings(s, NO_NUL_PATTERN)
    if s.get("type") == "object" and s.get("additionalProperties") not in (None, False):
        s.setdefault("propertyNames", {"pattern": NO_NUL_PATTERN})
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        for sub in s.get(key, []):
            _walk_body(sub, comps, seen)
    for key in ("items", "additionalProperties"):
        if isinstance(s.get(key), dict):
            _walk_body(s[key], comps, seen)
    for sub in (s.get("properties") or {}).values():
        _walk_body(sub, comps, seen)


def _form_fields(body: dict, comps: dict) -> None:
    required = set(body.get("required", []))
    for name, prop in (body.get("properties") or {}).items():
        alts = [a for a in prop.get("anyOf", []) if a.get("type") != "null"]
        if "anyOf" in prop and len(alts) == 1:
            del prop["anyOf"]
            prop.update(alts[0])
        elif "anyOf" in prop:
            prop["anyOf"] = alts
        if name in required:
            for alt in prop.get("anyOf", [prop]):
                if alt.get("type") == "string" and not _is_binary(alt):
                    alt.setdefault("minLength", 1)
