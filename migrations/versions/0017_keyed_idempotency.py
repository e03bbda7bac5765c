"""no raw subject identifier stored: Idempotency-Keys (which often name the person, e.g.
``erase-patient-0007``) are stored as keyed references, ``hmac:`` + HMAC-SHA256 under the
subject secret of the tenant-namespaced key, like subject ids; the keys stored as sent
before are re-keyed here (a retry with the same key still finds its request)

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""
import hashlib
import hmac

import sqlalchemy as sa
from alembic import context, op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

PREFIX = "hmac:"


def upgrade() -> None:
    secret = context.config.attributes.get("subject_secret")
    if secret is None:
        from app.settings import get_settings

        secret = get_settings().subject_secret
    bind = op.get_bind()
    for table in ("forget_requests", "erasure_groups"):
        t = sa.table(table, sa.column("id"), sa.column("idempotency_key"))
        rows = bind.execute(sa.select(t.c.id, t.c.idempotency_key).where(
            t.c.idempotency_key.is_not(None), sa.not_(t.c.idempotency_key.startswith(PREFIX)))).all()
        for rid, key in rows:
            ref = hmac.digest(secret.encode("utf-8"), key.encode("utf-8"), "sha256").hex()
            bind.execute(t.update().where(t.c.id == rid).values(idempotency_key=PREFIX + ref))


def downgrade() -> None:
    pass  # a keyed reference cannot be turned back into the key
