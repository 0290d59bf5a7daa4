"""Schema and writes: one row per analysed frame, one row per face per frame, both idempotent; plus a row per
camera (first/last seen) and per track (summary), updated in the same transaction.

Times are stored as integer epoch milliseconds: bucketing is then exact integer arithmetic that SQLite and
PostgreSQL compute identically (the same events give the same timeline on both).

The schema is owned by Alembic (``storage/migrations``); :func:`create_schema` upgrades to head.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    String,
    Table,
    UniqueConstraint,
    create_engine,
    delete,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

from fervid.bus import redact_url
from fervid.contracts import EMOTIONS, EVENT_COLUMNS, EventColumn
from fervid.errors import ConfigError, ServiceUnavailable
from storage.write import insert_idempotent

__all__ = ["insert_idempotent"]  # the write path lives in storage/write.py; callers import it from here

log = logging.getLogger(__name__)


class Base(DeclarativeBase):
    pass


class FrameRow(Base):
    """An analysed frame, with or without faces: the denominator of "faces per frame" and proof of coverage."""

    __tablename__ = "frames"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    camera: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    ts_ms: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    faces: Mapped[int] = mapped_column(Integer)
    __table_args__ = (
        UniqueConstraint("camera", "seq", name="uq_frames_camera_seq"),
        Index("ix_frames_camera_ts", "camera", "ts_ms"),
    )


def _sql_type(column: EventColumn) -> TypeEngine[Any]:
    if column.type == "text":
        return String(column.length)
    numeric: dict[str, TypeEngine[Any]] = {"int": Integer(), "bigint": BigInteger(), "float8": Float()}
    return numeric[column.type]


# Built from the contract's definition of the event row (fervid.contracts.EVENT_COLUMNS), in its order.
events_table = Table(
    "events",
    Base.metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    *(Column(c.name, _sql_type(c), nullable=c.nullable) for c in EVENT_COLUMNS),
    UniqueConstraint("camera", "frame_seq", "face_index", name="uq_events_camera_seq_face"),
    Index("ix_events_camera_ts", "camera", "ts_ms"),
)


class EventRow(Base):
    """One face in one frame: its box, detector score, quality, 7 probabilities and labels, track, model and
    detector. Its columns are those of :data:`events_table` (``events_table.c.<name>`` is typed;
    ``EventRow.<name>`` works the same but type checkers cannot see it)."""

    __table__ = events_table


class CameraRow(Base):
    """A camera that produced at least one analysed frame."""

    __tablename__ = "cameras"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    first_seen_ms: Mapped[int] = mapped_column(BigInteger)
    last_seen_ms: Mapped[int] = mapped_column(BigInteger)


class TrackRow(Base):
    """Per-track summary: span, face count, running mean probabilities and the dominant (highest mean) emotion.

    Updated only from event rows that were actually inserted (``RETURNING`` of the idempotent insert), so a
    redelivered message changes nothing here either."""

    __tablename__ = "tracks"
    camera: Mapped[str] = mapped_column(String(64), primary_key=True)
    track_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    first_ts_ms: Mapped[int] = mapped_column(BigInteger)
    last_ts_ms: Mapped[int] = mapped_column(BigInteger)
    n_faces: Mapped[int] = mapped_column(Integer)
    dominant: Mapped[str] = mapped_column(String(16))
    mean_angry: Mapped[float] = mapped_column(Float)
    mean_disgust: Mapped[float] = mapped_column(Float)
    mean_fear: Mapped[float] = mapped_column(Float)
    mean_happy: Mapped[float] = mapped_column(Float)
    mean_sad: Mapped[float] = mapped_column(Float)
    mean_surprise: Mapped[float] = mapped_column(Float)
    mean_neutral: Mapped[float] = mapped_column(Float)
    __table_args__ = (Index("ix_tracks_camera_last", "camera", "last_ts_ms"),)


class MinuteRow(Base):
    """Per-minute rollup of events, maintained in the insert transaction: timelines with buckets that are whole
    minutes read this (1 440 rows a day) instead of every event row."""

    __tablename__ = "events_1m"
    camera: Mapped[str] = mapped_column(String(64), primary_key=True)
    minute_ms: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    faces: Mapped[int] = mapped_column(BigInteger)


_minutes = Base.metadata.tables["events_1m"]
for _e in EMOTIONS:
    _minutes.append_column(Column(f"n_{_e}", BigInteger, nullable=False))  # raw label counts
for _e in EMOTIONS:
    _minutes.append_column(Column(f"s_{_e}", BigInteger, nullable=False))  # smoothed (else raw) label counts
for _e in EMOTIONS:
    _minutes.append_column(Column(f"sum_{_e}", Float, nullable=False))  # probability sums


def make_engine(url: str) -> Engine:
    """An engine for `url`, checked with a connection so a typo or a dead server fails here in one line.

    ``postgresql://`` means psycopg 3 (the driver fervid ships), as ``postgresql+psycopg://``."""
    if not isinstance(url, str) or not (
        url.startswith("sqlite://") or url.startswith("postgresql://") or url.startswith("postgresql+psycopg://")
    ):
        raise ConfigError(
            f"unsupported database URL {redact_url(str(url))}: use sqlite:///path.db or postgresql+psycopg://user:pw@host/db"
        )
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if str(path) not in ("", ":memory:"):
            path.parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = create_engine(url, pool_pre_ping=True)
    except (ArgumentError, NoSuchModuleError, ImportError, ValueError) as exc:
        raise ConfigError(f"invalid database URL {redact_url(url)}: {exc}") from exc
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        raise ServiceUnavailable(
            f"cannot reach the database at {redact_url(url)}: {str(exc.orig).strip().splitlines()[0]}"
        ) from exc
    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL: readers (the API, `fervid timeline`) never block the writer, and vice versa.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def create_schema(engine: Engine) -> None:
    """Upgrade the database to the newest migration (creating it when empty)."""
    from storage.migrate import upgrade

    upgrade(engine)


def prune(engine: Engine, older_than_ms: int, now_ms: int | None = None) -> dict[str, int]:
    """Delete frames, events and tracks that ended before ``now - older_than_ms``; returns rows deleted per table."""
    import time

    cutoff = (int(time.time() * 1000) if now_ms is None else now_ms) - older_than_ms
    cutoff -= cutoff % 60_000  # whole minutes, so the per-minute rollup stays equal to the events it sums
    with engine.begin() as conn:
        out = {
            "events_1m": conn.execute(delete(MinuteRow).where(MinuteRow.minute_ms < cutoff)).rowcount,
            "events": conn.execute(delete(events_table).where(events_table.c.ts_ms < cutoff)).rowcount,
            "frames": conn.execute(delete(FrameRow).where(FrameRow.ts_ms < cutoff)).rowcount,
            "tracks": conn.execute(delete(TrackRow).where(TrackRow.last_ts_ms < cutoff)).rowcount,
        }
    return out
