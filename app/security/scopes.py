"""The scopes an API key can hold, and the check of a list of them."""
from __future__ import annotations

from typing import Iterable

FORGET_WRITE = "forget:write"  # portals: submit and cancel deletion requests
FORGET_READ = "forget:read"  # poll requests, subjects, certificates
AUDIT_READ = "audit:read"  # auditors: the audit log, the dashboard
MODELS_ADMIN = "models:admin"  # operators: register models, move aliases, deny / retry requests
METRICS_READ = "metrics:read"  # Prometheus: GET /metrics and nothing else
# access requests: what the catalogue holds for a subject. An oracle by nature (it tells
# whether a model holds someone's data), so not part of forget:read: for portals that verify
# the person first (migration 0013 gave it to the keys that had forget:read)
SUBJECTS_READ = "subjects:read"
# serving systems: read the registry and download the weights of the models granted to the
# key's tenant; nothing of requests, subjects or the audit log (a tenant-bound scope)
MODELS_READ = "models:read"
SCOPES: tuple[str, ...] = (FORGET_WRITE, FORGET_READ, SUBJECTS_READ, AUDIT_READ, MODELS_ADMIN, METRICS_READ,
                           MODELS_READ)


def check_scopes(scopes: Iterable[str]) -> list[str]:
    """The scopes, stripped and without repeats; ValueError for an unknown one or none."""
    out: list[str] = []
    for s in scopes:
        s = s.strip()
        if not s:
            continue
        if s not in SCOPES:
            raise ValueError(f"unknown scope {s!r}; scopes are {', '.join(SCOPES)}")
        if s not in out:
            out.append(s)
    if not out:
        raise ValueError(f"a key needs at least one scope of {', '.join(SCOPES)}")
    return out
