"""the catalogue's raw data moves from one .npy file per instance into the dataset store

Every dataset named by the catalogue becomes a registered dataset whose rows live in the
columnar store (app/datasets/store.py); catalogue rows point to the store; the .npy files
are deleted. A fresh database has nothing to move.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""
import datetime as dt
import os

import sqlalchemy as sa
from alembic import context, op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    rows = [dict(r._mapping) for r in bind.execute(sa.text(
        "SELECT id, instance_id, dataset, subject_ref, label, storage_uri, erased_at, raw_deleted_at "
        "FROM catalogue_instances WHERE storage_uri LIKE '%.npy'"))]
    if not rows:
        return
    from app.datasets.legacy import import_npy_catalogue, remove_npy_files
    from app.settings import get_settings

    data_dir = context.config.attributes.get("data_dir") or get_settings().data_dir
    models = sa.table("models", sa.column("dataset"), sa.column("classes", sa.JSON))
    classes_of = {d: c for d, c in bind.execute(sa.select(models.c.dataset, models.c.classes))}
    made = import_npy_catalogue(data_dir, rows, classes_of)
    now = dt.datetime.now(dt.timezone.utc)
    datasets = sa.table("datasets", *(sa.column(c) for c in (
        "name", "status", "kind", "train_rows", "test_rows", "erased_rows", "subjects", "bytes", "source",
        "split_rule", "progress", "created_by", "created_at", "updated_at")),
        sa.column("schema", sa.JSON), sa.column("classes", sa.JSON))
    # erased instances keep no raw data anywhere (their files go below)
    bind.execute(sa.text("UPDATE catalogue_instances SET raw_deleted_at = :now WHERE erased_at IS NOT NULL "
                         "AND raw_deleted_at IS NULL AND storage_uri LIKE '%.npy'"), {"now": now})
    for d in made:
        erased = sum(1 for r in rows if r["dataset"] == d["name"] and r["erased_at"] is not None)
        bind.execute(sa.insert(datasets).values(
            name=d["name"], status="ready", kind=d["kind"], schema=d["schema"], classes=d["classes"],
            train_rows=d["train_rows"], test_rows=d["test_rows"], erased_rows=erased, subjects=d["subjects"],
            bytes=d["bytes"], source="migration 0009 (per-instance .npy catalogue)", split_rule=d["split_rule"],
            progress=1.0, created_by="migration", created_at=now, updated_at=now))
        bind.execute(sa.text("UPDATE catalogue_instances SET storage_uri = :root WHERE dataset = :name"),
                     {"root": d["root"], "name": d["name"]})
    moved = {d["name"] for d in made}
    for name in {r["dataset"] for r in rows} - moved:
        bind.execute(sa.text("UPDATE catalogue_instances SET storage_uri = :root WHERE dataset = :name"),
                     {"root": os.path.join(data_dir, "datasets", name), "name": name})
    remove_npy_files(rows)


def downgrade() -> None:
    # the per-instance files are not rebuilt; the store stays where it is
    pass
