"""FastAPI dependencies, named for what they give."""
from __future__ import annotations

from typing import Annotated, Iterator

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from .db import session_scope
from .jobs.dispatch import Dispatcher
from .registry.service import ServingCache
from .settings import Settings


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def request_session(request: Request) -> Iterator[Session]:
    """The request's one transaction (commit on success). FastAPI caches it per request, so
    the route and the scope check (app/security/guard.py) share it."""
    with session_scope(request.app.state.settings.database_url) as session:
        yield session


def _dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


def _serving(request: Request) -> ServingCache:
    return request.app.state.serving


SettingsDep = Annotated[Settings, Depends(_settings)]
SessionDep = Annotated[Session, Depends(request_session)]
DispatcherDep = Annotated[Dispatcher, Depends(_dispatcher)]
ServingDep = Annotated[ServingCache, Depends(_serving)]
