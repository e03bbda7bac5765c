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
