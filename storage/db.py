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
    Column,
    BigInteger,
    Float,
    Index,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError
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


class MinuteRow(Base):
    """Per-minute rollup of events, maintained in the insert transaction: timelines with buckets that are whole
    minutes read this (1 440 rows a day) instead of every event row."""

    __tablename__ = "events_1m"
    camera: Mapped[str] = mapped_column(String(64), primary_key=True)
    minute_ms: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    faces: Mapped[int] = mapped_column(BigInteger)


for _e in EMOTIONS:
    MinuteRow.__table__.append_column(Column(f"n_{_e}", BigInteger, nullable=False))  # raw label counts
for _e in EMOTIONS:
    MinuteRow.__table__.append_column(Column(f"s_{_e}", BigInteger, nullable=False))  # smoothed (else raw) label counts
for _e in EMOTIONS:
    MinuteRow.__table__.append_column(Column(f"sum_{_e}", Float, nullable=False))  # probability sums


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


_P_COLS = [f"p_{e}" for e in EMOTIONS]


_EVENT_COLS = (
    "camera", "frame_seq", "face_index", "ts_ms", "x", "y", "w", "h", "det_score", "track_id",
    *_P_COLS, "label", "label_smoothed", "model", "detector",
)  # fmt: skip
_EVENT_PG_TYPES = ("text", "bigint", "int", "bigint", *["float8"] * 5, "bigint", *["float8"] * 7, "text", "text", "text", "text")
_EVENT_TEXT = frozenset(i for i, t in enumerate(_EVENT_PG_TYPES) if t == "text")
_MAX_PARAMS = 30_000  # under SQLite's 32766 and PostgreSQL's 65535 bind parameters per statement


