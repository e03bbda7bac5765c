"""initial schema: registry, catalogue, jobs, forget requests, append-only audit log

Revision ID: 0001
Revises:
Create Date: 2025-11-23
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("arch", sa.String(64), nullable=False),
        sa.Column("input_shape", sa.JSON(), nullable=False),
        sa.Column("classes", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("model_name", sa.String(128), sa.ForeignKey("models.name"), nullable=False, index=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("storage_path", sa.String(1024), nullable=False),
        sa.Column("parent_version", sa.Integer(), nullable=True),
        sa.Column("job_id", sa.String(36), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("model_name", "version", name="uq_model_versions_model_version"),
        sa.UniqueConstraint("job_id", name="uq_model_versions_job"),
    )
    op.create_table(
        "model_aliases",
        sa.Column("model_name", sa.String(128), sa.ForeignKey("models.name"), primary_key=True),
        sa.Column("alias", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "alias_moves",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("model_name", sa.String(128), sa.ForeignKey("models.name"), nullable=False, index=True),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("from_version", sa.Integer(), nullable=True),
        sa.Column("to_version", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=True),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("moved_at", TS, nullable=False),
    )
    op.create_table(
        "catalogue_instances",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("model_name", sa.String(128), sa.ForeignKey("models.name"), nullable=False, index=True),
        sa.Column("instance_id", sa.String(128), nullable=False),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("subject_ref", sa.String(64), nullable=True, index=True),
        sa.Column("label", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("storage_uri", sa.String(1024), nullable=False),
        sa.Column("erased_at", TS, nullable=True),
        sa.Column("erased_by_job", sa.String(36), nullable=True),
        sa.Column("raw_deleted_at", TS, nullable=True),
        sa.UniqueConstraint("model_name", "instance_id", name="uq_catalogue_model_instance"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("model_name", sa.String(128), sa.ForeignKey("models.name"), nullable=False, index=True),
        sa.Column("objective", sa.String(32), nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("stage", sa.String(128), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(256), nullable=True),
        sa.Column("claim_token", sa.String(36), nullable=True),
        sa.Column("heartbeat_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("base_version", sa.Integer(), nullable=True),
        sa.Column("result_version", sa.Integer(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("stats", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_table(
        "forget_requests",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("external_id", sa.String(256), nullable=True),
        sa.Column("idempotency_key", sa.String(256), nullable=True, unique=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("subject_ref", sa.String(64), nullable=True, index=True),
        sa.Column("instance_ids", sa.JSON(), nullable=False),
        sa.Column("model_name", sa.String(128), sa.ForeignKey("models.name"), nullable=False, index=True),
        sa.Column("objective", sa.String(32), nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("target_label", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("due_at", TS, nullable=False),
        sa.Column("completed_at", TS, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("version_before", sa.Integer(), nullable=True),
        sa.Column("version_after", sa.Integer(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id"), nullable=True, index=True),
    )
    op.create_table(
        "audit_events",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("ts", sa.String(40), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("action", sa.String(64), nullable=False, index=True),
        sa.Column("subject_ref", sa.String(64), nullable=True, index=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
    )
    # append-only: the database itself refuses UPDATE and DELETE on the audit log
    if op.get_bind().dialect.name == "postgresql":
        op.execute("""
            CREATE FUNCTION lethe_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'audit_events is append-only'; END $$;
        """)
        op.execute("""CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
                      FOR EACH ROW EXECUTE FUNCTION lethe_audit_append_only();""")
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(f"""CREATE TRIGGER audit_events_no_{verb.lower()} BEFORE {verb} ON audit_events
                           BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;""")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_events_append_only ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS lethe_audit_append_only()")
    for t in ("audit_events", "forget_requests", "jobs", "catalogue_instances", "alias_moves",
              "model_aliases", "model_versions", "models"):
        op.drop_table(t)
