"""The storage write path: a batch of EventsMsg → frames, events, cameras, tracks and the minute rollup, in one
transaction, exactly once (ON CONFLICT DO NOTHING on (camera, seq) and (camera, frame seq, face index)).

Python builds one flat tuple per frame and per face; the event tuple's columns are the contract's
(``fervid.contracts.EVENT_COLUMNS``), read with one ``attrgetter`` call per group of them. The summaries
(tracks, ``events_1m``) are folded in only from the event rows the batch actually inserted, so a redelivered
message changes no summary:

- PostgreSQL: one statement, one round trip. Data-modifying CTEs insert frames and events from ``unnest`` of one
  array per column, and the summaries aggregate the events insert's ``RETURNING``. Numeric columns are sent as
  binary arrays laid out by numpy: psycopg's list adapters format arrays element by element in Python, which
  was the slowest part of the old path.
- SQLite: ``executemany`` (the loop runs in C) for frames and events; the summaries are aggregated once per
  batch in Python. When the events insert reports fewer rows than it was given (a redelivery), the new rows are
  those above the rowid high-water mark read inside the same write transaction.
"""

from __future__ import annotations

import functools
import struct
from collections import Counter
from collections.abc import Callable, Sequence
from operator import attrgetter, itemgetter
from typing import Any

import numpy as np
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from fervid.contracts import EMOTIONS, EVENT_COLUMNS, EventColumn, EventsMsg

_FRAME_COLS = ("camera", "seq", "ts_ms", "width", "height", "faces")
_FRAME_PG_TYPES = ("text", "bigint", "bigint", "int", "int", "int")


def _group(column: EventColumn) -> str:
    return "probs" if column.source.startswith("emotion.probs[") else column.source.partition(".")[0]


def _getter(columns: Sequence[EventColumn]) -> Callable[[Any], tuple[Any, ...]]:
    """The values of `columns` from their object, as a tuple: one `operator.attrgetter` call (a C loop)."""
    paths = [c.source.partition(".")[2] for c in columns]
    if len(paths) == 1:  # attrgetter of one path returns the value itself, not a 1-tuple
        one = attrgetter(paths[0])
        return lambda obj: (one(obj),)
    return attrgetter(*paths)


# Event rows are built group by group: the frame's values (once per frame), each emotion's, its probabilities
# (the tuple as it is) and the message's (once per message); the column list follows the same order.
_GROUPS = {g: tuple(c for c in EVENT_COLUMNS if _group(c) == g) for g in ("frame", "emotion", "probs", "message")}
if sum(map(len, _GROUPS.values())) != len(EVENT_COLUMNS) or [c.source for c in _GROUPS["probs"]] != [
    f"emotion.probs[{i}]" for i in range(len(EMOTIONS))
]:
    raise ValueError(
        "every events column must read frame.<attr>, emotion.<attr> or message.<attr>, and the probabilities "
        f"emotion.probs[0..{len(EMOTIONS) - 1}] in order (fervid.contracts.EVENT_COLUMNS)"
    )
_frame_values, _emotion_values, _message_values = (_getter(_GROUPS[g]) for g in ("frame", "emotion", "message"))
_EVENT_LAYOUT = tuple(c for g in _GROUPS.values() for c in g)
_EVENT_COLS = tuple(c.name for c in _EVENT_LAYOUT)
_EVENT_PG_TYPES = tuple(c.type for c in _EVENT_LAYOUT)
_P_COLS = tuple(f"p_{e}" for e in EMOTIONS)
# Where the summaries and the redelivery filter find their values in an event tuple.
_CAMERA, _LABEL, _SMOOTHED, _TS, _TRACK, _P0 = map(
    _EVENT_COLS.index, ("camera", "label", "label_smoothed", "ts_ms", "track_id", _P_COLS[0])
)
_event_key = itemgetter(*map(_EVENT_COLS.index, ("camera", "frame_seq", "face_index")))  # the unique key
_MINUTE_COLS = ("camera", "minute_ms", "faces", *[f"{k}_{e}" for k in ("n", "s", "sum") for e in EMOTIONS])
_MEAN_COLS = tuple(f"mean_{e}" for e in EMOTIONS)
_TRACK_COLS = ("camera", "track_id", "first_ts_ms", "last_ts_ms", "n_faces", *_MEAN_COLS, "dominant")


