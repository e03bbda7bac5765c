"""FastAPI dependencies, named for what they give."""
from __future__ import annotations

from typing import Annotated, AsyncIterator

import anyio
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
    async with _gate(request):
        session = get_sessionmaker(request.app.state.settings.database_url)()
        try:
            yield session
        except BaseException:
            await _finish(session, commit=False)
            raise
        await _finish(session, commit=True)


def _gate(request: Request) -> anyio.Semaphore:
    """Admission to the database: at most half as many requests hold a session as the pool
    has connections. A request keeps its connection from its first query to its end, across
    thread-pool hops (the scope check, the route, the commit), and a few routes open one
    more short session meanwhile (the audit routes drain the outbox, the dashboard verifies
    the chain): two connections at most. Without the gate, with more requests in flight
    than connections + threads, every pool thread could wait for a connection held by a
    request that waits for a thread — stuck until the pool's timeout. Waiting here costs a
    coroutine on the event loop, not a thread."""
    state = request.app.state
    gate = getattr(state, "db_gate", None)
    if gate is None:
        pool = get_sessionmaker(state.settings.database_url).kw["bind"].pool
        size = pool.size() + max(0, getattr(pool, "_max_overflow", 0)) if hasattr(pool, "size") else 64
        gate = state.db_gate = anyio.Semaphore(max(1, size // 2))  # binds to no event loop
    return gate


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
