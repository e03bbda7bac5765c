"""consolidation: versions say whether they are exact and carry their approximation debt;
requests name the exact version that consolidated them

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as b:
        b.add_column(sa.Column("exact", sa.Boolean(), nullable=False, server_default=sa.true()))
        b.add_column(sa.Column("debt_instances", sa.Integer(), nullable=False, server_default="0"))
        b.add_column(sa.Column("debt_versions", sa.Integer(), nullable=False, server_default="0"))
        b.add_column(sa.Column("debt_due_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("forget_requests") as b:
        b.add_column(sa.Column("exact_version", sa.Integer(), nullable=True))
    _backfill(op.get_bind())


def _backfill(conn) -> None:
    """Versions published by an instance-wise job before this migration: exact only when the
    job retrained (metrics say ``exact``); the debt summed along the lineage as the worker
    now records it; a request names the first exact version at or after the one it got."""
    import json

    t = sa.text
    families = dict(conn.execute(t("SELECT name, family FROM models")).all())
    rows = conn.execute(t("SELECT id, model_name, version, parent_version, job_id, metrics FROM model_versions "
                          "ORDER BY model_name, version")).all()
    debt: dict[tuple[str, int], tuple[int, int, object]] = {}
    for vid, model, version, parent, job_id, metrics in rows:
        m = json.loads(metrics) if isinstance(metrics, str) else (metrics or {})
        exact = job_id is None or families.get(model) != "instance" or bool(m.get("exact"))
        if exact:
            debt[(model, version)] = (0, 0, None)
            conn.execute(t("UPDATE forget_requests SET exact_version = :v WHERE model_name = :m AND "
                           "status = 'completed' AND exact_version IS NULL AND version_after <= :v"),
                         {"v": version, "m": model})
            continue
        pi, pv, pdue = debt.get((model, parent), (0, 0, None))
        due = conn.execute(t("SELECT MIN(due_at) FROM forget_requests WHERE job_id = :j"), {"j": job_id}).scalar()
        due = min(d for d in (pdue, due) if d is not None) if (pdue or due) else None
        debt[(model, version)] = (pi + int(m.get("k") or 0), pv + 1, due)
        conn.execute(t("UPDATE model_versions SET exact = :f, debt_instances = :i, debt_versions = :n, "
                       "debt_due_at = :d WHERE id = :id"),
                     {"f": False, "i": pi + int(m.get("k") or 0), "n": pv + 1, "d": due, "id": vid})


def downgrade() -> None:
    with op.batch_alter_table("forget_requests") as b:
        b.drop_column("exact_version")
    with op.batch_alter_table("model_versions") as b:
        b.drop_column("debt_due_at")
        b.drop_column("debt_versions")
        b.drop_column("debt_instances")
        b.drop_column("exact")
