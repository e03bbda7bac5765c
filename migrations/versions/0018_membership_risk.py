"""per-row membership risk of exact versions (models/risk.py; the planner reads it)

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "membership_risks",
        sa.Column("model_name", sa.String(128), sa.ForeignKey("models.name"), primary_key=True),
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("instance_id", sa.String(128), primary_key=True),
        sa.Column("risk", sa.Float(), nullable=False),
        sa.Column("gap", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("membership_risks")
