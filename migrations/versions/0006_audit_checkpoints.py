"""signed audit checkpoints: the chain head pinned by the service's Ed25519 key

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_checkpoints",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("head", sa.String(64), nullable=False),
        sa.Column("at", sa.String(40), nullable=False),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
    )
    # append-only, like audit_events (the function of migration 0001 is reused on Postgres)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("""CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
                      FOR EACH ROW EXECUTE FUNCTION lethe_audit_append_only();""")
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(f"""CREATE TRIGGER audit_checkpoints_no_{verb.lower()} BEFORE {verb} ON audit_checkpoints
                           BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END;""")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_checkpoints_append_only ON audit_checkpoints")
    op.drop_table("audit_checkpoints")