def insert_idempotent(engine: Engine, messages: Sequence[EventsMsg]) -> int:
    """Write one batch in one transaction; redelivery never duplicates a row or changes a summary.

    Returns the number of event rows newly inserted."""
    if not messages:
        return 0
    frames, events, cameras = _rows(messages)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            return _pg_write(conn, frames, events, cameras)
        return _sqlite_write(conn, frames, events, cameras)


def _rows(
    messages: Sequence[EventsMsg],
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[str, int, int]]]:
    """Flat rows, the first delivery of each (camera, seq) only, and each camera's time span in the batch."""
    frames: list[tuple[Any, ...]] = []
    events: list[tuple[Any, ...]] = []
    spans: dict[str, tuple[int, int]] = {}
    seen: set[tuple[str, int]] = set()
    for m in messages:
        f = m.frame
        key = (f.camera, f.seq)
        if key in seen:
            continue
        seen.add(key)
        ts = f.ts_ms
        frames.append((f.camera, f.seq, ts, f.width, f.height, len(m.emotions)))
        lo_hi = spans.get(f.camera)
        if lo_hi is None or ts < lo_hi[0] or ts > lo_hi[1]:
            spans[f.camera] = (ts, ts) if lo_hi is None else (min(lo_hi[0], ts), max(lo_hi[1], ts))
        if m.emotions:
            head, tail = _frame_values(f), _message_values(m)
            events += [head + _emotion_values(e) + e.probs + tail for e in m.emotions]
    return frames, events, [(c, lo, hi) for c, (lo, hi) in sorted(spans.items())]  # sorted: lock order


# --- summaries: the same upserts on both dialects, fed by "the event rows this batch inserted" ------------------


def _dominant(means: dict[str, str]) -> str:
    """Highest mean wins; ties go to the first in EMOTIONS order (as Emotion.label does)."""
    whens = " ".join(
        f"WHEN {' AND '.join(f'{means[e]} >= {means[o]}' for o in EMOTIONS if o != e)} THEN '{e}'"
        for e in EMOTIONS[:-1]
    )
    return f"CASE {whens} ELSE '{EMOTIONS[-1]}' END"


def _conflict_clause(table: str, pg: bool) -> str:
    """Cameras widen their span; tracks fold in running means weighted by face counts; minutes add up. The row
    lock of ON CONFLICT DO UPDATE makes concurrent workers add up correctly."""
    least, greatest = ("least", "greatest") if pg else ("min", "max")
    if table == "cameras":
        return (
            "ON CONFLICT (name) DO UPDATE SET "
            f"first_seen_ms = {least}(cameras.first_seen_ms, excluded.first_seen_ms), "
            f"last_seen_ms = {greatest}(cameras.last_seen_ms, excluded.last_seen_ms)"
        )
    if table == "events_1m":
        return "ON CONFLICT (camera, minute_ms) DO UPDATE SET " + ", ".join(
            f"{c} = events_1m.{c} + excluded.{c}" for c in _MINUTE_COLS[2:]
        )
    n = "(tracks.n_faces + excluded.n_faces)"
    new = {e: f"((tracks.mean_{e} * tracks.n_faces + excluded.mean_{e} * excluded.n_faces) / {n})" for e in EMOTIONS}
    sets = [
        f"first_ts_ms = {least}(tracks.first_ts_ms, excluded.first_ts_ms)",
        f"last_ts_ms = {greatest}(tracks.last_ts_ms, excluded.last_ts_ms)",
        f"dominant = {_dominant(new)}",
        *[f"mean_{e} = {new[e]}" for e in EMOTIONS],
        f"n_faces = {n}",
    ]
    return "ON CONFLICT (camera, track_id) DO UPDATE SET " + ", ".join(sets)


