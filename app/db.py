"""Engine, sessions and the declarative base shared by every domain package.

SQLite (embedded mode) runs every transaction as ``BEGIN IMMEDIATE`` so writers are
serialised by the database itself; on Postgres, writers that must be serialised take a
row lock or an advisory lock (see ``audit.service`` and ``jobs.service``).
"""
from __future__ import annotations

import datetime as dt
import functools
import os
from contextlib import contextmanager
from typing import Iterator

from sqlalchemy import DateTime, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        value = value.astimezone(dt.timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


class Base(DeclarativeBase):
    pass


# the pool of a server's engine: connect_timeout, an unreachable host answers 503 within seconds
_SERVER_POOL = dict(pool_pre_ping=True, pool_size=5, max_overflow=10, connect_args={"connect_timeout": 5})


def make_engine(url: str, *, read_only: bool = False) -> Engine:
    """``read_only``: on SQLite, transactions start with a plain (deferred) BEGIN, so a long
    read (audit verification) never takes the write lock; WAL lets writers go on meanwhile."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    return create_engine(url, **_SERVER_POOL)


def make_async_engine(url: str):
    """The gateway's engine for the routes that run their database work on the event loop
    (``app.deps.RequestDb``): psycopg's async connection, the pool settings of
    ``make_engine``. None where there is no async driver for the URL (SQLite, the embedded
    default; a non-psycopg Postgres URL): those routes then use the thread pool.

    Its connections belong to the event loop that opened them: one engine per loop."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    u = make_url(url)
    if u.get_backend_name() != "postgresql" or u.get_driver_name() != "psycopg":
        return None
    # the sync engine's 15 connections at most, all kept open: an overflow connection is closed
    # when it goes back, and 32 clients on the event loop reopened them all the time
    size = _SERVER_POOL["pool_size"] + _SERVER_POOL["max_overflow"]
    return create_async_engine(u, **{**_SERVER_POOL, "pool_size": size, "max_overflow": 0})


@functools.lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    return make_engine(url)


@functools.lru_cache(maxsize=8)
def get_read_engine(url: str) -> Engine:
    return make_engine(url, read_only=True) if url.startswith("sqlite") else get_engine(url)


@contextmanager
def read_scope(url: str) -> Iterator[Session]:
    """A session for reading only (never writes, never takes SQLite's write lock); rolled back."""
    session = Session(bind=get_read_engine(url), expire_on_commit=False, autoflush=False)
    try:
        yield session
    finally:
        session.expunge_all()  # what was read stays readable after the transaction ends
        session.rollback()
        session.close()


@functools.lru_cache(maxsize=8)
def get_sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url), expire_on_commit=False, autoflush=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """One transaction: commit on success, roll back on error."""
    session = get_sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout: alembic.ini, migrations/


def migrate(settings) -> None:
    """Bring ``settings.database_url`` to the latest schema (Alembic ``upgrade head``); creates
    the storage directories first. The one migration entry point: ``lethe migrate``, ``serve``,
    ``bootstrap``, ``keys`` and the tests all call it."""
    from alembic import command
    from alembic.config import Config

    settings.ensure_dirs()
    cfg = Config(os.path.join(ROOT, "alembic.ini"))
    cfg.set_main_option("script_location", os.path.join(ROOT, "migrations"))
    cfg.attributes["url"] = settings.database_url
    cfg.attributes["data_dir"] = settings.data_dir  # data migrations (0005) move files there
    cfg.attributes["subject_secret"] = settings.subject_secret  # 0017 re-keys stored Idempotency-Keys
    command.upgrade(cfg, "head")
