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


def names_subject(secret: str, text: str, ref: str, *, max_words: int = 6) -> bool:
    """Whether free text (an operator's deny reason, a cancel reason) contains the subject id
    whose reference is ``ref``: every run of up to ``max_words`` consecutive words, with the
    punctuation around it stripped and a possessive "'s" dropped, is hashed like an id and
    compared. Lethe stores no subject id, so such text is refused rather than stored."""
    words = text.split()
    runs = {" ".join(words[i:j]) for i in range(len(words)) for j in range(i + 1, min(i + max_words, len(words)) + 1)}
    stripped = {r.strip(".,;:!?()[]{}<>\"'`") for r in runs}
    candidates = {c for r in runs | stripped for c in (r, r.removesuffix("'s")) if c}  # "alice's" names alice
    return any(hmac.compare_digest(h, ref) for h in subject_refs(secret, candidates))
