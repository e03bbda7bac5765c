"""registry events: subscriptions to a model's (or the whole registry's) events, the events
with a sequence per model, and webhook deliveries that belong to a subscription instead of a
forget request (one delivery table, one delivery machinery)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=True),
        sa.Column("model_name", sa.String(128), nullable=True, index=True),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("deleted_at", TS, nullable=True),
    )
    op.create_table(
        "registry_events",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=True),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("model_name", "seq", name="uq_registry_events_model_seq"),
    )
    with op.batch_alter_table("webhook_deliveries") as b:
        b.alter_column("request_id", existing_type=sa.String(36), nullable=True)
        b.add_column(sa.Column("subscription_id", sa.String(36), nullable=True))
        b.add_column(sa.Column("event_id", sa.String(36), nullable=True))
        b.create_index("ix_webhook_deliveries_subscription_id", ["subscription_id"])
        b.create_foreign_key("fk_webhook_deliveries_subscription", "subscriptions", ["subscription_id"], ["id"])


def downgrade() -> None:
    op.execute("DELETE FROM webhook_deliveries WHERE request_id IS NULL")
    with op.batch_alter_table("webhook_deliveries") as b:
        b.drop_constraint("fk_webhook_deliveries_subscription", type_="foreignkey")
        b.drop_index("ix_webhook_deliveries_subscription_id")
        b.drop_column("event_id")
        b.drop_column("subscription_id")
        b.alter_column("request_id", existing_type=sa.String(36), nullable=False)
    op.drop_table("registry_events")
    op.drop_table("subscriptions")
