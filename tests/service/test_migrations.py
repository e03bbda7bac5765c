"""One Alembic history: it builds exactly the ORM's schema and rolls back cleanly."""
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

import app.models_all  # noqa: F401
from app.cli import ROOT, migrate
from app.db import Base

from .conftest import make_settings


def test_migration_matches_models_and_downgrades(tmp_path):
    s = make_settings(tmp_path)
    migrate(s)
    engine = create_engine(s.database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], diff
    cfg = Config(f"{ROOT}/alembic.ini")
    cfg.attributes["url"] = s.database_url
    command.downgrade(cfg, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    command.upgrade(cfg, "head")
    assert "audit_events" in inspect(engine).get_table_names()
    engine.dispose()


def test_each_migration_says_what_it_revises():
    """The docstring's "Revises:" line is what a reader sees; it must name down_revision."""
    import glob
    import importlib.util
    import re

    for path in sorted(glob.glob(f"{ROOT}/migrations/versions/*.py")):
        spec = importlib.util.spec_from_file_location("migration", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        said = re.search(r"^Revises:[ \t]*(\S*)[ \t]*$", module.__doc__, re.MULTILINE)
        assert said and said.group(1) == (module.down_revision or ""), path


def test_npy_catalogue_moves_into_the_store(tmp_path):
    """An installation from before 0009 (one .npy file per instance) is carried forward: a
    registered dataset whose store holds the live rows (and the shipped test split), the
    catalogue pointing to it, the per-instance files gone, the erased one's bytes nowhere."""
    import os

    import numpy as np
    from sqlalchemy import text

    from app.catalogue import service as catalogue
    from app.catalogue.models import TrainingInstance
    from app.db import session_scope
    from models.data import load_dataset

    s = make_settings(tmp_path)
    s.ensure_dirs()
    cfg = Config(f"{ROOT}/alembic.ini")
    cfg.attributes["url"] = s.database_url
    command.upgrade(cfg, "0008")
    ds = load_dataset("digits")
    x = ds.x_train.numpy()
    engine = create_engine(s.database_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO models (name, dataset, arch, input_shape, classes, family, created_at) "
                          "VALUES ('old-cnn', 'digits', 'cnn', '[1, 8, 8]', :c, 'instance', '2026-11-01')"),
                     {"c": str(ds.classes).replace("'", '"')})
        for i in range(6):
            path = os.path.join(s.data_dir, "old-cnn", f"digits-{i:05d}.npy")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            np.save(path, x[i], allow_pickle=False)
            conn.execute(text(
                "INSERT INTO catalogue_instances (model_name, instance_id, dataset, subject_ref, label, content_hash, "
                "storage_uri, erased_at) VALUES ('old-cnn', :iid, 'digits', :ref, :label, :h, :uri, :erased)"),
                {"iid": f"digits-{i:05d}", "ref": f"ref{i // 2}", "label": int(ds.y_train[i]),
                 "h": catalogue.content_hash(x[i]), "uri": path, "erased": "2026-11-02" if i == 5 else None})
    engine.dispose()
    migrate(s)  # 0008 -> head
    from app.datasets import service as datasets

    assert not os.path.exists(os.path.join(s.data_dir, "old-cnn"))
    with session_scope(s.database_url) as db:
        d = datasets.get_ready(db, "digits")
        assert (d.train_rows, d.test_rows, d.erased_rows) == (5, len(ds.y_test), 1)
        rows = sorted(db.query(TrainingInstance).all(), key=lambda r: r.instance_id)
        assert {r.storage_uri for r in rows} == {datasets.store_dir(s, "digits")}
        assert rows[5].raw_deleted_at is not None
        got, y = catalogue.load_arrays(rows[:5], check_hash=True)
    np.testing.assert_array_equal(got, x[:5])
    store = datasets.open_store(s, "digits")
    assert store.lookup_subject("ref1") == ["digits-00002", "digits-00003"]
    erased = x[5].astype(np.float32).tobytes()
    for root, _, files in os.walk(s.data_dir):
        for f in files:
            assert erased not in open(os.path.join(root, f), "rb").read(), f
