"""forget_requests.reveal_at: the earliest time a tenant sees its request's final state
(no oracle: app/forget/timeline.py)

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("forget_requests") as batch:
        batch.add_column(sa.Column("reveal_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("forget_requests") as batch:
        batch.drop_column("reveal_at")
