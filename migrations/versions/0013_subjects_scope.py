"""subjects:read: subject reads leave forget:read for a scope of their own; keys that hold
forget:read get it, so nothing an existing key could do changes

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

KEYS = sa.table("api_keys", sa.column("id"), sa.column("scopes", sa.JSON))


def _rewrite(change) -> None:
    bind = op.get_bind()
    for key_id, scopes in bind.execute(sa.select(KEYS.c.id, KEYS.c.scopes)).all():
        new = change(list(scopes))
        if new != scopes:
            bind.execute(KEYS.update().where(KEYS.c.id == key_id).values(scopes=new))


def upgrade() -> None:
    _rewrite(lambda s: [*s, "subjects:read"] if "forget:read" in s and "subjects:read" not in s else s)


def downgrade() -> None:
    _rewrite(lambda s: [x for x in s if x != "subjects:read"] or ["forget:read"])
