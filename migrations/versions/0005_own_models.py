"""your own models: architecture parameters and a training recipe stored with each model,
training runs (Lethe trains a model on a registered dataset), erasure groups (one request
fanned out to every model trained on a subject's data)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("models") as b:
        # constructor parameters of the architecture (models.architectures); NULL = its defaults
        b.add_column(sa.Column("arch_params", sa.JSON(), nullable=True))
        # models.train.Recipe as JSON; NULL = the demo recipe (Adam, the architecture's default epochs)
        b.add_column(sa.Column("recipe", sa.JSON(), nullable=True))
        # "ready" | "training" (a training run will publish version 1) | "failed" (training failed)
        b.add_column(sa.Column("status", sa.String(16), nullable=False, server_default="ready"))
    op.create_table(
        "training_runs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("model_name", sa.String(128), sa.ForeignKey("models.name"), nullable=False, index=True),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("stage", sa.String(128), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("worker", sa.String(256), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("heartbeat_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
    )
    op.create_table(
        "erasure_groups",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("subject_ref", sa.String(64), nullable=False, index=True),
        sa.Column("idempotency_key", sa.String(256), nullable=True, unique=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("received_at", TS, nullable=False),
    )
    with op.batch_alter_table("forget_requests") as b:
        b.add_column(sa.Column("group_id", sa.String(36), nullable=True))
        b.create_index("ix_forget_requests_group_id", ["group_id"])
        b.create_foreign_key("fk_forget_requests_group", "erasure_groups", ["group_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("forget_requests") as b:
        b.drop_constraint("fk_forget_requests_group", type_="foreignkey")
        b.drop_index("ix_forget_requests_group_id")
        b.drop_column("group_id")
    op.drop_table("erasure_groups")
    op.drop_table("training_runs")
    with op.batch_alter_table("models") as b:
        b.drop_column("status")
        b.drop_column("recipe")
        b.drop_column("arch_params")
