"""FastAPI dependencies, named for what they give."""
from __future__ import annotations

import asyncio
from typing import Annotated, AsyncIterator, Callable, TypeVar

import anyio
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from .db import get_sessionmaker, make_async_engine
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


T = TypeVar("T")


class RequestDb:
    """The request's one transaction, for the routes that clients hammer (submit, polls):
    ``await db.run(fn, *args)`` calls ``fn(session, *args)`` — plain synchronous service
    code — and returns what it returns.

    On Postgres (psycopg) ``fn`` runs on the event loop, its queries on psycopg's async
    connection (SQLAlchemy's ``AsyncSession.run_sync``: a greenlet, not a thread), so the
    request never hops to the thread pool — the scope check, the route and the commit
    included. With 32 clients the thread-pool hops and the threads' fight for the GIL cost
    more CPU than the route's own work (issue 16). ``fn`` must do no other blocking I/O
    (files, the broker): the caller does that after ``run``. Elsewhere (SQLite, the embedded
    default) ``fn`` runs in the thread pool, as a ``def`` route would."""

    def __init__(self, session: Session, asession: AsyncSession | None):
        self.session, self._async = session, asession

    async def run(self, fn: Callable[..., T], *args) -> T:
        if self._async is None:
            return await run_in_threadpool(fn, self.session, *args)
        return await self._async.run_sync(fn, *args)


async def request_db(request: Request) -> AsyncIterator[RequestDb]:
    """A ``RequestDb``, committed when the route returns, rolled back when it raises; shared
    by the route and its scope check (``security.require_scope_on_loop``)."""
    engine = _async_engine(request)
    if engine is None:  # what request_session does
        async with _gate(request):
            session = get_sessionmaker(request.app.state.settings.database_url)()
            try:
                yield RequestDb(session, None)
            except BaseException:
                await _finish(session, commit=False)
                raise
            await _finish(session, commit=True)
        return
    # no gate: a request waiting for a connection waits on the event loop, holding no thread
    asession = AsyncSession(engine, expire_on_commit=False, autoflush=False)
    try:
        yield RequestDb(asession.sync_session, asession)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await asession.close()  # rolls the transaction back and returns the connection, in one step
        raise
    with anyio.CancelScope(shield=True):
        try:
            if asession.sync_session.in_transaction():
                await asession.commit()
        finally:
            await asession.close()


def _async_engine(request: Request):
    """The app's async engine for the running event loop (its connections belong to that
    loop: a test client that starts a new loop gets a new engine); None on SQLite."""
    state = request.app.state
    loop = asyncio.get_running_loop()
    held = getattr(state, "async_engine", None)
    if held is None or held[0] is not loop:
        held = state.async_engine = (loop, make_async_engine(state.settings.database_url))
    return held[1]


async def dispose_async_engine(state) -> None:
    """At shutdown: close the async engine's connections (when made on this loop)."""
    held = getattr(state, "async_engine", None)
    if held is not None and held[1] is not None and held[0] is asyncio.get_running_loop():
        await held[1].dispose()
    state.async_engine = None


async def _dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


async def _serving(request: Request) -> ServingCache:
    return request.app.state.serving


SettingsDep = Annotated[Settings, Depends(_settings)]
SessionDep = Annotated[Session, Depends(request_session)]
RequestDbDep = Annotated[RequestDb, Depends(request_db)]
DispatcherDep = Annotated[Dispatcher, Depends(_dispatcher)]
ServingDep = Annotated[ServingCache, Depends(_serving)]
