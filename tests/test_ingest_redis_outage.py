"""Ingest rides out a Redis outage: a real Redis 7 server (Debian's redis-server, AOF) is stopped mid-run and
restarted on the same port and data. `fervid ingest-files` waits and goes on where it was (every frame once, at
most repeated with the same sequence number, which storage absorbs); a live camera keeps decoding, drops and
counts its frames meanwhile, and is publishing again once Redis is back. Nothing exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis_server
from rtsp_fixtures import free_port
from waiting import wait_for

from fervid.contracts import DETECTOR_GROUP, FrameMsg, Keys
from fervid.settings import load_settings
from ingest.camera import CameraRunner
from ingest.cameras import CameraConfig

REDIS_SERVER = "/usr/bin/redis-server"  # Debian's package: apt-get install redis-server
KEYS = Keys()


class RedisServer:
    """redis-server on a free port with its AOF in `workdir`, in its own process group; stopped and restarted on the
    same port and data. ``appendfsync always``: a write a client saw acknowledged survives even a kill -9."""

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.port = workdir, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        with open(self.workdir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        client = redis.Redis(port=self.port)
        wait_for("redis-server answering with its data loaded", lambda: _pings(client), 30, [self.proc])
        client.close()

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(30)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:  # refused, or still loading its AOF (BusyLoadingError)
        return False


@pytest.fixture
def redis7(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop(signal.SIGKILL)


class Consumer(threading.Thread):
    """Reads one camera's frame stream as the detector's group would, at most `rate` frames/s, acking each one, and
    carrying on through a Redis outage (entries it read but could not ack are read again from its pending list).
    :attr:`frames`: (seq, capture_ts) of each stream entry, in order."""

    def __init__(self, url: str, camera: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url, socket_timeout=2)
        self.stream, self.rate = KEYS.frames(camera), rate
        self.entries: dict[bytes, tuple[int, float]] = {}  # entry id → (seq, capture_ts), in first delivery order
        self.outage_errors = 0
        self.done = threading.Event()

    @property
    def frames(self) -> list[tuple[int, float]]:
        return list(self.entries.values())

    def run(self) -> None:
        start = "0"  # its own pending entries first: after an outage, what it read but could not ack
        while not self.done.is_set():
            try:
                resp = self.client.xreadgroup(DETECTOR_GROUP, "test", {self.stream: start}, count=1, block=100)
                entries = [e for _, es in resp or [] for e in es if e[1]]
                if start == "0" and not entries:
                    start = ">"
                for entry_id, fields in entries:
                    f = FrameMsg.decode(fields).frame
                    self.entries.setdefault(entry_id, (f.seq, f.capture_ts))  # read again if its ack was lost
                    self.client.xack(self.stream, DETECTOR_GROUP, entry_id)
                    time.sleep(1 / self.rate)
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                # Refused or loading while Redis is away; NOGROUP until ingest has made the group.
                self.outage_errors += 1
                start = "0"
                time.sleep(0.1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_ingest_files_waits_for_redis_and_goes_on_where_it_was(
    redis7: RedisServer, sample_clip: Any, tmp_path: Path, sig: signal.Signals
) -> None:
    clip, _ = sample_clip  # 2 s at 30 fps: 60 frames
    consumer = Consumer(redis7.url, "door", rate=20)
    consumer.start()
    env = {**os.environ, "FERVID_BUS__FRAME_BACKLOG": "4"}  # ingest waits on the consumer: mid-file for a while
    cmd = [sys.executable, "-c", "from fervid.cli import main; main()", "ingest-files", str(clip), "--camera", "door"]
    proc = subprocess.Popen(
        [*cmd, "--redis", redis7.url, "--metrics-port", "0", "-v"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for("10 frames through", lambda: len(consumer.frames) >= 10, 60, [proc])
        redis7.stop(sig)
        time.sleep(3)
        assert proc.poll() is None, "ingest-files exited while Redis was away"
        redis7.start()
        _, err = proc.communicate(timeout=120)
        wait_for("every frame consumed", lambda: len({s for s, _ in consumer.frames}) >= 60, 30)
    finally:
        consumer.done.set()
        consumer.join(5)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    assert "door: Redis is unreachable" in err and "door: Redis is back after" in err
    seqs = [s for s, _ in consumer.frames]
    assert set(seqs) == set(range(60)), "a frame was lost"
    assert seqs == sorted(seqs), "sequence numbers went back"
    # A frame may go twice (sent, then the connection broke before the reply): the same frame, the same number.
    stamps: dict[int, set[float]] = {}
    for s, ts in consumer.frames:
        stamps.setdefault(s, set()).add(ts)
    assert all(len(ts) == 1 for ts in stamps.values())
    assert len(seqs) - 60 <= 2, f"{len(seqs) - 60} frames went twice"
    assert consumer.outage_errors > 0


def test_ingest_files_started_while_redis_is_down_waits_for_it(sample_clip: Any, tmp_path: Path) -> None:
    """`fervid up` starts file ingest once: if Redis is away at that moment, ingest waits for it (saying so),
    then publishes every frame of the file."""
    clip, _ = sample_clip  # 2 s at 30 fps: 60 frames
    server = redis_server.RedisServer(tmp_path / "redis")  # Redis 7, AOF; its port is chosen, nothing listens yet
    consumer = Consumer(server.url, "door", rate=200)
    consumer.start()
    log = tmp_path / "ingest.log"
    cmd = [sys.executable, "-c", "from fervid.cli import main; main()", "ingest-files", str(clip), "--camera", "door"]
    with open(log, "w") as err:
        proc = subprocess.Popen([*cmd, "--redis", server.url, "--metrics-port", "0"], stderr=err, text=True)
    try:
        wait_for("ingest-files waiting for Redis", lambda: "unreachable" in log.read_text(), 60, [proc])
        time.sleep(2)  # a few retries
        assert proc.poll() is None, "ingest-files gave up while Redis was down"
        server.start()
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
        wait_for("every frame consumed", lambda: len({s for s, _ in consumer.frames}) >= 60, 30)
    finally:
        consumer.done.set()
        consumer.join(5)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.close()
    err_text = log.read_text()
    assert "Traceback" not in err_text
    assert f"ingest-files: Redis at {server.url} unreachable" in err_text
    seqs = [s for s, _ in consumer.frames]
    assert seqs == list(range(60)), "a frame was lost, went twice or out of order"


def test_live_camera_keeps_decoding_through_a_redis_outage_and_counts_what_it_dropped(
    redis7: RedisServer, rtsp_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(data_dir=tmp_path / "data")
    client = redis.Redis.from_url(redis7.url)
    runner = CameraRunner(CameraConfig(name="door", url=rtsp_server.url("cam2"), fps=10), client, settings)
    consumer = Consumer(redis7.url, "door", rate=100)
    consumer.start()
    runner.start()
    try:
        wait_for("live, publishing", lambda: runner.snapshot().frames >= 5, 20, [runner])
        redis7.stop(signal.SIGKILL)
        down_at = time.monotonic()
        decoded, states = runner.snapshot().decoded, set()
        while time.monotonic() - down_at < 3:
            runner.publish_state()  # the heartbeat: fails quietly while Redis is away
            states.add(runner.snapshot().state)
            time.sleep(0.1)
        away = runner.snapshot()
        assert states == {"live"} and runner.is_alive()
        assert away.decoded >= decoded + 40, "decoding stopped while Redis was away"  # ~30 frames/s of video
        assert away.offline_drops >= 15  # ~10 frames/s kept
        redis7.start()
        up_at = time.time()
        wait_for("publishing again", lambda: runner.snapshot().frames >= away.frames + 5, 10, [runner])
        runner.publish_state()
        wait_for(
            "the dropped frames counted in Redis",
            lambda: (
                int(client.hget(KEYS.camera("door", "stats"), "offline_drops") or 0) == runner.snapshot().offline_drops
            ),
            5,
        )
    finally:
        runner.stop()
        runner.join(5)
        consumer.done.set()
        consumer.join(5)
    seqs = [s for s, _ in consumer.frames]
    assert seqs == sorted(set(seqs)), "sequence numbers must keep increasing"
    stamps = [ts for _, ts in consumer.frames]
    assert min(stamps) < up_at - 3 < up_at < max(stamps)  # frames from both sides of the outage
    warnings = [r.getMessage() for r in caplog.records if "cannot write camera state" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per outage, not once per heartbeat
    assert "door: Redis is unreachable" in caplog.text and "frames dropped meanwhile" in caplog.text
