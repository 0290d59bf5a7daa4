"""Schema and writes: one row per analysed frame, one row per face per frame, both idempotent.

Times are stored as integer epoch milliseconds: bucketing is then exact integer arithmetic that SQLite and
PostgreSQL compute identically (the same events give the same timeline on both).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from sqlalchemy import (
    BigInteger,
    Float,
    Index,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fervid.bus import redact_url
from fervid.contracts import EMOTIONS, EventsMsg
from fervid.errors import ConfigError, ServiceUnavailable

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


class EventRow(Base):
    """One face in one frame: its box, detector score, 7 probabilities and label."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    camera: Mapped[str] = mapped_column(String(64))
    frame_seq: Mapped[int] = mapped_column(BigInteger)
    face_index: Mapped[int] = mapped_column(Integer)
    ts_ms: Mapped[int] = mapped_column(BigInteger)
    x: Mapped[float] = mapped_column(Float)
    y: Mapped[float] = mapped_column(Float)
    w: Mapped[float] = mapped_column(Float)
    h: Mapped[float] = mapped_column(Float)
    det_score: Mapped[float] = mapped_column(Float)
    track_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    p_angry: Mapped[float] = mapped_column(Float)
    p_disgust: Mapped[float] = mapped_column(Float)
    p_fear: Mapped[float] = mapped_column(Float)
    p_happy: Mapped[float] = mapped_column(Float)
    p_sad: Mapped[float] = mapped_column(Float)
    p_surprise: Mapped[float] = mapped_column(Float)
    p_neutral: Mapped[float] = mapped_column(Float)
    label: Mapped[str] = mapped_column(String(16))
    label_smoothed: Mapped[str | None] = mapped_column(String(16), nullable=True)
    model: Mapped[str] = mapped_column(String(128))
    detector: Mapped[str] = mapped_column(String(64))
    __table_args__ = (
        UniqueConstraint("camera", "frame_seq", "face_index", name="uq_events_camera_seq_face"),
        Index("ix_events_camera_ts", "camera", "ts_ms"),
    )


assert [c for c in EventRow.__table__.columns.keys() if c.startswith("p_")] == [f"p_{e}" for e in EMOTIONS]


def make_engine(url: str) -> Engine:
    """An engine for `url`, checked with a connection so a typo or a dead server fails here in one line."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if str(path) not in ("", ":memory:"):
            path.parent.mkdir(parents=True, exist_ok=True)
    try:
        backend = make_url(url).get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise ConfigError(f"unsupported database {backend!r} in {redact_url(url)}: use sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST/DB")
        engine = create_engine(url, pool_pre_ping=True)
    except (ArgumentError, NoSuchModuleError, ImportError, ValueError) as exc:
        raise ConfigError(f"invalid database URL {redact_url(url)}: {exc}") from exc
    if backend == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        raise ServiceUnavailable(f"cannot reach the database at {redact_url(url)}: {str(exc.orig).strip().splitlines()[0]}") from exc
    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL: readers (the API, `fervid timeline`) never block the writer, and vice versa.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def create_schema(engine: Engine) -> None:
    Base.metadata.create_all(engine)


def rows_for(messages: Sequence[EventsMsg]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    frames, events = [], []
    for msg in messages:
        f = msg.frame
        ts_ms = int(round(f.capture_ts * 1000))
        frames.append(dict(camera=f.camera, seq=f.seq, ts_ms=ts_ms, width=f.width, height=f.height, faces=len(msg.emotions)))
        for e in msg.emotions:
            row = dict(
                camera=f.camera, frame_seq=f.seq, face_index=e.index, ts_ms=ts_ms,
                x=e.box.x, y=e.box.y, w=e.box.w, h=e.box.h, det_score=e.score, track_id=e.track_id,
                label=e.label, label_smoothed=e.smoothed_label, model=msg.model, detector=msg.detector,
            )  # fmt: skip
            row.update({f"p_{name}": p for name, p in zip(EMOTIONS, e.probs)})
            events.append(row)
    return frames, events


def insert_idempotent(engine: Engine, messages: Sequence[EventsMsg]) -> int:
    """Write frames and events in one transaction; rows already present are skipped, so redelivery of a
    message never duplicates. Returns the number of event rows in `messages`."""
    frames, events = rows_for(messages)
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    with engine.begin() as conn:
        if frames:
            conn.execute(insert(FrameRow).on_conflict_do_nothing(index_elements=["camera", "seq"]), frames)
        if events:
            conn.execute(insert(EventRow).on_conflict_do_nothing(index_elements=["camera", "frame_seq", "face_index"]), events)
    return len(events)
