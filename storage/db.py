"""Schema and writes: one row per analysed frame, one row per face per frame, both idempotent; plus a row per
camera (first/last seen) and per track (summary), updated in the same transaction.

Times are stored as integer epoch milliseconds: bucketing is then exact integer arithmetic that SQLite and
PostgreSQL compute identically (the same events give the same timeline on both).

The schema is owned by Alembic (``storage/migrations``); :func:`create_schema` upgrades to head.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from sqlalchemy import (
    BigInteger,
    bindparam,
    select,
    tuple_,
    Float,
    Index,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    func,
    event,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
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


assert [c for c in EventRow.__table__.columns.keys() if c.startswith("p_")] == [f"p_{e}" for e in EMOTIONS]


def make_engine(url: str) -> Engine:
    """An engine for `url`, checked with a connection so a typo or a dead server fails here in one line.

    ``postgresql://`` means psycopg 3 (the driver fervid ships), as ``postgresql+psycopg://``."""
    if not isinstance(url, str) or not (url.startswith("sqlite://") or url.startswith("postgresql://") or url.startswith("postgresql+psycopg://")):
        raise ConfigError(f"unsupported database URL {redact_url(str(url))}: use sqlite:///path.db or postgresql+psycopg://user:pw@host/db")
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
    """Upgrade the database to the newest migration (creating it when empty)."""
    from storage.migrate import upgrade

    upgrade(engine)


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


def _insert(engine: Engine) -> Any:
    return postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert


_P_COLS = [f"p_{e}" for e in EMOTIONS]


def insert_idempotent(engine: Engine, messages: Sequence[EventsMsg]) -> int:
    """Write frames, events, cameras and track summaries in one transaction; rows already present are skipped,
    so redelivery of a message never duplicates. Returns the number of event rows newly inserted."""
    frames, events = rows_for(messages)
    insert = _insert(engine)
    inserted = 0
    with engine.begin() as conn:
        if frames:
            conn.execute(insert(FrameRow).on_conflict_do_nothing(index_elements=["camera", "seq"]), frames)
            _upsert_cameras(conn, insert, frames, engine.dialect.name)
        if events:
            stmt = insert(EventRow).on_conflict_do_nothing(index_elements=["camera", "frame_seq", "face_index"])
            if any(e["track_id"] is not None for e in events):
                new = conn.execute(
                    stmt.returning(EventRow.camera, EventRow.track_id, EventRow.ts_ms, *[getattr(EventRow, c) for c in _P_COLS]),
                    events,
                ).all()
                inserted = len(new)
                _update_tracks(conn, insert, [r for r in new if r.track_id is not None])
            else:
                inserted = conn.execute(stmt, events).rowcount
                inserted = len(events) if inserted is None or inserted < 0 else inserted
    return inserted


def _upsert_cameras(conn: Any, insert: Any, frames: list[dict[str, Any]], dialect: str) -> None:
    span: dict[str, list[int]] = {}
    for f in frames:
        lo_hi = span.setdefault(f["camera"], [f["ts_ms"], f["ts_ms"]])
        lo_hi[0], lo_hi[1] = min(lo_hi[0], f["ts_ms"]), max(lo_hi[1], f["ts_ms"])
    rows = [dict(name=c, first_seen_ms=lo, last_seen_ms=hi) for c, (lo, hi) in sorted(span.items())]
    stmt = insert(CameraRow)
    least, greatest = (func.least, func.greatest) if dialect == "postgresql" else (func.min, func.max)
    stmt = stmt.on_conflict_do_update(
        index_elements=["name"],
        set_=dict(
            first_seen_ms=least(CameraRow.first_seen_ms, stmt.excluded.first_seen_ms),
            last_seen_ms=greatest(CameraRow.last_seen_ms, stmt.excluded.last_seen_ms),
        ),
    )
    conn.execute(stmt, rows)


def _update_tracks(conn: Any, insert: Any, new: Sequence[Any]) -> None:
    """Fold newly inserted event rows into their tracks' summaries (read-modify-write under a row lock)."""
    if not new:
        return
    agg: dict[tuple[str, int], dict[str, Any]] = {}
    for r in new:
        a = agg.setdefault((r.camera, r.track_id), {"n": 0, "lo": r.ts_ms, "hi": r.ts_ms, "sum": [0.0] * len(EMOTIONS)})
        a["n"] += 1
        a["lo"], a["hi"] = min(a["lo"], r.ts_ms), max(a["hi"], r.ts_ms)
        for i, c in enumerate(_P_COLS):
            a["sum"][i] += getattr(r, c)
    keys = sorted(agg)
    blank = {f"mean_{e}": 0.0 for e in EMOTIONS}
    conn.execute(
        insert(TrackRow).on_conflict_do_nothing(index_elements=["camera", "track_id"]),
        [dict(camera=c, track_id=t, first_ts_ms=agg[c, t]["lo"], last_ts_ms=agg[c, t]["hi"], n_faces=0, dominant=EMOTIONS[-1], **blank) for c, t in keys],
    )
    table = TrackRow.__table__
    query = select(table).where(tuple_(table.c.camera, table.c.track_id).in_(keys))
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    updates = []
    for t in conn.execute(query):
        a = agg[t.camera, t.track_id]
        n = t.n_faces + a["n"]
        means = [(getattr(t, f"mean_{e}") * t.n_faces + a["sum"][i]) / n for i, e in enumerate(EMOTIONS)]
        updates.append(
            dict(
                k_camera=t.camera, k_track=t.track_id, first_ts_ms=min(t.first_ts_ms, a["lo"]), last_ts_ms=max(t.last_ts_ms, a["hi"]),
                n_faces=n, dominant=EMOTIONS[max(range(len(EMOTIONS)), key=means.__getitem__)],
                **{f"mean_{e}": m for e, m in zip(EMOTIONS, means)},
            )
        )  # fmt: skip
    conn.execute(
        table.update()
        .where(table.c.camera == bindparam("k_camera"), table.c.track_id == bindparam("k_track"))
        .values({c: bindparam(c) for c in ["first_ts_ms", "last_ts_ms", "n_faces", "dominant", *[f"mean_{e}" for e in EMOTIONS]]}),
        updates,
    )


def prune(engine: Engine, older_than_ms: int, now_ms: int | None = None) -> dict[str, int]:
    """Delete frames, events and tracks that ended before ``now - older_than_ms``; returns rows deleted per table."""
    import time

    cutoff = (int(time.time() * 1000) if now_ms is None else now_ms) - older_than_ms
    with engine.begin() as conn:
        out = {
            "events": conn.execute(EventRow.__table__.delete().where(EventRow.ts_ms < cutoff)).rowcount,
            "frames": conn.execute(FrameRow.__table__.delete().where(FrameRow.ts_ms < cutoff)).rowcount,
            "tracks": conn.execute(TrackRow.__table__.delete().where(TrackRow.last_ts_ms < cutoff)).rowcount,
        }
    return out
