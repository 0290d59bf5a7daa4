"""The storage worker on the real bus (embedded Redis): exactly one row per face through crashes, redelivery,
database outages and malformed messages; and the storage CLI commands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select
from storage_data import make_messages
from typer.testing import CliRunner

from fervid.bus import Bus, iter_entries
from fervid.cli import app as cli_app
from fervid.contracts import STORAGE_GROUP, Keys
from fervid.worker import run_stage
from storage.db import EventRow, FrameRow, MinuteRow, TrackRow, create_schema, events_table, make_engine
from storage.migrate import head_revision
from storage.worker import StorageStage

KEYS = Keys()  # the default namespace

ROOT = Path(__file__).resolve().parents[1]
ev = events_table.c


def publish(client: redis.Redis, msgs) -> None:
    bus = Bus(client, "producer")
    for m in msgs:
        bus.publish(KEYS.events, m, downstream_group=STORAGE_GROUP, backlog=100_000)


def counts(url: str) -> tuple[int, int, int]:
    engine = make_engine(url)
    with engine.connect() as conn:
        n_events = conn.execute(select(func.count()).select_from(EventRow)).scalar_one()
        distinct = conn.execute(
            select(func.count()).select_from(select(ev.camera, ev.frame_seq, ev.face_index).distinct().subquery())
        ).scalar_one()
        n_frames = conn.execute(select(func.count()).select_from(FrameRow)).scalar_one()
    engine.dispose()
    return n_events, distinct, n_frames


def pending(client: redis.Redis) -> int:
    return int(client.xpending(KEYS.events, STORAGE_GROUP)["pending"])


def summaries_agree(url: str) -> None:
    """The minute rollup and the track summaries count every stored face exactly once."""
    engine = make_engine(url)
    with engine.connect() as conn:
        faces = conn.execute(select(func.count()).select_from(EventRow)).scalar_one()
        rollup = conn.execute(select(func.sum(MinuteRow.faces))).scalar_one()
        tracked = conn.execute(select(func.sum(TrackRow.n_faces))).scalar_one()
        tracked_events = select(ev.camera, ev.track_id, func.count()).where(ev.track_id.is_not(None))
        per_track = {(c, t): n for c, t, n in conn.execute(tracked_events.group_by(ev.camera, ev.track_id))}
        track_rows = {
            (c, t): n for c, t, n in conn.execute(select(TrackRow.camera, TrackRow.track_id, TrackRow.n_faces))
        }
    engine.dispose()
    assert rollup == faces and tracked == sum(per_track.values()) and track_rows == per_track


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigkill_mid_run_and_restart_leaves_one_row_per_face(
    backend: str, tmp_path: Path, redis_url: str, redis_client: redis.Redis, request
) -> None:
    db = f"sqlite:///{tmp_path / 'kill.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    create_schema(make_engine(db))
    total = 2000
    msgs = make_messages(total)
    faces = sum(len(m.emotions) for m in msgs)
    publish(redis_client, msgs)
    env = {**os.environ, "FERVID_STORAGE__BATCH_SIZE": "4"}
    # 1. A worker that commits a batch and dies before acking it: the exact crash window redelivery must cover.
    crash = (
        "import os, signal; from fervid.bus import Bus, connect; from fervid.settings import load_settings;"
        "from storage.db import make_engine, create_schema; from storage.worker import StorageStage;"
        "from fervid.contracts import *;"
        f"bus = Bus(connect({redis_url!r}), STORAGE_GROUP, claim_idle_ms=200);"
        f"e = make_engine({db!r}); create_schema(e);"
        "stage = StorageStage(e, load_settings()); batch = bus.read_batch(stage.input_streams(), 4, 50, 500);"
        "stage.handle([(d, EventsMsg.decode(d.fields)) for d in batch]); os.kill(os.getpid(), signal.SIGKILL)"
    )
    proc = subprocess.run([sys.executable, "-c", crash], env=env, cwd=ROOT, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert pending(redis_client) == 4 and counts(db)[2] == 4
    # 2. The real service, SIGKILLed at an arbitrary point mid-run (mid-batch or between batches).
    store = [sys.executable, "-m", "fervid.cli", "store", "--redis", redis_url, "--db", db, "--claim-idle-ms", "200"]
    worker = subprocess.Popen(store, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while counts(db)[2] < 100 and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    stored = counts(db)[2]
    assert 0 < stored < total, f"kill landed outside the run ({stored} frames stored)"
    # 3. Restart: it reclaims the dead consumers' pending entries and finishes.
    time.sleep(0.3)
    done = subprocess.run(
        [*store, "--idle-timeout", "2"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    n_events, distinct, n_frames = counts(db)
    assert (n_events, distinct, n_frames) == (faces, faces, total)
    summaries_agree(db)  # the redelivered batches were not folded into the rollup or the tracks twice
    assert pending(redis_client) == 0
    assert redis_client.xlen(KEYS.dead) == 0


def test_sigterm_mid_run_acks_what_it_committed_and_exits_within_10s(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    db = f"sqlite:///{tmp_path / 'term.db'}"
    create_schema(make_engine(db))
    total = 3000
    publish(redis_client, make_messages(total))
    env = {**os.environ, "FERVID_STORAGE__BATCH_SIZE": "8"}
    cmd = [sys.executable, "-m", "fervid.cli", "store", "--redis", redis_url, "--db", db]
    worker = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while counts(db)[2] < 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=10)
    assert time.monotonic() - t0 < 10
    assert worker.returncode == 0, err
    stored = counts(db)[2]
    assert 200 <= stored < total, f"SIGTERM landed outside the run ({stored} frames stored)"
    # Ack after commit: nothing it committed is left pending, and nothing is left pending that is not committed.
    assert pending(redis_client) == 0
    last = next(g for g in redis_client.xinfo_groups(KEYS.events) if g["name"] == STORAGE_GROUP.encode())[
        "last-delivered-id"
    ]
    unread = len(redis_client.xrange(KEYS.events, b"(" + last, "+"))
    assert total - unread == stored  # every entry it read was committed (Redis 6 has no entries-read field)
    # The rest is still there for the next worker.
    done = subprocess.run([*cmd, "--idle-timeout", "1"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert counts(db)[2] == total and pending(redis_client) == 0


def test_malformed_messages_are_dead_lettered_with_reason(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, settings
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'dl.db'}")
    create_schema(engine)
    good = make_messages(5)
    publish(redis_client, good[:2])
    bus = Bus(redis_client, STORAGE_GROUP, claim_idle_ms=200)
    bus.ensure_group(KEYS.events)
    redis_client.xadd(KEYS.events, {"v": "1", "t": "events", "m": "{not json"})
    redis_client.xadd(KEYS.events, {"v": "9", "t": "events", "m": "{}"})
    bad_probs = good[2].encode()
    bad_probs["m"] = bad_probs["m"].replace(b'"probs": [', b'"probs": [7.0, ')
    redis_client.xadd(KEYS.events, bad_probs)
    redis_client.xadd(KEYS.events, {"v": "1", "t": "frame", "m": "{}"})
    publish(redis_client, good[3:])
    stats = run_stage(StorageStage(engine, settings), bus, block_ms=50, idle_timeout=0.5)
    assert stats.dead == 4
    reasons = [f[b"dl_reason"].decode() for _, f in iter_entries(redis_client, KEYS.dead)]
    assert any("malformed" in r for r in reasons) and any("schema version" in r for r in reasons)
    assert any("expected a 'events' message" in r for r in reasons) and any("probabilities" in r for r in reasons)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(FrameRow)).scalar_one() == 4
    assert pending(redis_client) == 0


def test_postgresql_outage_is_retried_in_place_and_loses_nothing(
    pg_url: str, pg_server: str, redis_client: redis.Redis, settings
) -> None:
    """The database is renamed away (every connection fails) while a batch is in hand, then comes back."""
    import psycopg

    engine = make_engine(pg_url)
    create_schema(engine)
    name = engine.url.database
    msgs = make_messages(60)
    publish(redis_client, msgs)
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        admin.execute(f'ALTER DATABASE "{name}" RENAME TO "{name}_away"')
    restored = threading.Event()

    def restore() -> None:
        time.sleep(1.5)
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}_away" RENAME TO "{name}"')
        restored.set()

    threading.Thread(target=restore, daemon=True).start()
    stage = StorageStage(engine, settings)
    bus = Bus(redis_client, STORAGE_GROUP)
    stats = run_stage(stage, bus, block_ms=50, idle_timeout=1.0)
    assert restored.is_set() and stats.dead == 0 and stats.messages == 60
    assert counts(pg_url)[:2] == (sum(len(m.emotions) for m in msgs),) * 2
    assert pending(redis_client) == 0
    engine.dispose()


def test_cli_migrate_prune_timeline_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    r = runner.invoke(cli_app, ["migrate", "--db", db])
    assert r.exit_code == 0 and f"schema at {head_revision()}" in r.stdout
    assert "already up to date" in runner.invoke(cli_app, ["migrate", "--db", db]).stdout
    from storage.db import insert_idempotent

    engine = make_engine(db)
    insert_idempotent(engine, make_messages(20))  # dated 2025-11-25: older than 30 days from now
    r = runner.invoke(cli_app, ["prune", "--older-than", "30d", "--db", db])
    assert r.exit_code == 0 and "20 frames" in r.stdout


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["timeline", "ghost"], 1, "unknown camera"),
        (["timeline", "cam1", "--bucket", "1ms"], 2, "out of range"),
        (["timeline", "cam1", "--since", "2025-11-26", "--until", "2025-11-25"], 2, "empty time range"),
        (["timeline", "cam1", "--db", "postgres://x@nowhere/db"], 2, "unsupported database URL"),
        (["timeline", "cam1", "--db", "postgresql+psycopg://u:hunter2@127.0.0.1:1/db"], 2, "cannot reach the database"),
        (["prune", "--older-than", "5m"], 2, "under 1h"),
        (["store"], 2, "needs a shared Redis"),
    ],
)
def test_cli_errors_are_one_line_with_exit_codes(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    db = f"sqlite:///{tmp_path / 'e.db'}"
    if "--db" not in args:
        args = [*args, "--db", db]
    from storage.db import insert_idempotent

    engine = make_engine(db)
    create_schema(engine)
    insert_idempotent(engine, make_messages(3))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERVID_")}
    proc = subprocess.run(
        [sys.executable, "-m", "fervid.cli", *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr and "hunter2" not in proc.stderr


def test_connection_lost_inside_the_transaction_is_retried(pg_url: str, settings, monkeypatch) -> None:
    """A psycopg error on the raw (one-statement) insert path surfaces as SQLAlchemy's OperationalError and is
    retried."""
    import psycopg

    from fervid.bus import Delivery

    engine = make_engine(pg_url)
    create_schema(engine)
    real = psycopg.Cursor.execute
    failures = []

    def flaky(self, query, params=None, **kw):
        if "INSERT INTO events" in str(query) and not failures:
            failures.append(1)
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return real(self, query, params, **kw)

    monkeypatch.setattr(psycopg.Cursor, "execute", flaky)
    msgs = make_messages(30)
    outcome = StorageStage(engine, settings).handle(
        [(Delivery(KEYS.events, f"{i}-0", {}), m) for i, m in enumerate(msgs)]
    )
    assert failures == [1] and len(outcome.done) == 30
    n = sum(len(m.emotions) for m in msgs)
    assert counts(pg_url) == (n, n, 30)
    engine.dispose()


def test_two_workers_writing_the_same_messages_concurrently_on_postgresql(pg_url: str, settings) -> None:
    """Redelivery racing the first delivery (two replicas, same messages, opposite orders, at once): every face
    stored once and counted once in the rollup and the track summaries."""
    from fervid.bus import Delivery

    create_schema(make_engine(pg_url))
    msgs = make_messages(400, faces=3) + make_messages(200, camera="cam2", seed=5, faces=3)
    batches = [
        [(Delivery(KEYS.events, f"{i}-{j}", {}), m) for j, m in enumerate(msgs[i : i + 16])]
        for i in range(0, len(msgs), 16)
    ]
    errors: list[BaseException] = []

    def worker(order: list) -> None:
        engine = make_engine(pg_url)
        try:
            stage = StorageStage(engine, settings)
            for batch in order:
                assert len(stage.handle(batch).done) == len(batch)
        except BaseException as exc:
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=worker, args=(o,)) for o in (batches, batches[::-1])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    faces = sum(len(m.emotions) for m in msgs)
    assert counts(pg_url) == (faces, faces, len(msgs))
    summaries_agree(pg_url)
