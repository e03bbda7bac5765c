"""The floor of the gateway benchmark (``bench/gateway.py``): a bare FastAPI + SQLAlchemy
app on the same Postgres, the same engine settings (``app.db.make_engine``) and the same
uvicorn settings as Lethe, whose POST inserts one row and whose GET reads one row by
primary key. Nothing Lethe does beyond that (auth, validation, claims, audit, jobs) is here.

``python -m bench.floor`` serves it; ``BENCH_FLOOR_URL`` is the database, ``BENCH_FLOOR_PORT``
the port, ``BENCH_FLOOR_WORKERS`` the number of processes.
"""
from __future__ import annotations

import datetime as dt
import os
import uuid

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import JSON, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from app.db import UTCDateTime, get_engine, utcnow


class _Base(DeclarativeBase):
    pass


class FloorRow(_Base):
    __tablename__ = "floor_rows"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    model: Mapped[str] = mapped_column(String(128))
    instance_ids: Mapped[list] = mapped_column(JSON)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Body(BaseModel):
    model: str
    instance_ids: list[str]


def create_app(url: str | None = None) -> FastAPI:
    engine = get_engine(url or os.environ["BENCH_FLOOR_URL"])
    _Base.metadata.create_all(engine)
    app = FastAPI()

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.post("/floor", status_code=202)
    def insert(body: Body):
        row_id = str(uuid.uuid4())
        with Session(engine) as s, s.begin():
            s.add(FloorRow(id=row_id, model=body.model, instance_ids=body.instance_ids, received_at=utcnow()))
        return {"id": row_id, "status": "queued"}

    @app.get("/floor/{row_id}")
    def read(row_id: str):
        with Session(engine) as s:
            row = s.execute(select(FloorRow).where(FloorRow.id == row_id)).scalar_one_or_none()
            if row is None:
                raise HTTPException(404, "no such row")
            return {"id": row.id, "model": row.model, "instance_ids": row.instance_ids,
                    "received_at": row.received_at}

    return app


def main() -> None:
    import uvicorn

    workers = int(os.environ.get("BENCH_FLOOR_WORKERS", "1"))
    # the same settings as `lethe serve` (app/cli.py)
    common = dict(host="127.0.0.1", port=int(os.environ["BENCH_FLOOR_PORT"]), log_level="info", access_log=False,
                  log_config=None)
    if workers == 1:
        uvicorn.run(create_app(), **common)
    else:
        uvicorn.run("bench.floor:create_app", factory=True, workers=workers, **common)


if __name__ == "__main__":
    main()
