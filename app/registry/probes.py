"""Sealed forget rows: what lets a retrain order's upload be scored on the rows it must not
have been trained on, after those rows have left the dataset store.

A model its own pipeline retrains (trainer ``external``) serves a deletion approximately at
once; its exact version arrives later, from a retrain order (app/registry/orders.py). By
then the erased rows are gone from the dataset store (hidden at once, bytes compacted within
``LETHE_ERASE_WITHIN_S``), so the upload could only be checked against what the pipeline
*declares* it trained on. To score it the way a worker scores any exact version (the forget
rows against the held-out split, ``models.metrics``), the approximate job that erases the
rows seals a copy of them in its publishing transaction, while it still holds them:

- the rows (features and labels as the job decoded them; their instance ids) are encrypted
  with AES-256-GCM under a fresh random key per job, the probe's id as associated data; the
  ciphertext is written under the registry (``probes/<model>/<id>.sealed``), the key is kept
  in this table only. Neither alone holds the data; destroying the key (*crypto-shredding*)
  makes the ciphertext unreadable even where a backup of the file survives.
- the probe is kept until the earliest due date of the requests its job served (the date by
  which those erasures must be complete: GDPR Art. 12(3), one month) and no longer: the
  sweeper shreds it then (``shred_due``: key destroyed, file deleted, audit
  ``probe.shredded``). An order's verified upload shreds the probes it was scored on at once.
- each request's certificate states it (``sealed_rows``): when its rows were sealed, until
  when they may be kept, when the key was destroyed and why, and which order scored them.

The trade-off is deliberate and visible: the rows' bytes outlive the store's erasure bound
(``LETHE_ERASE_WITHIN_S``) in sealed form, never past the request's due date, so that a
pipeline uploading weights trained on the erased rows is caught by measurement rather than
by its own declaration. ``LETHE_ORDER_SEAL_FORGET_ROWS=false`` turns sealing off (uploads are
then checked against the declared rows only, and their verification says so).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import os
import secrets
import uuid

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..audit import service as audit
from ..db import utcnow
from ..settings import Settings
from .models import SealedProbe

log = logging.getLogger("lethe.registry")
NONCE = 12


def _store(settings: Settings):
    """Where the ciphertexts live: the registry's store (on the object store with
    LETHE_REGISTRY_URL, so the gateway scoring an order reads what a worker sealed)."""
    from .storage import weights

    return weights(settings)


def _aead(key_hex: str):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(bytes.fromhex(key_hex))


def seal(session: Session, settings: Settings, *, model_name: str, job_id: str, instance_ids: list[str],
         x: np.ndarray, y: np.ndarray, due_at: dt.datetime | None, actor: str) -> SealedProbe:
    """Encrypt one job's forget rows (in the job's publishing transaction) and record the probe."""
    pid, key = str(uuid.uuid4()), secrets.token_bytes(32).hex()
    buf = io.BytesIO()
    np.savez(buf, x=np.ascontiguousarray(x, np.float32), y=np.asarray(y, np.int64),
             ids=np.asarray(instance_ids, dtype=str))
    nonce = secrets.token_bytes(NONCE)
    sealed = nonce + _aead(key).encrypt(nonce, buf.getvalue(), pid.encode())
    rel = f"probes/{model_name}/{pid}.sealed"
    store = _store(settings)
    tmp = store.tmp_path(os.path.join("probes", model_name), ".sealed")
    with open(tmp, "wb") as f:
        f.write(sealed)
    store.publish(tmp, rel)
    now = utcnow()
    probe = SealedProbe(id=pid, model_name=model_name, job_id=job_id, instance_ids=sorted(instance_ids),
                        rows=len(instance_ids), path=rel, sha256=hashlib.sha256(sealed).hexdigest(), key_hex=key,
                        created_at=now, keep_until=due_at or now + dt.timedelta(seconds=settings.order_due_s),
                        scored_by=[])
    session.add(probe)
    audit.append(session, actor=actor, action="probe.sealed",
                 payload={"probe_id": pid, "model": model_name, "job_id": job_id, "rows": probe.rows,
                          "ciphertext_sha256": probe.sha256, "keep_until": probe.keep_until.isoformat()})
    session.flush()
    return probe


def live(session: Session, model_name: str, instance_ids: list[str]) -> list[SealedProbe]:
    """The model's unshredded probes holding any of ``instance_ids``."""
    want = set(instance_ids)
    return [p for p in session.execute(select(SealedProbe).where(
        SealedProbe.model_name == model_name, SealedProbe.shredded_at.is_(None))
        .order_by(SealedProbe.created_at)).scalars() if want & set(p.instance_ids)]


def open_rows(settings: Settings, probes: list[SealedProbe], instance_ids: list[str]
              ) -> tuple[np.ndarray | None, np.ndarray | None, list[str]]:
    """(x, y, ids) of ``instance_ids`` held by ``probes``, decrypted in memory only."""
    want, xs, ys, ids = set(instance_ids), [], [], []
    for p in probes:
        with open(_store(settings).fetch(p.path, p.sha256), "rb") as f:
            raw = f.read()
        if hashlib.sha256(raw).hexdigest() != p.sha256:
            raise ValueError(f"sealed probe {p.id} does not match its recorded digest")
        body = np.load(io.BytesIO(_aead(p.key_hex).decrypt(raw[:NONCE], raw[NONCE:], p.id.encode())))
        keep = np.array([str(i) in want for i in body["ids"]], dtype=bool)
        xs.append(body["x"][keep])
        ys.append(body["y"][keep])
        ids += [str(i) for i in body["ids"][keep]]
    if not ids:
        return None, None, []
    return np.concatenate(xs), np.concatenate(ys), ids


def shred(session: Session, settings: Settings, probe: SealedProbe, *, reason: str, actor: str) -> None:
    """Destroy the key (the rows are unreadable from then on) and delete the ciphertext."""
    probe.key_hex, probe.shredded_at, probe.shred_reason = None, utcnow(), reason
    _store(settings).delete(probe.path)  # every object version too, with LETHE_REGISTRY_URL
    audit.append(session, actor=actor, action="probe.shredded",
                 payload={"probe_id": probe.id, "model": probe.model_name, "job_id": probe.job_id,
                          "rows": probe.rows, "reason": reason})
    session.flush()


def shred_due(session: Session, settings: Settings, now: dt.datetime | None = None) -> list[str]:
    """Shred every probe whose keep-until date (its requests' due date) has come."""
    now = now or utcnow()
    out = []
    for p in session.execute(select(SealedProbe).where(SealedProbe.shredded_at.is_(None),
                                                       SealedProbe.keep_until <= now)).scalars():
        shred(session, settings, p, reason=f"the due date of its requests ({p.keep_until.isoformat()}) came",
              actor="sweeper")
        out.append(p.id)
    return out


def for_job(session: Session, job_id: str | None) -> dict | None:
    """What a request's certificate says of its sealed rows (None: its job sealed none)."""
    if job_id is None:
        return None
    p = session.execute(select(SealedProbe).where(SealedProbe.job_id == job_id)).scalar_one_or_none()
    if p is None:
        return None
    return {"probe_id": p.id, "rows": p.rows, "sealed_at": p.created_at.isoformat(),
            "keep_until": p.keep_until.isoformat(), "ciphertext_sha256": p.sha256,
            "shredded_at": p.shredded_at.isoformat() if p.shredded_at else None,
            "shred_reason": p.shred_reason, "scored_by_orders": list(p.scored_by or [])}
