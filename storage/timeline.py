"""Per-camera emotion timelines, aggregated by the database: bucketed face counts, per-emotion label counts,
mean probabilities and the dominant emotion, all in one SQL query (no Python loop over events).

Buckets are ``ts_ms - ts_ms % bucket_ms`` on integer epoch milliseconds, which SQLite and PostgreSQL compute
identically, so the same events give the same JSON on both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import and_, case, func, literal, literal_column, select, union_all
from sqlalchemy.engine import Engine

from fervid.choices import TimelineLabels
from fervid.contracts import EMOTIONS, parse_utc
from fervid.errors import ConfigError, NotFound
from storage.db import CameraRow, MinuteRow, events_table

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"^(\d{1,12})(ms|s|m|h|d)$")
MAX_BUCKETS = 10_000  # a bigger answer is a mistake (1 s buckets over a week), not a query to run
MIN_BUCKET_MS = 1_000
MAX_BUCKET_MS = 86_400_000
# Anything outside this is a typo (year 20260) or a unit mix-up, not a time a camera recorded.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
# Without a bucket size, the finest of these that gives at most AUTO_BUCKETS buckets (as Grafana picks its
# interval): 1s buckets for a clip, 5m for a day, 1d for a year.
AUTO_BUCKETS = 500
NICE_BUCKETS_MS = (
    *(n * 1000 for n in (1, 2, 5, 10, 15, 30)),
    *(n * 60_000 for n in (1, 2, 5, 10, 15, 30)),
    *(n * 3_600_000 for n in (1, 2, 3, 6, 12)),
    86_400_000,
)
# Without --since: this much before the end (the camera's newest row, not now: a recorded file lives in the past).
DEFAULT_SPAN = timedelta(hours=24)

Labels = TimelineLabels
_ev = events_table.c


def parse_duration_ms(text: str) -> int:
    """'10s', '1m', '1h', '1d' → milliseconds."""
    m = _DURATION.match(text.strip()) if isinstance(text, str) else None
    if not m or int(m.group(1)) == 0:
        raise ConfigError(f"invalid duration {text!r}: use a positive number and a unit, e.g. 1s, 10s, 1m, 1h, 1d")
    return int(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_bucket_ms(text: str) -> int:
    ms = parse_duration_ms(text)
    if not MIN_BUCKET_MS <= ms <= MAX_BUCKET_MS:
        raise ConfigError(f"bucket {text!r} is out of range: use 1s to 1d")
    return ms


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """ISO-8601 ('2026-11-25T10:00:00', naive = UTC) or a duration ago ('30m' = thirty minutes ago)."""
    now = now or datetime.now(UTC)
    if not isinstance(text, str):
        raise ConfigError(f"invalid time {text!r}")
    if _DURATION.match(text.strip()):
        try:
            return now - timedelta(milliseconds=parse_duration_ms(text))
        except OverflowError:
            raise ConfigError(f"time {text!r} is too far in the past") from None
    try:
        return parse_utc(text)
    except ValueError:
        raise ConfigError(
            f"invalid time {text!r}: use ISO-8601 (2026-11-25T10:00:00Z) or a duration ago (30m, 2h)"
        ) from None


def validate_range(since: datetime | None, until: datetime | None) -> tuple[int | None, int | None]:
    """Epoch-ms bounds; raises ConfigError for an absurd or inverted range."""
    for name, t in (("since", since), ("until", until)):
        if t is not None and not EARLIEST <= t <= LATEST:
            raise ConfigError(f"{name} {t.isoformat()} is outside {EARLIEST.year}..{LATEST.year}: check the date")
    if since is not None and until is not None and to_ms(since) >= to_ms(until):
        raise ConfigError(f"empty time range: since ({since.isoformat()}) is not before until ({until.isoformat()})")
    return (None if since is None else to_ms(since)), (None if until is None else to_ms(until))


def format_duration(ms: int) -> str:
    """The inverse of :func:`parse_duration_ms` for whole units: 300000 → '5m'."""
    for unit in ("d", "h", "m", "s"):
        if ms % _UNITS_MS[unit] == 0:
            return f"{ms // _UNITS_MS[unit]}{unit}"
    return f"{ms}ms"


@dataclass(frozen=True)
class Window:
    """A timeline's range [since, until) and bucket size, as chosen by :func:`choose_window`, and the part of
    the range that holds events ([first, last], None when none does): querying just that gives the same buckets
    without counting the empty ones against :data:`MAX_BUCKETS`."""

    since: datetime
    until: datetime
    bucket_ms: int
    first: datetime | None = None
    last: datetime | None = None

    @property
    def data_range(self) -> tuple[datetime, datetime]:
        if self.first is None or self.last is None:
            return self.since, self.until
        return self.first, self.last + timedelta(milliseconds=1)


def choose_window(
    engine: Engine,
    camera: str,
    since: datetime | None = None,
    until: datetime | None = None,
    bucket_ms: int | None = None,
) -> Window:
    """Fill in what the caller left open. Without `until`: just after the camera's newest event (now, when it
    has none). Without `since`: :data:`DEFAULT_SPAN` before that end. Without `bucket_ms`: the finest of
    :data:`NICE_BUCKETS_MS` that gives at most :data:`AUTO_BUCKETS` buckets over the events in the range.
    Raises NotFound for an unknown camera, ConfigError for an inverted or absurd range."""
    require_camera(engine, camera)
    if until is None:
        with engine.connect() as conn:
            newest = conn.execute(select(func.max(_ev.ts_ms)).where(_ev.camera == camera)).scalar()
        until = datetime.now(UTC) if newest is None else _from_ms(newest + 1)
        if since is not None and since >= until:  # an explicit start after the newest event: an empty range
            until = since + timedelta(milliseconds=MIN_BUCKET_MS)
    if since is None:
        since = until - DEFAULT_SPAN
    validate_range(since, until)
    where = _filters(camera, to_ms(since), to_ms(until))
    with engine.connect() as conn:
        first, last = conn.execute(select(func.min(_ev.ts_ms), func.max(_ev.ts_ms)).where(*where)).one()
    if bucket_ms is None:
        lo, hi = (to_ms(since), to_ms(until) - 1) if first is None else (first, last)
        bucket_ms = next((b for b in NICE_BUCKETS_MS if hi // b - lo // b + 1 <= AUTO_BUCKETS), NICE_BUCKETS_MS[-1])
    if first is None:
        return Window(since, until, bucket_ms)
    return Window(since, until, bucket_ms, _from_ms(first), _from_ms(last))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_ms(t: datetime) -> int:
    """Epoch milliseconds, exactly (no float rounding: an event at the range's edge stays on its side)."""
    return (t - _EPOCH) // timedelta(milliseconds=1)


def _from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def cameras(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(CameraRow.name, CameraRow.first_seen_ms, CameraRow.last_seen_ms).order_by(CameraRow.name)
        ).all()
    return [{"name": r.name, "first_seen": iso(r.first_seen_ms), "last_seen": iso(r.last_seen_ms)} for r in rows]


def require_camera(engine: Engine, camera: str) -> None:
    with engine.connect() as conn:
        found = conn.execute(select(CameraRow.name).where(CameraRow.name == camera)).first()
    if found is None:
        known = [c["name"] for c in cameras(engine)]
        shown = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "")
        raise NotFound(f"unknown camera {camera!r}; known: {shown if known else 'none yet'}")


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def dominant_case(counts: dict[str, Any]) -> Any:
    """SQL CASE picking the emotion with the highest count; ties go to the first in EMOTIONS order."""
    whens = []
    for e in EMOTIONS:
        others = [counts[e] >= counts[o] for o in EMOTIONS if o != e]
        whens.append((and_(counts[e] > 0, *others), literal(e)))
    return case(*whens, else_=None)


