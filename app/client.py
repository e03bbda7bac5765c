"""A small client of the Lethe HTTP API, used by the ``lethe`` command's client-side
sub-commands (``app/cli/``). Errors are :class:`CliError` carrying the command's exit code:
0 success; 1 the answer is negative (request failed, denied or canceled, audit chain broken,
certificate invalid); 2 usage error; 3 the API refused or could not be reached, or does not
provide the endpoint; 4 ``watch`` timed out.
"""
from __future__ import annotations

from typing import IO, Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
# a request ends completed, failed (an operator may retry it), denied or canceled ("rejected": older servers)
FINAL = ("completed", "failed", "denied", "canceled", "rejected")
OK, NEGATIVE, USAGE, API_ERROR, TIMEOUT = 0, 1, 2, 3, 4


class CliError(Exception):
    def __init__(self, message: str, code: int = API_ERROR):
        super().__init__(message)
        self.code = code


class Api:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30.0):
        self.url = url.rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": "lethe-cli"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def request(self, method: str, path: str, *, json_body: Any = None, headers: dict | None = None,
                params: dict | None = None, hint: str | None = None) -> Any:
        """The answer's JSON (or text, e.g. a PEM key). When the server answers that the route
        does not exist, the error says so (with ``hint``, what to do instead) rather than a bare 404."""
        try:
            r = self.http.request(method, path, json=json_body, headers=headers, params=_present(params))
        except httpx.HTTPError as e:
            raise self._unreachable(e) from e
        self._raise_for_error(r, method, path, hint)
        if not r.content:
            return None
        return r.json() if "json" in r.headers.get("content-type", "") else r.text

    def post_form(self, path: str, data: dict, files: dict) -> Any:
        """POST a multipart form (``files``: field -> (filename, open binary file)); the
        answer's JSON. An upload may take long: no read timeout."""
        try:
            r = self.http.post(path, data={k: v for k, v in data.items() if v is not None}, files=files,
                               timeout=httpx.Timeout(self.http.timeout.connect, read=None, write=None))
        except httpx.HTTPError as e:
            raise self._unreachable(e) from e
        self._raise_for_error(r, "POST", path, None)
        return r.json()

    def download(self, path: str, out: IO[bytes], *, params: dict | None = None,
                 headers_out: dict | None = None) -> int:
        """GET ``path`` and stream the body into ``out`` (e.g. the audit export's JSON lines);
        returns the number of bytes written. ``headers_out``: filled with the answer's headers
        (lower-case names)."""
        written = 0
        try:
            with self.http.stream("GET", path, params=_present(params)) as r:
                if r.status_code >= 400:
                    r.read()
                    self._raise_for_error(r, "GET", path, None)
                if headers_out is not None:
                    headers_out.update({k.lower(): v for k, v in r.headers.items()})
                for chunk in r.iter_bytes():
                    out.write(chunk)
                    written += len(chunk)
        except httpx.HTTPError as e:
            raise self._unreachable(e) from e
        return written

    def _unreachable(self, e: httpx.HTTPError) -> CliError:
        return CliError(f"cannot reach Lethe at {self.url}: {e.__class__.__name__}: {e}")

    def _raise_for_error(self, r: httpx.Response, method: str, path: str, hint: str | None) -> None:
        if r.status_code < 400:
            return
        try:
            body = r.json()
        except ValueError:
            body = {"detail": r.text[:300]}
        detail = body.get("detail") if isinstance(body, dict) else body
        route_missing = (r.status_code == 404 and detail == "Not Found") or r.status_code == 405
        if route_missing:
            extra = f"; {hint}" if hint else ""
            raise CliError(f"this server does not provide {method} {path}: HTTP {r.status_code}{extra}")
        if r.status_code in (401, 403):
            what = ("give an API key with the needed scope (--api-key or LETHE_API_KEY)"
                    if "authorization" in self.http.headers
                    else "no API key was given: set LETHE_API_KEY or pass --api-key")
            raise CliError(f"not authorised (HTTP {r.status_code}): {detail}; {what}")
        code = body.get("code") if isinstance(body, dict) else None
        raise CliError(f"HTTP {r.status_code}{f' {code}' if code else ''}: {detail}")


def _present(params: dict | None) -> dict:
    return {k: v for k, v in (params or {}).items() if v is not None}
