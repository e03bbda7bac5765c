"""Subject references: the only form in which Lethe stores a subject id, a keyed hash
under ``LETHE_SUBJECT_SECRET`` (HMAC-SHA256, RFC 2104). Every package that meets a subject
id (requests, the catalogue, the dataset store, uploads) turns it into one here."""
from __future__ import annotations

import hmac
from typing import Iterable


def subject_ref(secret: str, subject_id: str) -> str:
    """Keyed hash of a subject id; the raw id is never stored."""
    return hmac.digest(secret.encode("utf-8"), subject_id.encode("utf-8"), "sha256").hex()  # = HMAC-SHA256


def subject_refs(secret: str, subject_ids: Iterable[str]) -> list[str]:
    """``subject_ref`` of many ids: the key's inner and outer pads are hashed once
    (RFC 2104: HMAC(K, m) = H((K ^ opad) || H((K ^ ipad) || m))) and the keyed state copied
    per id, instead of keying a new HMAC for each."""
    base = hmac.new(secret.encode("utf-8"), digestmod="sha256")
    out = []
    for sid in subject_ids:
        h = base.copy()
        h.update(sid.encode("utf-8"))
        out.append(h.hexdigest())
    return out
