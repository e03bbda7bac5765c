"""The dataset table: one row per registered dataset. Its rows live in the columnar store
(``app/datasets/store.py``) under ``<data_dir>/datasets/<name>/``; this row says what they
are (schema, classes, splits), how many there are, and where ingestion stands."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, BigInteger, Float, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, UTCDateTime, utcnow

INGESTING, READY, FAILED = "ingesting", "ready", "failed"


class Dataset(Base):
    __tablename__ = "datasets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default=INGESTING)
    kind: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # {"kind", "classes", "shape", "columns" | "column", "vocab_size"?}: fixed once ready
    schema: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    classes: Mapped[list | None] = mapped_column(JSON, nullable=True)
    train_rows: Mapped[int] = mapped_column(Integer, default=0)
    test_rows: Mapped[int] = mapped_column(Integer, default=0)
    erased_rows: Mapped[int] = mapped_column(Integer, default=0)
    subjects: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # where the rows came from: "upload:<filename>" or the server-side path/URI (never contents)
    source: Mapped[str] = mapped_column(String(1024), default="")
    split_rule: Mapped[str] = mapped_column(String(64), default="")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    def record_erasure(self, store, rows: int) -> None:
        """Count ``rows`` erased from ``store`` (a DatasetStore)."""
        if rows:
            counts = store.counts()
            self.erased_rows += rows
            self.train_rows, self.test_rows, self.bytes = counts["train"], counts["test"], store.disk_bytes()
            self.subjects = store.subject_count()  # a subject erased everywhere no longer counts
