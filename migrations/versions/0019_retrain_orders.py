"""retrain orders: exact versions trained by the customer's own pipeline
(app/registry/orders.py)

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "retrain_orders",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("model_name", sa.String(128), sa.ForeignKey("models.name"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("base_version", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("snapshot_path", sa.String(1024), nullable=False),
        sa.Column("snapshot_sha256", sa.String(64), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("forget_ids", sa.JSON(), nullable=False),
        sa.Column("recipe", sa.JSON(), nullable=True),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("escalated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("fulfilled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("job_id", sa.String(36), nullable=True),
        sa.Column("refusals", sa.JSON(), nullable=True),
    )
    op.create_index("ix_retrain_orders_model_name", "retrain_orders", ["model_name"])
    op.create_index("ix_retrain_orders_status", "retrain_orders", ["status"])


def downgrade() -> None:
    op.drop_index("ix_retrain_orders_status", "retrain_orders")
    op.drop_index("ix_retrain_orders_model_name", "retrain_orders")
    op.drop_table("retrain_orders")