def timeline(
    engine: Engine,
    camera: str,
    bucket_ms: int,
    since: datetime | None = None,
    until: datetime | None = None,
    labels: Labels = "raw",
    source: Literal["auto", "raw"] = "auto",
) -> list[dict[str, Any]]:
    """Buckets of `bucket_ms` with at least one face, oldest first:
    ``{"start": ISO-8601, "faces": n, "counts": {emotion: n}, "mean": {emotion: p}, "dominant": emotion}``.

    ``labels="smoothed"`` counts the per-track smoothed label (falling back to the raw label for faces that have
    none: untracked faces and a track's first observations). Raises NotFound for an unknown camera, ConfigError
    for a bad bucket, an inverted or absurd range, or too many buckets.
    """
    if not MIN_BUCKET_MS <= bucket_ms <= MAX_BUCKET_MS:
        raise ConfigError(f"bucket of {bucket_ms} ms is out of range: use 1s to 1d")
    if labels not in ("raw", "smoothed"):
        raise ConfigError(f"labels must be 'raw' or 'smoothed', got {labels!r}")
    lo, hi = validate_range(since, until)
    require_camera(engine, camera)
    where = _filters(camera, lo, hi)
    with engine.connect() as conn:
        if lo is not None and hi is not None:
            n_buckets = (hi - 1) // bucket_ms - lo // bucket_ms + 1
        else:
            span = conn.execute(select(func.min(_ev.ts_ms), func.max(_ev.ts_ms)).where(*where)).one()
            n_buckets = 0 if span[0] is None else span[1] // bucket_ms - span[0] // bucket_ms + 1
        if n_buckets > MAX_BUCKETS:
            raise ConfigError(
                f"{n_buckets} buckets requested (over {MAX_BUCKETS}): use a larger bucket or a shorter range"
            )
        if bucket_ms % 60_000 == 0 and source == "auto":
            inner = _rollup_query(camera, bucket_ms, lo, hi, labels)
        else:
            label = _ev.label if labels == "raw" else func.coalesce(_ev.label_smoothed, _ev.label)
            start = (_ev.ts_ms - _ev.ts_ms % bucket_ms).label("start")
            columns = [start, func.count().label("faces")]
            columns += [func.sum(case((label == e, 1), else_=0)).label(f"n_{e}") for e in EMOTIONS]
            columns += [func.avg(_ev[f"p_{e}"]).label(f"mean_{e}") for e in EMOTIONS]
            inner = select(*columns).where(*where).group_by(start).subquery()
        counts = {e: inner.c[f"n_{e}"] for e in EMOTIONS}
        query = select(inner, dominant_case(counts).label("dominant")).order_by(inner.c.start)
        rows = conn.execute(query).all()
    return [
        {
            "start": iso(r.start),
            "faces": int(r.faces),
            "counts": {e: int(getattr(r, f"n_{e}")) for e in EMOTIONS},
            "mean": {e: round(float(getattr(r, f"mean_{e}")), 6) for e in EMOTIONS},
            "dominant": r.dominant,
        }
        for r in rows
    ]


