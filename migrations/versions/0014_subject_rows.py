"""subject erasure reaches every row: an erasure group records, per dataset and split, the
subject's rows it erases from the dataset stores (held-out rows and rows no model trained
on included) and when they were removed

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("erasure_groups") as b:
        b.add_column(sa.Column("datasets", sa.JSON(), nullable=True))
        b.add_column(sa.Column("rows_erased_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("erasure_groups") as b:
        b.drop_column("rows_erased_at")
        b.drop_column("datasets")
