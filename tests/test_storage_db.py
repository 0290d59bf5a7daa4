"""Schema, migrations, idempotent writes, cameras/tracks summaries and timelines on real SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, inspect, select, text
from storage_data import T0, event_row, make_messages

from fervid.contracts import EMOTIONS, Emotion, EventsMsg
from fervid.errors import ConfigError, NotFound, ServiceUnavailable
from storage.db import (
    CameraRow,
    EventRow,
    FrameRow,
    TrackRow,
    create_schema,
    events_table,
    insert_idempotent,
    make_engine,
    prune,
)
from storage.migrate import current_revision, head_revision
from storage.timeline import events, parse_bucket_ms, parse_time, timeline


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'f.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    eng = make_engine(url)
    create_schema(eng)
    yield eng
    eng.dispose()


ev = events_table.c


def count(engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_schema_is_at_head_with_camera_time_indexes(engine) -> None:
    assert current_revision(engine) == head_revision()
    insp = inspect(engine)
    assert {"frames", "events", "cameras", "tracks", "alembic_version"} <= set(insp.get_table_names())
    assert any(ix["column_names"] == ["camera", "ts_ms"] for ix in insp.get_indexes("events"))
    create_schema(engine)  # idempotent
    assert current_revision(engine) == head_revision()


def test_redelivery_never_duplicates_rows_or_track_counts(engine) -> None:
    msgs = make_messages(40)
    n_faces = sum(len(m.emotions) for m in msgs)
    assert insert_idempotent(engine, msgs[:25]) == sum(len(m.emotions) for m in msgs[:25])
    insert_idempotent(engine, msgs[20:])  # overlapping redelivery
    assert insert_idempotent(engine, msgs) == 0
    assert count(engine, EventRow) == n_faces
    assert count(engine, FrameRow) == 40
    with engine.connect() as conn:
        tracks = {r.track_id: r for r in conn.execute(select(TrackRow.__table__))}
        cam = conn.execute(select(CameraRow.__table__)).one()
        per_track = dict(conn.execute(select(ev.track_id, func.count()).group_by(ev.track_id)).all())
        mean_happy = dict(conn.execute(select(ev.track_id, func.avg(ev.p_happy)).group_by(ev.track_id)).all())
    assert {t: r.n_faces for t, r in tracks.items()} == per_track
    for t, r in tracks.items():
        assert r.mean_happy == pytest.approx(mean_happy[t], abs=1e-9)
        assert r.dominant in EMOTIONS
    assert (
        cam.name == "cam1" and cam.first_seen_ms == int(T0 * 1000) and cam.last_seen_ms == round((T0 + 39 / 5) * 1000)
    )


def test_timeline_buckets_dominant_and_smoothed(engine) -> None:
    insert_idempotent(engine, make_messages(100))
    raw = timeline(engine, "cam1", 10_000)
    assert sum(b["faces"] for b in raw) == count(engine, EventRow)
    for b in raw:
        assert sum(b["counts"].values()) == b["faces"]
        top = max(b["counts"].values())
        assert b["dominant"] == next(e for e in EMOTIONS if b["counts"][e] == top)
        assert sum(b["mean"].values()) == pytest.approx(1.0, abs=1e-4)
    smoothed = timeline(engine, "cam1", 10_000, labels="smoothed")
    assert [b["faces"] for b in smoothed] == [b["faces"] for b in raw]
    assert [b["counts"] for b in smoothed] != [b["counts"] for b in raw]
    since = datetime.fromtimestamp(T0 + 5, UTC)
    until = datetime.fromtimestamp(T0 + 15, UTC)
    part = timeline(engine, "cam1", 1000, since=since, until=until)
    assert next(b["start"] for b in part) == "2025-11-25T00:00:05Z" and len(part) == 10


def test_prune_deletes_only_old_rows(engine) -> None:
    insert_idempotent(engine, make_messages(50, t0=T0) + make_messages(50, camera="cam2", t0=T0 + 86400 * 40))
    now_ms = int((T0 + 86400 * 41) * 1000)
    deleted = prune(engine, 30 * 86_400_000, now_ms=now_ms)
    assert deleted["frames"] == 50 and deleted["events"] > 0
    with engine.connect() as conn:
        assert set(conn.execute(select(ev.camera).distinct()).scalars()) == {"cam2"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(bucket_ms=500), "out of range"),
        (dict(bucket_ms=86_400_001), "out of range"),
        (dict(since=datetime(2025, 11, 26, tzinfo=UTC), until=datetime(2025, 11, 25, tzinfo=UTC)), "empty time range"),
        (dict(since=datetime(1970, 1, 2, tzinfo=UTC)), "outside"),
        (dict(since=datetime(2025, 1, 1, tzinfo=UTC), until=datetime(2025, 12, 1, tzinfo=UTC)), "buckets requested"),
    ],
)
def test_timeline_rejects_bad_ranges(engine, kwargs, message) -> None:
    insert_idempotent(engine, make_messages(5))
    kwargs.setdefault("bucket_ms", 1000)
    with pytest.raises(ConfigError, match=message):
        timeline(engine, "cam1", **kwargs)


def test_unknown_camera_and_injection_are_not_found(engine) -> None:
    insert_idempotent(engine, make_messages(5))
    for name in ["nope", "cam1' OR '1'='1", "cam1; DROP TABLE events; --"]:
        with pytest.raises(NotFound, match="unknown camera"):
            timeline(engine, name, 1000)
    assert count(engine, EventRow) > 0


@pytest.mark.parametrize("min_quality", [-0.1, 1.5, float("nan")])
def test_events_min_quality_is_within_zero_and_one(tmp_path: Path, min_quality: float) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'q.db'}")
    create_schema(eng)
    with pytest.raises(ConfigError, match=r"min_quality must be within 0\.\.1"):
        events(eng, min_quality=min_quality)


@pytest.mark.parametrize("text", ["0s", "1x", "-5m", "", "1 m", "10ms"])
def test_bad_buckets(text) -> None:
    with pytest.raises(ConfigError):
        parse_bucket_ms(text)


def test_bad_times() -> None:
    with pytest.raises(ConfigError, match="invalid time"):
        parse_time("yesterday")


@pytest.mark.parametrize(
    "url, error",
    [
        ("postgres+psycopg://x@localhost/db", ConfigError),
        ("mysql://x@localhost/db", ConfigError),
        ("sqlite:/relative-typo.db", ConfigError),
        ("postgresql+psycopg://u:secret@127.0.0.1:1/db", ServiceUnavailable),
    ],
)
def test_db_url_typos_fail_clearly(url, error) -> None:
    with pytest.raises(error) as info:
        make_engine(url)
    assert "secret" not in str(info.value)


def test_sqlite_and_postgresql_give_identical_timeline_json(tmp_path: Path, pg_url: str) -> None:
    msgs = make_messages(300, seed=7) + make_messages(120, camera="cam2", seed=8)
    outputs = []
    for url in (f"sqlite:///{tmp_path / 'a.db'}", pg_url):
        eng = make_engine(url)
        create_schema(eng)
        insert_idempotent(eng, msgs[::2])
        insert_idempotent(eng, msgs)
        result = {
            (cam, bucket, labels): timeline(eng, cam, bucket, labels=labels)
            for cam in ("cam1", "cam2")
            for bucket in (1000, 10_000, 60_000)
            for labels in ("raw", "smoothed")
        }
        outputs.append(json.dumps({str(k): v for k, v in result.items()}, sort_keys=True))
        eng.dispose()
    assert outputs[0] == outputs[1]


def test_pre_migration_database_is_stamped_and_upgraded(tmp_path: Path) -> None:
    from storage.migrate import FIRST, upgrade

    eng = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(eng, FIRST)  # the tables that create_all made before migrations existed (0001 is exactly those)
    with eng.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
        frame = "('old', 0, 1700000000000, 1, 1, 0)"
        conn.execute(text(f"INSERT INTO frames (camera, seq, ts_ms, width, height, faces) VALUES {frame}"))
    create_schema(eng)
    assert current_revision(eng) == head_revision()
    with eng.connect() as conn:
        assert conn.execute(select(CameraRow.name)).scalars().all() == ["old"]


@pytest.mark.parametrize(
    "since, until",
    [
        (None, None),
        (T0 + 10.4, None),
        (None, T0 + 200.7),
        (T0 + 61.3, T0 + 161.9),
        (T0 + 5.5, T0 + 40.2),
        (T0 + 60, T0 + 180),
    ],
)
def test_minute_rollup_equals_raw_events(engine, since, until) -> None:
    msgs = make_messages(1500, fps=5)
    insert_idempotent(engine, msgs[:900])
    insert_idempotent(engine, msgs[500:])  # overlap: the rollup must not double count either
    kw = dict(
        since=None if since is None else datetime.fromtimestamp(since, UTC),
        until=None if until is None else datetime.fromtimestamp(until, UTC),
    )
    for bucket in (60_000, 120_000):
        for labels in ("raw", "smoothed"):
            fast = timeline(engine, "cam1", bucket, labels=labels, **kw)
            raw = timeline(engine, "cam1", bucket, labels=labels, source="raw", **kw)
            assert fast == raw and fast


def test_frames_without_faces_and_untracked_faces(engine) -> None:
    assert insert_idempotent(engine, make_messages(10, faces=0)) == 0
    assert count(engine, FrameRow) == 10 and count(engine, EventRow) == 0 and count(engine, CameraRow) == 1
    assert insert_idempotent(engine, []) == 0


def expected_row(m: EventsMsg, e: Emotion) -> dict[str, Any]:
    """The events row of `e`, spelled out here by hand (independently of fervid.contracts.EVENT_COLUMNS)."""
    row = {"ts_ms": round(m.frame.capture_ts * 1000), "x": e.box.x, "y": e.box.y, "w": e.box.w, "h": e.box.h}
    row |= {"det_score": e.score, "track_id": e.track_id, "label": e.label, "label_smoothed": e.smoothed_label}
    row |= {f"p_{name}": p for name, p in zip(EMOTIONS, e.probs, strict=True)}
    return row | {"quality": e.quality, "model": m.model, "detector": m.detector}


def test_rows_round_trip_exactly_with_awkward_strings_and_interleaved_cameras(engine) -> None:
    """Every float keeps every bit and any model/detector string survives (the PostgreSQL path sends array
    literals and a dictionary of strings); a batch interleaving cameras keeps per-camera summaries apart."""
    import dataclasses

    odd = ['m,1 "q" {x} \\ NULL', "NULL", "", "modèle ünï"]
    cams = [make_messages(30, camera=c, seed=i + 3, faces=3) for i, c in enumerate(("cam1", "cam.2", "Cam_3"))]
    msgs = [
        dataclasses.replace(m, model=odd[i % 4], detector=odd[(i + 1) % 4])
        for i, m in enumerate(x for trio in zip(*cams, strict=True) for x in trio)
    ]
    n = sum(len(m.emotions) for m in msgs)
    assert insert_idempotent(engine, msgs) == n
    expected = {(m.frame.camera, m.frame.seq, e.index): expected_row(m, e) for m in msgs for e in m.emotions}
    compared = list(next(iter(expected.values())))
    with engine.connect() as conn:
        stored = {
            (r["camera"], r["frame_seq"], r["face_index"]): {k: r[k] for k in compared}
            for r in conn.execute(select(events_table)).mappings()
        }
        tracks = {(r.camera, r.track_id): r for r in conn.execute(select(TrackRow.__table__))}
        cameras = {r.name: (r.first_seen_ms, r.last_seen_ms) for r in conn.execute(select(CameraRow.__table__))}
    assert stored == expected
    assert any(v["quality"] is None for v in expected.values()) and any(v["quality"] for v in expected.values())
    assert cameras == {
        c[0].frame.camera: (round(c[0].frame.capture_ts * 1000), round(c[-1].frame.capture_ts * 1000)) for c in cams
    }
    for (camera, track), row in tracks.items():
        faces = [v for k, v in expected.items() if k[0] == camera and v["track_id"] == track]
        means = [sum(f[f"p_{e}"] for f in faces) / len(faces) for e in EMOTIONS]
        assert row.n_faces == len(faces) and (row.first_ts_ms, row.last_ts_ms) == (
            min(f["ts_ms"] for f in faces),
            max(f["ts_ms"] for f in faces),
        )
        assert [getattr(row, f"mean_{e}") for e in EMOTIONS] == pytest.approx(means, abs=1e-12)
        assert row.dominant == EMOTIONS[means.index(max(means))]
    assert sum(r.n_faces for r in tracks.values()) == n


def test_migrations_build_exactly_the_tables_the_code_defines(engine) -> None:
    """The migrations (history) and the ORM (built from fervid.contracts.EVENT_COLUMNS) must agree: a column
    added to the contract without a migration, or a migration without the contract, fails here."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from storage.db import Base

    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata) == []


