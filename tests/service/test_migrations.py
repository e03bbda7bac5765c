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