def _chunks(items: list[Any], width: int) -> Any:
    step = max(1, _MAX_PARAMS // width)
    for i in range(0, len(items), step):
        yield items[i : i + step]


def _values(ph: str, width: int, n: int) -> str:
    row = "(" + ", ".join([ph] * width) + ")"
    return ", ".join([row] * n)


def _pg_execute(conn: Any, sql: str, params: list[Any], fetch: bool = False) -> list[Any]:
    """Run on the psycopg cursor with binary parameters: arrays of numbers are packed, not formatted as text."""
    dbapi = conn.dialect.loaded_dbapi
    cur = conn.connection.driver_connection.cursor()
    try:
        cur.execute(sql, params, binary=True)
        return cur.fetchall() if fetch else []
    except dbapi.Error as exc:
        # Wrap like SQLAlchemy does (psycopg.OperationalError → sqlalchemy OperationalError), so the worker's
        # outage handling sees the same exceptions on this path as on every other.
        if isinstance(exc, dbapi.OperationalError):
            conn.invalidate()
        raise DBAPIError.instance(sql, None, exc, dbapi.Error) from exc
    finally:
        if not cur.closed:
            cur.close()


def insert_idempotent(engine: Engine, messages: Sequence[EventsMsg]) -> int:
    """Write frames, events, cameras and track summaries in one transaction; redelivery never duplicates.

    A message's frame row and its event rows are always committed together, so the frames that the
    ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` reports as new are exactly the messages whose events are new:
    only those are written and folded into cameras and tracks (the events insert keeps its own ON CONFLICT
    guard as well). Multi-row VALUES statements through the DB-API keep this close to a bare insert's speed.
    Returns the number of event rows newly inserted."""
    if not messages:
        return 0
    pg = engine.dialect.name == "postgresql"
    by_key: dict[tuple[str, int], EventsMsg] = {}
    for m in messages:
        by_key.setdefault((m.frame.camera, m.frame.seq), m)
    unique = list(by_key.values())
    with engine.begin() as conn:
        new: set[tuple[str, int]] = set()
        frame_rows = [(m.frame.camera, m.frame.seq, int(round(m.frame.capture_ts * 1000)), m.frame.width, m.frame.height, len(m.emotions)) for m in unique]
        if pg:
            # unnest of one array per column: 6 bind parameters whatever the batch size (psycopg parses fast).
            sql = (
                "INSERT INTO frames (camera, seq, ts_ms, width, height, faces) "
                "SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::int[], %s::int[], %s::int[]) "
                "ON CONFLICT (camera, seq) DO NOTHING RETURNING camera, seq"
            )
            new.update((r[0], r[1]) for r in _pg_execute(conn, sql, [list(c) for c in zip(*frame_rows)], fetch=True))
        else:
            for chunk in _chunks(frame_rows, 6):
                sql = (
                    f"INSERT INTO frames (camera, seq, ts_ms, width, height, faces) VALUES {_values('?', 6, len(chunk))} "
                    "ON CONFLICT (camera, seq) DO NOTHING RETURNING camera, seq"
                )
                new.update((r[0], r[1]) for r in conn.exec_driver_sql(sql, tuple(v for row in chunk for v in row)))
        fresh = [m for key, m in by_key.items() if key in new]
        if not fresh:
            return 0
        events: list[tuple[Any, ...]] = []
        tracks: dict[tuple[str, int], dict[str, Any]] = {}
        for m in fresh:
            f = m.frame
            ts_ms = int(round(f.capture_ts * 1000))
            for e in m.emotions:
                b = e.box
                events.append((f.camera, f.seq, e.index, ts_ms, b.x, b.y, b.w, b.h, e.score, e.track_id, *e.probs, e.label, e.smoothed_label, m.model, m.detector))
                if e.track_id is not None:
                    a = tracks.get((f.camera, e.track_id))
                    if a is None:
                        a = tracks[f.camera, e.track_id] = {"n": 0, "lo": ts_ms, "hi": ts_ms, "sum": [0.0] * len(EMOTIONS)}
                    a["n"] += 1
                    a["lo"], a["hi"] = min(a["lo"], ts_ms), max(a["hi"], ts_ms)
                    sums = a["sum"]
                    for i, p in enumerate(e.probs):
                        sums[i] += p
        cameras, track_rows, minutes = _camera_rows(fresh), _track_rows(tracks), _minute_rows(fresh)
        if pg:
            _pg_write_all(conn, events, cameras, track_rows, minutes)
        else:
            cols = ", ".join(_EVENT_COLS)
            if events:
                sql = f"INSERT INTO events ({cols}) VALUES ({', '.join('?' * len(_EVENT_COLS))}) ON CONFLICT (camera, frame_seq, face_index) DO NOTHING"
                conn.exec_driver_sql(sql, events)  # sqlite3 executemany: the loop runs in C
            conn.exec_driver_sql(_upsert_sql("cameras", False), cameras)
            if track_rows:
                conn.exec_driver_sql(_upsert_sql("tracks", False), track_rows)
            if minutes:
                conn.exec_driver_sql(_upsert_sql("events_1m", False), minutes)
    return len(events)


def _camera_rows(messages: Sequence[EventsMsg]) -> list[tuple[str, int, int]]:
    span: dict[str, list[int]] = {}
    for m in messages:
        ts = int(round(m.frame.capture_ts * 1000))
        lo_hi = span.setdefault(m.frame.camera, [ts, ts])
        lo_hi[0], lo_hi[1] = min(lo_hi[0], ts), max(lo_hi[1], ts)
    return [(c, lo, hi) for c, (lo, hi) in sorted(span.items())]


def _track_rows(agg: dict[tuple[str, int], dict[str, Any]]) -> list[tuple[Any, ...]]:
    rows = []
    for (camera, track), a in sorted(agg.items()):
        means = [x / a["n"] for x in a["sum"]]
        dominant = EMOTIONS[max(range(len(EMOTIONS)), key=means.__getitem__)]
        rows.append((camera, track, a["lo"], a["hi"], a["n"], dominant, *means))
    return rows


_MINUTE_COLS = ["camera", "minute_ms", "faces", *[f"{k}_{e}" for k in ("n", "s", "sum") for e in EMOTIONS]]
_TRACK_COLS = ["camera", "track_id", "first_ts_ms", "last_ts_ms", "n_faces", "dominant", *[f"mean_{e}" for e in EMOTIONS]]
_CAMERA_COLS = ["name", "first_seen_ms", "last_seen_ms"]
_EMOTION_INDEX = {e: i for i, e in enumerate(EMOTIONS)}
_PG_TYPES = {
    "cameras": ["text", "bigint", "bigint"],
    "tracks": ["text", "bigint", "bigint", "bigint", "int", "text", *["float8"] * len(EMOTIONS)],
    "events_1m": ["text", "bigint", "bigint", *["bigint"] * (2 * len(EMOTIONS)), *["float8"] * len(EMOTIONS)],
}


def _minute_rows(messages: Sequence[EventsMsg]) -> list[tuple[Any, ...]]:
    acc: dict[tuple[str, int], list[Any]] = {}
    k = len(EMOTIONS)
    for m in messages:
        if not m.emotions:
            continue
        ts = int(round(m.frame.capture_ts * 1000))
        key = (m.frame.camera, ts - ts % 60_000)
        a = acc.get(key)
        if a is None:
            a = acc[key] = [0] * (1 + 2 * k) + [0.0] * k
        for e in m.emotions:
            a[0] += 1
            raw = _EMOTION_INDEX[e.label]
            a[1 + raw] += 1
            a[1 + k + (_EMOTION_INDEX[e.smoothed_label] if e.smoothed_label is not None else raw)] += 1
            for i, p in enumerate(e.probs):
                a[1 + 2 * k + i] += p
    return [(c, minute, *a) for (c, minute), a in sorted(acc.items())]


def _conflict_clause(table: str, pg: bool) -> str:
    """The ON CONFLICT part of each summary upsert: cameras widen their span; tracks fold in running means (weighted
    by face counts; dominant = highest mean, ties in EMOTIONS order); minutes add up. The row lock of
    ON CONFLICT DO UPDATE makes concurrent workers add up correctly."""
    least, greatest = ("least", "greatest") if pg else ("min", "max")
    if table == "cameras":
        return (
            "ON CONFLICT (name) DO UPDATE SET "
            f"first_seen_ms = {least}(cameras.first_seen_ms, excluded.first_seen_ms), "
            f"last_seen_ms = {greatest}(cameras.last_seen_ms, excluded.last_seen_ms)"
        )
    if table == "events_1m":
        return "ON CONFLICT (camera, minute_ms) DO UPDATE SET " + ", ".join(f"{c} = events_1m.{c} + excluded.{c}" for c in _MINUTE_COLS[2:])
    n = "(tracks.n_faces + excluded.n_faces)"
    new = {e: f"((tracks.mean_{e} * tracks.n_faces + excluded.mean_{e} * excluded.n_faces) / {n})" for e in EMOTIONS}
    whens = " ".join(f"WHEN {' AND '.join(f'{new[e]} >= {new[o]}' for o in EMOTIONS if o != e)} THEN '{e}'" for e in EMOTIONS[:-1])
    sets = [
        f"first_ts_ms = {least}(tracks.first_ts_ms, excluded.first_ts_ms)",
        f"last_ts_ms = {greatest}(tracks.last_ts_ms, excluded.last_ts_ms)",
        f"dominant = CASE {whens} ELSE '{EMOTIONS[-1]}' END",
        *[f"mean_{e} = {new[e]}" for e in EMOTIONS],
        f"n_faces = {n}",
    ]
    return "ON CONFLICT (camera, track_id) DO UPDATE SET " + ", ".join(sets)


_COLS = {"cameras": _CAMERA_COLS, "tracks": _TRACK_COLS, "events_1m": _MINUTE_COLS}


def _upsert_sql(table: str, pg: bool) -> str:
    cols = _COLS[table]
    if pg:
        source = "SELECT * FROM unnest(" + ", ".join(f"%s::{t}[]" for t in _PG_TYPES[table]) + ")"
    else:
        source = "VALUES (" + ", ".join("?" * len(cols)) + ")"
    return f"INSERT INTO {table} ({', '.join(cols)}) {source} {_conflict_clause(table, pg)}"


def _pg_events_sql() -> str:
    # Strings go as indexes into one small dictionary array: per-element text formatting is the slow part of
    # sending arrays, and a batch has only a handful of distinct cameras, labels, models and detectors.
    select_list = ", ".join(f"d[u.c{i}]" if i in _EVENT_TEXT else f"u.c{i}" for i in range(len(_EVENT_COLS)))
    casts = ", ".join(f"%s::{'int' if i in _EVENT_TEXT else t}[]" for i, t in enumerate(_EVENT_PG_TYPES))
    aliases = ", ".join(f"c{i}" for i in range(len(_EVENT_COLS)))
    return (
        f"INSERT INTO events ({', '.join(_EVENT_COLS)}) SELECT {select_list} FROM unnest({casts}) AS u({aliases}), "
        "(SELECT %s::text[] AS d) k ON CONFLICT (camera, frame_seq, face_index) DO NOTHING"
    )


# One statement, one round trip: data-modifying CTEs write events, cameras, tracks and the minute rollup.
_PG_WRITE_ALL = (
    f"WITH ev AS ({_pg_events_sql()}), cam AS ({_upsert_sql('cameras', True)}), trk AS ({_upsert_sql('tracks', True)}) "
    f"{_upsert_sql('events_1m', True)}"
)


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [list(c) for c in zip(*rows)] if rows else [[] for _ in range(width)]


def _pg_write_all(conn: Any, events: list[tuple[Any, ...]], cameras: list[Any], tracks: list[Any], minutes: list[Any]) -> None:
    words: dict[str, int] = {}
    ev = _columns(events, len(_EVENT_COLS))
    for i in _EVENT_TEXT:
        ev[i] = [None if v is None else words.setdefault(v, len(words) + 1) for v in ev[i]]
    params = [*ev, list(words), *_columns(cameras, 3), *_columns(tracks, len(_TRACK_COLS)), *_columns(minutes, len(_MINUTE_COLS))]
    _pg_execute(conn, _PG_WRITE_ALL, params)


def prune(engine: Engine, older_than_ms: int, now_ms: int | None = None) -> dict[str, int]:
    """Delete frames, events and tracks that ended before ``now - older_than_ms``; returns rows deleted per table."""
    import time

    cutoff = (int(time.time() * 1000) if now_ms is None else now_ms) - older_than_ms
    cutoff -= cutoff % 60_000  # whole minutes, so the per-minute rollup stays equal to the events it sums
    with engine.begin() as conn:
        out = {
            "events_1m": conn.execute(MinuteRow.__table__.delete().where(MinuteRow.minute_ms < cutoff)).rowcount,
            "events": conn.execute(EventRow.__table__.delete().where(EventRow.ts_ms < cutoff)).rowcount,
            "frames": conn.execute(FrameRow.__table__.delete().where(FrameRow.ts_ms < cutoff)).rowcount,
            "tracks": conn.execute(TrackRow.__table__.delete().where(TrackRow.last_ts_ms < cutoff)).rowcount,
        }
    return out