@pytest.mark.parametrize("unknown_quality", [False, True])
def test_every_column_stores_what_the_contract_names(engine, unknown_quality: bool) -> None:
    """Each events row equals `event_row` (EVENT_COLUMNS read plainly, by name) of its face, whichever way the
    writer sends a column (PostgreSQL: binary arrays, or a text literal when a batch holds a NULL)."""
    import dataclasses

    msgs = [
        dataclasses.replace(
            m,
            emotions=tuple(
                dataclasses.replace(e, quality=None if unknown_quality and e.index == 0 else (m.frame.seq % 10) / 9)
                for e in m.emotions
            ),
        )
        for m in make_messages(60, faces=3, seed=5)
    ]
    insert_idempotent(engine, msgs)
    with engine.connect() as conn:
        stored = {
            (r["camera"], r["frame_seq"], r["face_index"]): {k: v for k, v in r.items() if k != "id"}
            for r in conn.execute(select(events_table)).mappings()
        }
    expected = {(m.frame.camera, m.frame.seq, e.index): event_row(m, e) for m in msgs for e in m.emotions}
    assert stored == expected
    assert any(v["quality"] is None for v in expected.values()) == unknown_quality


def test_migration_0004_adds_quality_beside_existing_rows(engine) -> None:
    """Rows written before 0004 keep everything and read quality NULL; downgrading drops the column again."""
    from alembic import command

    from storage.migrate import alembic_config, upgrade

    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0003_events_1m")
    columns = {c["name"] for c in inspect(engine).get_columns("events")}
    assert "quality" not in columns
    msg = next(m for m in make_messages(10) if m.emotions)
    old = {c: v for c, v in event_row(msg, msg.emotions[0]).items() if c in columns}
    with engine.begin() as conn:
        conn.execute(text(f"INSERT INTO events ({', '.join(old)}) VALUES ({', '.join(':' + c for c in old)})"), old)
    assert upgrade(engine) == ("0003_events_1m", head_revision())
    with engine.connect() as conn:
        row = conn.execute(select(events_table)).mappings().one()
    assert {c: row[c] for c in old} == old and row["quality"] is None
