"""sealed probes: the forget rows of a model its own pipeline retrains, sealed until an
order's upload is scored on them or their requests' due date (app/registry/probes.py)

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sealed_probes",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("model_name", sa.String(128), sa.ForeignKey("models.name"), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("instance_ids", sa.JSON(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("key_hex", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("keep_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("shredded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("shred_reason", sa.Text(), nullable=True),
        sa.Column("scored_by", sa.JSON(), nullable=True),
    )
    op.create_index("ix_sealed_probes_model_name", "sealed_probes", ["model_name"])
    op.create_index("ix_sealed_probes_job_id", "sealed_probes", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_sealed_probes_job_id", "sealed_probes")
    op.drop_index("ix_sealed_probes_model_name", "sealed_probes")
    op.drop_table("sealed_probes")
