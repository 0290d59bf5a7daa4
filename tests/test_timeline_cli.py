"""Timelines people can read: without --bucket, the finest nice bucket that gives at most 500; without --since,
the 24 h that end at the camera's newest face (a recorded file lives in the past); a table that fits 80
columns; a mistyped SQLite path is "no such database", never a new empty file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from storage_data import T0, make_messages

from storage.db import create_schema, insert_idempotent, make_engine
from storage.timeline import AUTO_BUCKETS, NICE_BUCKETS_MS, choose_window, format_duration

ROOT = Path(__file__).resolve().parents[1]
DAY = 86_400.0


def fervid(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERVID_")} | {"COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "fervid.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def db(tmp_path: Path) -> str:
    """cam1: 4 s of frames at 5 fps; slow: one frame every 15 s for 2 h; day: every 3 min for 24 h; two: 20
    frames on 2025-11-25 and 20 two days later."""
    url = f"sqlite:///{tmp_path / 't.db'}"
    engine = make_engine(url)
    create_schema(engine)
    insert_idempotent(engine, make_messages(20, faces=3))
    insert_idempotent(engine, make_messages(480, camera="slow", fps=1 / 15, faces=1))
    insert_idempotent(engine, make_messages(480, camera="day", fps=1 / 180, faces=1))
    insert_idempotent(engine, make_messages(20, camera="two", faces=1))
    insert_idempotent(engine, make_messages(20, camera="two", t0=T0 + 2 * DAY, seed=2, faces=1))
    # 30 s apart across midnight: sub-minute buckets over two days, the widest the table's start column gets.
    insert_idempotent(engine, make_messages(4, camera="midnight", fps=1 / 30, t0=T0 - 60, faces=2))
    engine.dispose()
    return url


def t(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def test_nice_buckets_are_sorted_and_end_at_a_day() -> None:
    assert list(NICE_BUCKETS_MS) == sorted(NICE_BUCKETS_MS) and NICE_BUCKETS_MS[0] == 1000
    assert NICE_BUCKETS_MS[-1] == 86_400_000 and [format_duration(b) for b in NICE_BUCKETS_MS[5:8]] == [
        "30s",
        "1m",
        "2m",
    ]


@pytest.mark.parametrize(("camera", "bucket"), [("cam1", "1s"), ("slow", "15s"), ("day", "5m"), ("two", "1s")])
def test_the_bucket_is_the_finest_with_at_most_500(db: str, camera: str, bucket: str) -> None:
    window = choose_window(make_engine(db), camera)
    assert format_duration(window.bucket_ms) == bucket
    finer = [b for b in NICE_BUCKETS_MS if b < window.bucket_ms]
    result = json.loads(fervid("timeline", camera, "--db", db, "--format", "json").stdout)
    assert len(result) <= AUTO_BUCKETS
    if finer:  # the next finer bucket would have given too many
        span_ms = (
            datetime.fromisoformat(result[-1]["start"]) - datetime.fromisoformat(result[0]["start"])
        ).total_seconds() * 1000
        assert span_ms // finer[-1] + 1 > AUTO_BUCKETS


def test_without_since_the_day_that_ends_at_the_newest_face(db: str) -> None:
    engine = make_engine(db)
    window = choose_window(engine, "two")
    with engine.connect() as conn:
        newest = conn.execute(text("select max(ts_ms) from events where camera = 'two'")).scalar_one() / 1000
    assert T0 + 2 * DAY < newest < T0 + 2 * DAY + 4
    assert window.until == t(newest) + timedelta(milliseconds=1) and window.since == window.until - timedelta(days=1)
    recent = json.loads(fervid("timeline", "two", "--db", db, "--format", "json").stdout)
    both = json.loads(fervid("timeline", "two", "--db", db, "--format", "json", "--since", "2025-11-24").stdout)
    assert recent and all(b["start"].startswith("2025-11-27") for b in recent)
    assert {b["start"][:10] for b in both} == {"2025-11-25", "2025-11-27"}
    # --until alone: the 24 h before it.
    window = choose_window(engine, "two", until=t(T0 + DAY))
    assert window.since == t(T0) and window.until == t(T0 + DAY)
    # --since after the newest face: an empty range, not an error.
    assert choose_window(engine, "two", since=t(newest + 60)).since == t(newest + 60)
    assert "No faces for camera 'two'" in fervid("timeline", "two", "--db", db, "--since", "2025-11-28").stderr


@pytest.mark.parametrize(
    ("camera", "args", "start"),
    [
        ("cam1", [], r"\d\d:\d\d:\d\d "),  # one day (the date is in the title), seconds
        ("day", [], r"\d\d:\d\d "),  # whole minutes
        ("two", ["--since", "2025-11-24"], r"11-2[57] \d\d:\d\d "),  # two days: 10m buckets
        ("midnight", ["--bucket", "30s"], r"11-2[45] \d\d:\d\d:[03]0 "),  # the widest: days and seconds
    ],
)
def test_the_table_fits_80_columns(db: str, camera: str, args: list[str], start: str) -> None:
    result = fervid("timeline", camera, "--db", db, *args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.rstrip("\n").splitlines()
    assert max(len(line) for line in lines) <= 80, result.stdout
    buckets = json.loads(fervid("timeline", camera, "--db", db, "--format", "json", *args).stdout)
    rows = [line for line in lines if re.match(r"\d\d[:-]", line)]
    assert len(rows) == len(buckets) and all(re.match(start, row) for row in rows)  # one line each, none wrapped
    assert "ang" in lines[1] and "dominant" in lines[1] and lines[-1].startswith("from ") and "UTC" in lines[-1]


def test_a_mistyped_database_is_not_created(tmp_path: Path) -> None:
    result = fervid("timeline", "cam1", "--db", f"sqlite:///{tmp_path / 'nope' / 'typo.db'}", cwd=tmp_path)
    assert result.returncode == 1 and "no such database" in result.stderr
    assert list(tmp_path.iterdir()) == []
    other = tmp_path / "other.db"
    make_engine(f"sqlite:///{other}").dispose()  # an SQLite file, but not fervid's
    before = other.read_bytes()
    result = fervid("timeline", "cam1", "--db", f"sqlite:///{other}", cwd=tmp_path)
    assert result.returncode == 1 and "has no fervid tables" in result.stderr and other.read_bytes() == before