def _rollup_query(camera: str, bucket_ms: int, lo: int | None, hi: int | None, labels: Labels) -> Any:
    """Whole minutes from the per-minute rollup, the partial minutes at either end of the range from raw events,
    summed per bucket in one SQL statement."""
    lo_up = None if lo is None else lo + (-lo % 60_000)
    hi_down = None if hi is None else hi - hi % 60_000
    m = MinuteRow.__table__.c
    prefix = "n" if labels == "raw" else "s"
    rolled = [m.camera == camera]
    if lo_up is not None:
        rolled.append(m.minute_ms >= lo_up)
    if hi_down is not None:
        rolled.append(m.minute_ms < hi_down)
    parts = [
        select(
            (m.minute_ms - m.minute_ms % bucket_ms).label("start"),
            m.faces.label("faces"),
            *[m[f"{prefix}_{e}"].label(f"c_{e}") for e in EMOTIONS],
            *[m[f"sum_{e}"].label(f"p_{e}") for e in EMOTIONS],
        ).where(*rolled)
    ]
    edges: list[tuple[int, int]] = []  # [a, b) of raw events: the partial minutes at either end
    if lo is not None and lo_up is not None:
        edges.append((lo, lo_up if hi is None else min(lo_up, hi)))
    if hi is not None and hi_down is not None:
        edges.append((hi_down if lo_up is None else max(hi_down, lo_up), hi))
    label = _ev.label if labels == "raw" else func.coalesce(_ev.label_smoothed, _ev.label)
    for a, b in edges:
        if a >= b:
            continue
        parts.append(
            select(
                (_ev.ts_ms - _ev.ts_ms % bucket_ms).label("start"),
                literal_column("1").label("faces"),
                *[case((label == e, 1), else_=0).label(f"c_{e}") for e in EMOTIONS],
                *[_ev[f"p_{e}"].label(f"p_{e}") for e in EMOTIONS],
            ).where(_ev.camera == camera, _ev.ts_ms >= a, _ev.ts_ms < b)
        )
    u = union_all(*parts).subquery() if len(parts) > 1 else parts[0].subquery()
    faces = func.sum(u.c.faces)
    columns = [u.c.start, faces.label("faces")]
    columns += [func.sum(u.c[f"c_{e}"]).label(f"n_{e}") for e in EMOTIONS]
    columns += [(func.sum(u.c[f"p_{e}"]) / faces).label(f"mean_{e}") for e in EMOTIONS]
    return select(*columns).group_by(u.c.start).subquery()


