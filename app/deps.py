"""FastAPI dependencies, named for what they give."""
from __future__ import annotations

from typing import Annotated, AsyncIterator

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from .db import get_sessionmaker
from .jobs.dispatch import Dispatcher
from .registry.service import ServingCache
from .settings import Settings


# The dependencies that do no I/O are ``async def``: FastAPI runs a plain ``def`` dependency
# in its thread pool, and each such hop costs about 0.1 ms of CPU (issue 16: POST /v1/forget
# made six of them).

async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def request_session(request: Request) -> AsyncIterator[Session]:
    """The request's one transaction: committed when the route returns, rolled back when it
    raises. FastAPI caches it per request, so the route and the scope check
    (app/security/guard.py) share it. Opening a Session does no I/O, so it is made on the
    event loop; the commit goes to the thread pool only when a transaction is still open (a
    route that committed itself, like POST /v1/forget, ends without another hop)."""
    session = get_sessionmaker(request.app.state.settings.database_url)()
    try:
        yield session
    except BaseException:
        await _finish(session, commit=False)
        raise
    await _finish(session, commit=True)


async def _finish(session: Session, commit: bool) -> None:
    if not session.in_transaction():
        session.close()  # no connection held: nothing to send
        return
    try:
        await run_in_threadpool(_end, session, commit)
    except BaseException:  # cancelled before the thread started: end it here rather than leak it
        _end(session, commit=False)
        raise


def _end(session: Session, commit: bool) -> None:
    try:
        if commit:
            session.commit()
        else:
            session.rollback()
    finally:
        session.close()


async def _dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


async def _serving(request: Request) -> ServingCache:
    return request.app.state.serving


SettingsDep = Annotated[Settings, Depends(_settings)]
SessionDep = Annotated[Session, Depends(request_session)]
DispatcherDep = Annotated[Dispatcher, Depends(_dispatcher)]
ServingDep = Annotated[ServingCache, Depends(_serving)]
