"""governance: API keys, request lifecycle (denied/canceled, retries, callbacks), sweeper
counters, purged versions, alias-move reasons, webhook deliveries

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
    )
    with op.batch_alter_table("forget_requests") as b:
        b.add_column(sa.Column("reason_code", sa.String(32), nullable=True))
        b.add_column(sa.Column("reason", sa.Text(), nullable=True))
        b.add_column(sa.Column("closed_at", TS, nullable=True))
        b.add_column(sa.Column("closed_by", sa.String(128), nullable=True))
        b.add_column(sa.Column("retries", sa.Integer(), nullable=False, server_default="0"))
        b.add_column(sa.Column("callback_url", sa.String(2048), nullable=True))
    with op.batch_alter_table("jobs") as b:
        b.add_column(sa.Column("sweeps", sa.Integer(), nullable=False, server_default="0"))
        b.add_column(sa.Column("swept_at", TS, nullable=True))
    with op.batch_alter_table("model_versions") as b:
        b.add_column(sa.Column("purged_at", TS, nullable=True))
    with op.batch_alter_table("alias_moves") as b:
        b.add_column(sa.Column("reason", sa.Text(), nullable=True))
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("request_id", sa.String(36), sa.ForeignKey("forget_requests.id"), nullable=False, index=True),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TS, nullable=True, index=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("log", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("delivered_at", TS, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    with op.batch_alter_table("alias_moves") as b:
        b.drop_column("reason")
    with op.batch_alter_table("model_versions") as b:
        b.drop_column("purged_at")
    with op.batch_alter_table("jobs") as b:
        b.drop_column("swept_at")
        b.drop_column("sweeps")
    with op.batch_alter_table("forget_requests") as b:
        for c in ("callback_url", "retries", "closed_by", "closed_at", "reason", "reason_code"):
            b.drop_column(c)
    op.drop_table("api_keys")
