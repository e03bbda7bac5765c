"""tenants: API keys and forget requests belong to one (existing rows: "default")

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as b:
        b.add_column(sa.Column("tenant", sa.String(64), nullable=False, server_default="default"))
    with op.batch_alter_table("forget_requests") as b:
        b.add_column(sa.Column("tenant", sa.String(64), nullable=False, server_default="default"))
        b.create_index("ix_forget_requests_tenant", ["tenant"])


def downgrade() -> None:
    with op.batch_alter_table("forget_requests") as b:
        b.drop_index("ix_forget_requests_tenant")
        b.drop_column("tenant")
    with op.batch_alter_table("api_keys") as b:
        b.drop_column("tenant")
