"""Per-camera emotion timelines, aggregated by the database: bucketed face counts, per-emotion label counts
and mean probabilities."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import case, func, inspect, select
from sqlalchemy.engine import Engine

from fervid.contracts import EMOTIONS
from fervid.errors import ConfigError, NotFound
from storage.db import EventRow, FrameRow

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")
MAX_BUCKETS = 100_000  # a bigger answer is a mistake (1 s buckets over a year), not a query to run


def parse_duration_ms(text: str) -> int:
    """'10s', '1m', '1h', '1d' → milliseconds."""
    m = _DURATION.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise ConfigError(f"invalid duration {text!r}: use a positive number and a unit, e.g. 1s, 10s, 1m, 1h, 1d")
    return int(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """ISO-8601 ('2026-11-25T10:00:00', naive = UTC) or a duration ago ('30m' = thirty minutes ago)."""
    now = now or datetime.now(timezone.utc)
    if _DURATION.match(text.strip()):
        return now - timedelta(milliseconds=parse_duration_ms(text))
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"invalid time {text!r}: use ISO-8601 (2026-11-25T10:00:00Z) or a duration ago (30m, 2h)") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def cameras(engine: Engine) -> list[str]:
    if not inspect(engine).has_table(FrameRow.__tablename__):
        return []
    with engine.connect() as conn:
        return list(conn.execute(select(FrameRow.camera).distinct().order_by(FrameRow.camera)).scalars())


def timeline(
    engine: Engine,
    camera: str,
    bucket_ms: int,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[dict[str, Any]]:
    """Buckets of `bucket_ms` with at least one face, oldest first:
    ``{"start": ISO-8601, "faces": n, "counts": {emotion: n}, "mean": {emotion: p}}``.

    Raises NotFound for a camera that never produced a frame, ConfigError for an inverted or oversized range.
    """
    if bucket_ms <= 0:
        raise ConfigError("bucket must be positive")
    lo = None if since is None else int(since.timestamp() * 1000)
    hi = None if until is None else int(until.timestamp() * 1000)
    if lo is not None and hi is not None and lo >= hi:
        raise ConfigError(f"empty time range: since ({since}) is not before until ({until})")
    if not inspect(engine).has_table(FrameRow.__tablename__):
        raise NotFound(f"unknown camera {camera!r}: this database holds no fervid data yet (is --db right?)")
    with engine.connect() as conn:
        if conn.execute(select(FrameRow.id).where(FrameRow.camera == camera).limit(1)).first() is None:
            known = cameras(engine)
            raise NotFound(f"unknown camera {camera!r}; known: {', '.join(known) if known else 'none yet'}")
        span = conn.execute(
            select(func.min(EventRow.ts_ms), func.max(EventRow.ts_ms)).where(*_filters(camera, lo, hi))
        ).one()
        if span[0] is not None and (span[1] - span[0]) // bucket_ms + 1 > MAX_BUCKETS:
            raise ConfigError(
                f"{(span[1] - span[0]) // bucket_ms + 1} buckets requested (over {MAX_BUCKETS}): use a larger bucket or a shorter range"
            )
        start = (EventRow.ts_ms - EventRow.ts_ms % bucket_ms).label("start")
        columns = [start, func.count().label("faces")]
        columns += [func.sum(case((EventRow.label == e, 1), else_=0)).label(f"n_{e}") for e in EMOTIONS]
        columns += [func.avg(getattr(EventRow, f"p_{e}")).label(f"mean_{e}") for e in EMOTIONS]
        query = select(*columns).where(*_filters(camera, lo, hi)).group_by(start).order_by(start)
        rows = conn.execute(query).all()
    return [
        {
            "start": datetime.fromtimestamp(r.start / 1000, timezone.utc).isoformat().replace("+00:00", "Z"),
            "faces": int(r.faces),
            "counts": {e: int(getattr(r, f"n_{e}")) for e in EMOTIONS},
            "mean": {e: round(float(getattr(r, f"mean_{e}")), 6) for e in EMOTIONS},
        }
        for r in rows
    ]


def _filters(camera: str, lo: int | None, hi: int | None) -> list[Any]:
    out: list[Any] = [EventRow.camera == camera]
    if lo is not None:
        out.append(EventRow.ts_ms >= lo)
    if hi is not None:
        out.append(EventRow.ts_ms < hi)
    return out
