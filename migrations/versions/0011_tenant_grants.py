"""tenants: which models each may target, which methods, its quotas. Existing tenants
(`default` and any named by a key or request) keep every model (all_models).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""
import datetime as dt

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("all_models", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("methods", sa.JSON(), nullable=True),
        sa.Column("max_open_requests", sa.Integer(), nullable=True),
        sa.Column("max_requests_per_day", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "tenant_models",
        sa.Column("tenant", sa.String(64), sa.ForeignKey("tenants.name"), primary_key=True),
        sa.Column("model_name", sa.String(128), sa.ForeignKey("models.name"), primary_key=True),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("granted_by", sa.String(128), nullable=False),
    )
    # before this revision every tenant could target every model: nothing changes on upgrade
    bind = op.get_bind()
    names = {"default"}
    for table in ("api_keys", "forget_requests"):
        names |= {r[0] for r in bind.execute(sa.text(f"SELECT DISTINCT tenant FROM {table}"))}
    now = dt.datetime.now(dt.timezone.utc)
    tenants = sa.table("tenants", sa.column("name"), sa.column("all_models", sa.Boolean),
                       sa.column("created_at", sa.DateTime(timezone=True)),
                       sa.column("updated_at", sa.DateTime(timezone=True)))
    op.bulk_insert(tenants, [{"name": n, "all_models": True, "created_at": now, "updated_at": now}
                             for n in sorted(names)])


def downgrade() -> None:
    op.drop_table("tenant_models")
    op.drop_table("tenants")
