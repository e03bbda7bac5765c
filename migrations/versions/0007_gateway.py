"""gateway at the speed of its stack: pending-instance claims, an audit outbox, the relabel
target on jobs, and the index attach() uses

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""
import json

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

OPEN = ("queued", "running")


def upgrade() -> None:
    # one row per instance an open request covers: overlap is a primary-key conflict
    op.create_table(
        "forget_claims",
        sa.Column("model_name", sa.String(128), primary_key=True),
        sa.Column("instance_id", sa.String(128), primary_key=True),
        sa.Column("request_id", sa.String(36), sa.ForeignKey("forget_requests.id"), nullable=False),
    )
    op.create_index("ix_forget_claims_request_id", "forget_claims", ["request_id"])
    # events of POST /v1/forget wait here until the drainer chains them
    op.create_table(
        "audit_outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("ts", sa.String(40), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("subject_ref", sa.String(64), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
    )
    with op.batch_alter_table("jobs") as b:
        b.add_column(sa.Column("target_label", sa.Integer(), nullable=True))
    op.create_index("ix_jobs_model_status", "jobs", ["model_name", "status"])

    conn = op.get_bind()
    # open requests claim their instances (the data model forbids overlap already; first wins)
    seen: set = set()
    rows = conn.execute(sa.text("SELECT id, model_name, instance_ids FROM forget_requests "
                                "WHERE status IN ('queued', 'running') ORDER BY received_at, id")).all()
    claims = []
    for rid, model, ids in rows:
        for iid in (json.loads(ids) if isinstance(ids, str) else ids) or []:
            if (model, iid) not in seen:
                seen.add((model, iid))
                claims.append({"m": model, "i": iid, "r": rid})
    if claims:
        conn.execute(sa.text("INSERT INTO forget_claims (model_name, instance_id, request_id) VALUES (:m, :i, :r)"),
                     claims)
    # jobs serving a relabel request with a fixed target take no other request
    conn.execute(sa.text("UPDATE jobs SET target_label = (SELECT max(r.target_label) FROM forget_requests r "
                         "WHERE r.job_id = jobs.id)"))


def downgrade() -> None:
    op.drop_index("ix_jobs_model_status", table_name="jobs")
    with op.batch_alter_table("jobs") as b:
        b.drop_column("target_label")
    op.drop_table("audit_outbox")
    op.drop_index("ix_forget_claims_request_id", table_name="forget_claims")
    op.drop_table("forget_claims")