def events(
    engine: Engine,
    camera: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    label: str | None = None,
    limit: int = 100,
    after_id: int | None = None,
    min_quality: float | None = None,
) -> list[dict[str, Any]]:
    """Event rows, oldest first, keyset-paged by id (pass the last id seen as `after_id`). `min_quality` keeps
    faces whose crop quality is known and at least that (rows stored before quality was kept have none)."""
    if label is not None and label not in EMOTIONS:
        raise ConfigError(f"unknown label {label!r}: use one of {', '.join(EMOTIONS)}")
    if min_quality is not None and not 0.0 <= min_quality <= 1.0:
        raise ConfigError(f"min_quality must be within 0..1, got {min_quality}")
    if not 1 <= limit <= 1000:
        raise ConfigError(f"limit must be within 1..1000, got {limit}")
    lo, hi = validate_range(since, until)
    where: list[Any] = []
    if camera is not None:
        require_camera(engine, camera)
        where.append(_ev.camera == camera)
    if lo is not None:
        where.append(_ev.ts_ms >= lo)
    if hi is not None:
        where.append(_ev.ts_ms < hi)
    if label is not None:
        where.append(_ev.label == label)
    if after_id is not None:
        where.append(_ev.id > after_id)
    if min_quality is not None:
        where.append(_ev.quality >= min_quality)
    with engine.connect() as conn:
        rows = conn.execute(select(events_table).where(*where).order_by(_ev.id).limit(limit)).mappings().all()
    return [
        {
            "id": r["id"],
            "camera": r["camera"],
            "frame_seq": r["frame_seq"],
            "face_index": r["face_index"],
            "ts": iso(r["ts_ms"]),
            "ts_ms": r["ts_ms"],
            "box": {k: r[k] for k in ("x", "y", "w", "h")},
            "score": r["det_score"],
            "track_id": r["track_id"],
            "label": r["label"],
            "label_smoothed": r["label_smoothed"],
            "quality": r["quality"],
            "probs": {e: r[f"p_{e}"] for e in EMOTIONS},
            "model": r["model"],
            "detector": r["detector"],
        }
        for r in rows
    ]


def _filters(camera: str, lo: int | None, hi: int | None) -> list[Any]:
    out: list[Any] = [_ev.camera == camera]
    if lo is not None:
        out.append(_ev.ts_ms >= lo)
    if hi is not None:
        out.append(_ev.ts_ms < hi)
    return out