def _pg_minutes_sql(source: str) -> str:
    """Fold the rows of `source` (the events insert's RETURNING) into the per-minute rollup."""
    minute = "ts_ms - ts_ms %% 60000"  # %% is % for psycopg
    select = [
        "camera",
        minute,
        "count(*)",
        *[f"count(*) FILTER (WHERE label = '{e}')" for e in EMOTIONS],
        *[f"count(*) FILTER (WHERE coalesce(label_smoothed, label) = '{e}')" for e in EMOTIONS],
        *[f"sum(p_{e})" for e in EMOTIONS],
    ]
    return (
        f"INSERT INTO events_1m ({', '.join(_MINUTE_COLS)}) SELECT {', '.join(select)} FROM {source} "
        f"GROUP BY camera, {minute} ORDER BY camera, {minute} {_conflict_clause('events_1m', True)}"
    )


def _pg_tracks_sql(source: str) -> str:
    """Fold the rows of `source` into the track summaries (GROUP BY first: ON CONFLICT DO UPDATE may touch a
    row only once per statement). Upserts lock rows in key order, so concurrent workers cannot deadlock."""
    means = ", ".join(f"avg(p_{e}) AS mean_{e}" for e in EMOTIONS)
    inner = (
        f"SELECT camera, track_id, min(ts_ms) AS lo, max(ts_ms) AS hi, count(*) AS n, {means} FROM {source} "
        "WHERE track_id IS NOT NULL GROUP BY camera, track_id"
    )
    dominant = _dominant({e: f"t.mean_{e}" for e in EMOTIONS})
    mean_cols = ", ".join(f"t.mean_{e}" for e in EMOTIONS)
    select = f"SELECT t.camera, t.track_id, t.lo, t.hi, t.n, {mean_cols}, {dominant} FROM ({inner}) AS t"
    return (
        f"INSERT INTO tracks ({', '.join(_TRACK_COLS)}) {select} "
        f"ORDER BY t.camera, t.track_id {_conflict_clause('tracks', True)}"
    )


# --- SQLite --------------------------------------------------------------------------------------------------


