"""FastAPI dependencies, named for what they give."""
from __future__ import annotations

from typing import Annotated, Iterator

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from .db import get_sessionmaker
from .jobs.dispatch import Dispatcher
from .registry.service import ServingCache
from .settings import Settings


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _session(request: Request) -> Iterator[Session]:
    session = get_sessionmaker(request.app.state.settings.database_url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


def _serving(request: Request) -> ServingCache:
    return request.app.state.serving


SettingsDep = Annotated[Settings, Depends(_settings)]
SessionDep = Annotated[Session, Depends(_session)]
DispatcherDep = Annotated[Dispatcher, Depends(_dispatcher)]
ServingDep = Annotated[ServingCache, Depends(_serving)]
