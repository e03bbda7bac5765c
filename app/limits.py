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

import numpy as np
from starlette.exceptions import HTTPException

from .errors import LetheError, error_response

MAX_DB_INT = 2**31 - 1
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