def _insert(table: str, cols: Sequence[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"


_SQLITE_FRAMES = f"{_insert('frames', _FRAME_COLS)} ON CONFLICT (camera, seq) DO NOTHING"
_SQLITE_EVENTS = f"{_insert('events', _EVENT_COLS)} ON CONFLICT (camera, frame_seq, face_index) DO NOTHING"
_SQLITE_CAMERAS = (
    f"{_insert('cameras', ('name', 'first_seen_ms', 'last_seen_ms'))} {_conflict_clause('cameras', False)}"
)
_SQLITE_MINUTES = f"{_insert('events_1m', _MINUTE_COLS)} {_conflict_clause('events_1m', False)}"
_SQLITE_TRACKS = f"{_insert('tracks', _TRACK_COLS)} {_conflict_clause('tracks', False)}"
# The events a batch inserted are those above the high-water mark (rowid range; NOT INDEXED, or the planner
# would walk a whole (camera, ...) index for its order).
_SQLITE_NEW_KEYS = "SELECT camera, frame_seq, face_index FROM events NOT INDEXED WHERE id > ?"


def _sqlite_write(
    conn: Connection, frames: list[tuple[Any, ...]], events: list[tuple[Any, ...]], cameras: list[tuple[str, int, int]]
) -> int:
    # The frames insert comes first: it takes SQLite's write lock (even when every row conflicts), so no other
    # writer can add events between reading the high-water mark and reading above it. A read before the first
    # write would instead risk SQLITE_BUSY_SNAPSHOT when the transaction upgrades to a writer.
    conn.exec_driver_sql(_SQLITE_FRAMES, frames)
    conn.exec_driver_sql(_SQLITE_CAMERAS, cameras)
    if not events:
        return 0
    mark = conn.exec_driver_sql("SELECT coalesce(max(id), 0) FROM events").scalar_one()
    inserted = conn.exec_driver_sql(_SQLITE_EVENTS, events).rowcount
    if inserted < len(events):  # a redelivery: fold in only the rows that are new
        new = {tuple(r) for r in conn.exec_driver_sql(_SQLITE_NEW_KEYS, (mark,))}
        events = [e for e in events if _event_key(e) in new]
    if events:
        minutes, tracks = _summaries(events)
        conn.exec_driver_sql(_SQLITE_MINUTES, minutes)
        if tracks:
            conn.exec_driver_sql(_SQLITE_TRACKS, tracks)
    return len(events)


def _summaries(events: list[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Minute rollup and track rows of `events`, computed once per batch: rows are grouped with one dict
    operation each, then every sum and count runs over whole columns (C loops), not per row and emotion."""
    by_minute: dict[tuple[str, int], list[tuple[Any, ...]]] = {}
    by_track: dict[tuple[str, int], list[tuple[Any, ...]]] = {}
    for e in events:
        by_minute.setdefault((e[_CAMERA], e[_TS] - e[_TS] % 60_000), []).append(e)
        if e[_TRACK] is not None:
            by_track.setdefault((e[_CAMERA], e[_TRACK]), []).append(e)
    minutes = []
    for (camera, minute), rows in by_minute.items():
        cols = list(zip(*rows, strict=True))
        raw = Counter(cols[_LABEL])
        smoothed = Counter(s or r for s, r in zip(cols[_SMOOTHED], cols[_LABEL], strict=True))
        sums = [sum(cols[_P0 + i]) for i in range(len(EMOTIONS))]
        minutes.append(
            (camera, minute, len(rows), *[raw[e] for e in EMOTIONS], *[smoothed[e] for e in EMOTIONS], *sums)
        )
    tracks = []
    for (camera, track), rows in by_track.items():
        cols = list(zip(*rows, strict=True))
        n = len(rows)
        means = [sum(cols[_P0 + i]) / n for i in range(len(EMOTIONS))]
        tracks.append((camera, track, min(cols[_TS]), max(cols[_TS]), n, *means, EMOTIONS[means.index(max(means))]))
    return minutes, tracks


# --- PostgreSQL ----------------------------------------------------------------------------------------------


def _unnest(cols: Sequence[str], types: Sequence[str], first: int) -> str:
    """``unnest`` of one array parameter per column; text columns travel as int indexes into ``k.d``."""
    casts = ", ".join(f"%s::{'int' if t == 'text' else t}[]" for t in types)
    aliases = ", ".join(f"c{first + i}" for i in range(len(cols)))
    select = ", ".join(f"k.d[u.c{first + i}]" if t == "text" else f"u.c{first + i}" for i, t in enumerate(types))
    return f"SELECT {select} FROM k, unnest({casts}) AS u({aliases})"


_PG_RETURNED = ", ".join(("camera", "ts_ms", "track_id", "label", "label_smoothed", *_P_COLS))
# One statement, one round trip. Every sub-statement runs exactly once, whether or not the final SELECT reads it.
_PG_WRITE = (
    "WITH k AS (SELECT %s::text[] AS d), "
    f"fr AS (INSERT INTO frames ({', '.join(_FRAME_COLS)}) {_unnest(_FRAME_COLS, _FRAME_PG_TYPES, 0)} "
    "ON CONFLICT (camera, seq) DO NOTHING), "
    f"ev AS (INSERT INTO events ({', '.join(_EVENT_COLS)}) {_unnest(_EVENT_COLS, _EVENT_PG_TYPES, 100)} "
    f"ON CONFLICT (camera, frame_seq, face_index) DO NOTHING RETURNING {_PG_RETURNED}), "
    "cam AS (INSERT INTO cameras (name, first_seen_ms, last_seen_ms) "
    "SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) "
    f"{_conflict_clause('cameras', True)}), "
    f"trk AS ({_pg_tracks_sql('ev')}), "
    f"mn AS ({_pg_minutes_sql('ev')}) "
    "SELECT count(*) FROM ev"
)


# Binary wire format of a 1-D array without NULLs: a header, then (length, value) per element. numpy lays the
# elements out in one C loop; psycopg would otherwise format every element in Python.
_BIN = {"float8": (701, ">f8"), "bigint": (20, ">i8"), "int": (23, ">i4")}


class _BinaryArray(bytes):
    """An array parameter already in PostgreSQL's binary format (sent as is by :class:`_BinaryArrayDumper`)."""


def _binary_array(values: Sequence[Any], pg_type: str) -> _BinaryArray:
    oid, dtype = _BIN[pg_type]
    if not values:
        return _BinaryArray(struct.pack(">3i", 0, 0, oid))
    cells = np.empty(len(values), dtype=[("len", ">i4"), ("v", dtype)])
    cells["len"] = cells.dtype["v"].itemsize
    cells["v"] = values
    return _BinaryArray(struct.pack(">5i", 1, 0, oid, len(values), 1) + cells.tobytes())


def _literal(values: Sequence[Any]) -> str:
    """A text array literal of numbers and NULLs; ``str`` of a number is exact (a float's shortest repr)."""
    return "{" + ",".join(map(str, values)).replace("None", "NULL") + "}"


def _pg_columns(rows: list[tuple[Any, ...]], types: Sequence[str], words: dict[str | None, int]) -> list[Any]:
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in types]
    out: list[Any] = []
    for col, t in zip(columns, types, strict=True):
        if t == "text":
            for v in dict.fromkeys(col):  # the few distinct cameras, labels, models
                words.setdefault(v, len(words))
            out.append(_binary_array(tuple(map(words.__getitem__, col)), "int"))
        elif None in col:  # track_id: NULLs make elements of two sizes, so it goes as text
            out.append(_literal(col))
        else:
            out.append(_binary_array(col, t))
    return out


def _pg_write(
    conn: Connection, frames: list[tuple[Any, ...]], events: list[tuple[Any, ...]], cameras: list[tuple[str, int, int]]
) -> int:
    # Index 0 is NULL (k.d[0] is NULL in PostgreSQL, whose arrays start at 1).
    words: dict[str | None, int] = {None: 0}
    frame_cols = _pg_columns(frames, _FRAME_PG_TYPES, words)
    event_cols = _pg_columns(events, _EVENT_PG_TYPES, words)
    cams = [list(c) for c in zip(*cameras, strict=True)]
    params = [[w for w in words if w is not None], *frame_cols, *event_cols, *cams]
    return int(_pg_execute(conn, _PG_WRITE, params)[0][0])


@functools.cache
def _dumper() -> type:
    from psycopg.adapt import Dumper
    from psycopg.pq import Format

    class _BinaryArrayDumper(Dumper):
        # oid 0 (unknown): the parameter takes the type of its cast in the SQL (``%s::float8[]``).
        format = Format.BINARY

        def dump(self, obj: Any) -> bytes:
            return obj

    return _BinaryArrayDumper


def _pg_execute(conn: Connection, sql: str, params: list[Any]) -> list[Any]:
    """Run on the psycopg cursor (%s placeholders, no SQLAlchemy parameter processing)."""
    dbapi = conn.dialect.loaded_dbapi
    driver = conn.connection.driver_connection
    if driver is None:  # invalidated: an outage, which the worker rides out on a new connection
        raise DBAPIError.instance(sql, None, dbapi.OperationalError("the connection is closed"), dbapi.Error)
    driver.adapters.register_dumper(_BinaryArray, _dumper())  # this connection only
    cur = driver.cursor()
    try:
        cur.execute(sql, params)
        return cur.fetchall()
    except dbapi.Error as exc:
        # Wrap like SQLAlchemy does (psycopg.OperationalError → sqlalchemy OperationalError), so the worker's
        # outage handling sees the same exceptions on this path as on every other.
        if isinstance(exc, dbapi.OperationalError):
            conn.invalidate()
        raise DBAPIError.instance(sql, None, exc, dbapi.Error) from exc
    finally:
        if not cur.closed:
            cur.close()
