"""Pending instance claims: which open request covers which instance of a model.

``take`` inserts one row per instance with ``ON CONFLICT DO NOTHING`` (Postgres and SQLite
alike) and reports the instances another open request already holds; the primary key
(model, instance) decides, so two concurrent submissions of the same instance cannot both
succeed (the second waits for the first to commit, then sees the conflict). Ids are
inserted in sorted order so two requests over the same instances lock them in the same
order and cannot deadlock. ``release`` deletes a request's rows when it closes.
"""
from __future__ import annotations

import functools

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .models import ForgetRequest, PendingClaim

_INSERT = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def take(session: Session, model_name: str, request_id: str, instance_ids: list[str]) -> dict[str, tuple[str, str]]:
    """Claim ``instance_ids`` for ``request_id``. Returns {instance id: (holder request id,
    holder status)} for the ids another open request holds; empty when all were claimed.
    On a conflict the caller must roll back (the ids it did get are part of its transaction)."""
    ids = sorted(set(instance_ids))
    if not ids:
        return {}
    rows = [{"model_name": model_name, "instance_id": i, "request_id": request_id} for i in ids]
    # Core on the session's connection; the statement is built once per dialect and its
    # compiled form cached: the rows go as parameters (one multi-row INSERT ... RETURNING on
    # the wire, SQLAlchemy's insertmanyvalues, ids in sorted order)
    got = set(session.connection().execute(_take_stmt(session.get_bind().dialect.name), rows).scalars())
    return held_by_others(session, model_name, ids, got)


def held_by_others(session: Session, model_name: str, ids: list[str], got: set[str]) -> dict[str, tuple[str, str]]:
    """``take``'s answer once the INSERT returned ``got`` of ``ids``: {instance id: (holder
    request id, holder status)} for the rest."""
    if len(got) == len(set(ids)):
        return {}
    taken = [i for i in ids if i not in got]
    rows = session.execute(select(PendingClaim.instance_id, ForgetRequest.id, ForgetRequest.status)
                           .join(ForgetRequest, ForgetRequest.id == PendingClaim.request_id)
                           .where(PendingClaim.model_name == model_name, PendingClaim.instance_id.in_(taken)))
    return {iid: (rid, status) for iid, rid, status in rows}


def insert_sorted_ids(dialect_insert=postgresql.insert):
    """Postgres: the claims of one request in a single statement that can be a part of a
    larger one (``forget.service``: with the request and its audit event). Parameters
    ``c_model``, ``c_request``, ``c_ids`` (sorted: rows go in that order, ``WITH ORDINALITY``,
    as ``take``'s do); returns the ids claimed."""
    from sqlalchemy import String, bindparam, column, func
    from sqlalchemy.dialects.postgresql import ARRAY

    t = PendingClaim.__table__
    ids = func.unnest(bindparam("c_ids", type_=ARRAY(String))).table_valued(column("iid", String),
                                                                           with_ordinality="n").render_derived()
    rows = (select(bindparam("c_model", type_=String), ids.c.iid, bindparam("c_request", type_=String))
            .order_by(ids.c.n))
    return (dialect_insert(t).from_select(["model_name", "instance_id", "request_id"], rows)
            .on_conflict_do_nothing(index_elements=["model_name", "instance_id"]).returning(t.c.instance_id))


@functools.cache
def _take_stmt(dialect: str):
    t = PendingClaim.__table__
    return (_INSERT[dialect](t).on_conflict_do_nothing(index_elements=["model_name", "instance_id"])
            .returning(t.c.instance_id))


def release(session: Session, request_id: str) -> None:
    session.execute(delete(PendingClaim).where(PendingClaim.request_id == request_id))
