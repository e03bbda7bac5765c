"""exact unlearning: a model's method family; shard and slice of every catalogued instance

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # "instance" (one checkpoint), "sisa" or "arcane" (a bundle: manifest + one file per member)
    with op.batch_alter_table("models") as b:
        b.add_column(sa.Column("family", sa.String(16), nullable=False, server_default="instance"))
    # for sharded models: the member (SISA shard / ARCANE class sub-model) and slice of each instance
    with op.batch_alter_table("catalogue_instances") as b:
        b.add_column(sa.Column("shard", sa.Integer(), nullable=True))
        b.add_column(sa.Column("slice", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("catalogue_instances") as b:
        b.drop_column("slice")
        b.drop_column("shard")
    with op.batch_alter_table("models") as b:
        b.drop_column("family")
