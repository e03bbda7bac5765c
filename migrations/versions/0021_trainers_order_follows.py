"""retrain orders issued because a starting point forgot: the requests they follow
(app/jobs/restarts.py, app/registry/orders.py)

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("retrain_orders", sa.Column("follows", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("retrain_orders", "follows")
