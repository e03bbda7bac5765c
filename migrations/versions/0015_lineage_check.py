"""lineage has one source of truth, the dataset: manifests are now checked against it when a
model is registered (training-split rows only, the dataset's subjects). This migration changes
no row; it finds the models registered before whose catalogue disagrees with their dataset
(held-out rows named as training rows, a subject other than the dataset's) and reports them
in its log: which side is right is the operator's call (``lethe doctor`` reports the same)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""
import logging
import os

from alembic import context, op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")


def upgrade() -> None:
    from app.catalogue.service import disagreeing_rows
    from app.datasets.store import DatasetStore
    from app.settings import get_settings

    data_dir = context.config.attributes.get("data_dir") or get_settings().data_dir

    def store_for(name: str):
        root = os.path.join(data_dir, "datasets", name)
        return DatasetStore(root) if os.path.isfile(os.path.join(root, "index.sqlite")) else None

    for model, bad in disagreeing_rows(op.get_bind(), store_for).items():
        log.warning("model %s disagrees with its dataset %s: %d held-out row(s) catalogued as training rows, "
                    "%d row(s) with another subject than the dataset's (e.g. %s); nothing was changed: "
                    "re-register the model with a corrected manifest or correct the dataset (lethe doctor)",
                    model, bad["dataset"], bad["held_out_rows"], bad["subject_mismatch"],
                    ", ".join(bad["examples"][:5]))


def downgrade() -> None:
    pass
