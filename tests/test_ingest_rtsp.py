"""Ingest against real things: a GStreamer RTSP server (killed and restarted), bad URLs, bad files, a silent
TCP listener, a slow consumer. Every camera runs in one IngestService, as `fervid ingest` runs them."""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rtsp_fixtures import RtspServer, ServerFactory
from waiting import wait_for

from fervid.bus import iter_entries
from fervid.contracts import DETECTOR_GROUP, FrameMsg, Keys
from fervid.settings import Settings
from ingest.camera import CameraRunner
from ingest.cameras import CameraConfig
from ingest.service import IngestService

KEYS = Keys()  # the default namespace

PASSWORD = "s3cret-pw"


def seqs(client: redis.Redis, camera: str) -> list[tuple[int, float]]:
    out = []
    for _, fields in iter_entries(client, KEYS.frames(camera)):
        f = FrameMsg.decode(fields).frame
        out.append((f.seq, f.capture_ts))
    return out


def assert_no_secret(client: redis.Redis, secret: str) -> None:
    for key in client.scan_iter("*"):
        kind = client.type(key)
        if kind == b"hash":
            blob = b" ".join(k + b"=" + v for k, v in client.hgetall(key).items())
        elif kind == b"set":
            blob = b" ".join(client.smembers(key))
        else:
            continue  # frame streams: JPEG + metadata, checked through FrameMsg fields below
        assert secret.encode() not in blob, f"{key!r} holds the password"


def test_kill_and_restart_server_reconnects_while_other_camera_flows(
    service: IngestService,
    rtsp_server_factory: ServerFactory,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    flaky = rtsp_server_factory(("cam",), "viewer", PASSWORD)
    steady = rtsp_server_factory(("cam",))
    service.apply(
        [
            CameraConfig(name="flaky", url=flaky.url(), fps=10, read_timeout=3),
            CameraConfig(name="steady", url=steady.url(), fps=10),
        ]
    )
    a, b = service.runners["flaky"], service.runners["steady"]
    wait_for("both cameras live", lambda: a.snapshot().frames >= 5 and b.snapshot().frames >= 5, 15)
    before = a.snapshot().frames

    flaky.kill()
    wait_for(
        "the loss noticed",
        lambda: a.snapshot().state in ("backing_off", "connecting") and a.snapshot().reconnects >= 1,
        6,
    )
    steady_frames = b.snapshot().frames
    service.tick()
    state = {k.decode(): v.decode() for k, v in redis_client.hgetall(KEYS.camera("flaky", "state")).items()}
    assert state["state"] in ("backing_off", "connecting")
    assert state["url"] == f"rtsp://***@127.0.0.1:{flaky.port}/cam"
    time.sleep(1.0)  # the camera stays down a while; the other one keeps flowing
    assert b.snapshot().frames > steady_frames, "a dead camera blocked another one"
    assert b.snapshot().state == "live"

    flaky.start()  # same port
    returned = time.monotonic()
    wait_for("live again within 5 s of the server's return", lambda: a.snapshot().state == "live", 5.0)
    took = time.monotonic() - returned
    wait_for("frames after the restart", lambda: a.snapshot().frames >= before + 5, 5)
    snap = a.snapshot()
    assert snap.reconnects >= 1 and snap.last_error

    got = seqs(redis_client, "flaky")
    numbers = [s for s, _ in got]
    assert numbers == sorted(set(numbers)), "sequence numbers must be strictly increasing across reconnects"
    assert numbers[-1] >= before + 4
    stamps = [t for _, t in got]
    assert stamps == sorted(stamps) and abs(stamps[-1] - time.time()) < 3, "capture time: wall clock at connect + PTS"

    assert_no_secret(redis_client, PASSWORD)
    assert PASSWORD not in caplog.text
    assert f"rtsp://***@127.0.0.1:{flaky.port}/cam" in caplog.text
    print(f"live again {took:.2f}s after the server returned")


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts connections and never says anything: a camera that delivers nothing."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    conns: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not done.is_set():
            with contextlib.suppress(OSError):
                conns.append(sock.accept()[0])

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield sock.getsockname()[1]
    done.set()
    t.join()
    for c in conns:
        c.close()
    sock.close()


def test_broken_sources_each_get_a_clear_state(
    service: IngestService,
    rtsp_server: RtspServer,
    silent_listener: int,
    tmp_path: Path,
    rtsp_clip: Path,
    redis_client: redis.Redis,
) -> None:
    truncated = tmp_path / "truncated.mp4"
    data = rtsp_clip.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("this is not a video\n" * 100)
    refused_port = socket.socket()
    refused_port.bind(("127.0.0.1", 0))
    port = refused_port.getsockname()[1]
    refused_port.close()

    cams = {
        "refused": (f"rtsp://viewer:{PASSWORD}@127.0.0.1:{port}/cam", "backing_off", "Connection refused"),
        "notfound": (rtsp_server.url("nope"), "failed", "no such stream path on the camera (404 Not Found)"),
        "badauth": (
            rtsp_server.url("cam", password="wrong-pw"),
            "failed",
            "rejected the credentials (401 Unauthorized)",
        ),
        "silent": (
            f"rtsp://viewer:{PASSWORD}@127.0.0.1:{silent_listener}/cam",
            "backing_off",
            "no answer within 2s (timed out)",
        ),
        "truncated": (str(truncated), "failed", "is not a readable video file"),
        "notvideo": (str(not_video), "failed", "is not a readable video file"),
        "missing": (str(tmp_path / "gone.mp4"), "backing_off", "does not exist"),
        "webcam": ("/dev/video63", "backing_off", "webcam /dev/video63 does not exist"),
        "good": (rtsp_server.url("cam2"), "live", ""),
    }
    service.apply([CameraConfig(name=n, url=u, fps=5, open_timeout=2, read_timeout=2) for n, (u, _, _) in cams.items()])

    def settled() -> bool:
        snaps = {s.name: s for s in service.statuses()}
        return all(snaps[n].state == want and msg in snaps[n].last_error for n, (_, want, msg) in cams.items())

    try:
        wait_for("every camera in its expected state", settled, 15)
    finally:
        for s in service.statuses():
            print(f"{s.name:10} {s.state:12} {s.last_error}")
    assert all(r.is_alive() for r in service.runners.values()), "a broken source killed its thread"
    service.tick()
    from fervid.cli.ingest import camera_rows

    rows = {r["camera"]: r for r in camera_rows(redis_client, Keys())}
    assert rows["notfound"]["state"] == "failed" and "404" in rows["notfound"]["last_error"]
    assert rows["good"]["state"] == "live" and int(rows["good"]["frames"]) > 0
    assert_no_secret(redis_client, PASSWORD)
    assert_no_secret(redis_client, "wrong-pw")


def test_slow_consumer_memory_flat_and_drops_exact(
    rtsp_server: RtspServer,
    redis_client: redis.Redis,
    settings: Settings,
) -> None:
    backlog = 6
    settings = settings.model_copy(update={"bus": settings.bus.model_copy(update={"frame_backlog": backlog})})
    runner = CameraRunner(CameraConfig(name="busy", url=rtsp_server.url("cam"), fps=None), redis_client, settings)
    stream = KEYS.frames("busy")
    delivered = 0
    lengths: list[int] = []
    runner.start()
    try:
        wait_for("first frame", lambda: runner.snapshot().frames > 0, 10)
        end = time.monotonic() + 3.0
        while time.monotonic() < end:  # a detector at ~5 frames/s against 30 frames/s of video
            resp = redis_client.xreadgroup(DETECTOR_GROUP, "slow", {stream: ">"}, count=1, block=100)
            for _, entries in resp or []:
                for entry_id, _ in entries:
                    redis_client.xack(stream, DETECTOR_GROUP, entry_id)
                    delivered += 1
            lengths.append(redis_client.xlen(stream))
            time.sleep(0.2)
    finally:
        runner.stop()
        runner.join(5)
    # Nothing is in flight now: every published frame was delivered, dropped, or is still waiting.
    stats = {
        k.decode(): int(v) for k, v in redis_client.hgetall("fervid:camera:busy:stats").items() if k != b"last_seq"
    }
    waiting = len(redis_client.xrange(stream, "-", "+"))
    snap = runner.snapshot()
    assert stats["published"] == snap.frames > 60
    assert stats["dropped"] == snap.drops > 0
    assert stats["published"] - delivered - waiting == stats["dropped"], (stats, delivered, waiting)
    assert max(lengths) <= backlog + 1, f"stream grew to {max(lengths)} entries"


def test_frozen_server_trips_the_read_timeout_then_recovers(
    service: IngestService,
    rtsp_server_factory: ServerFactory,
) -> None:
    """SIGSTOP: the TCP connection stays open but nothing arrives; the read timeout must notice."""
    import signal

    server = rtsp_server_factory(("cam",))
    service.apply([CameraConfig(name="frozen", url=server.url(), fps=5, open_timeout=2, read_timeout=1.5)])
    runner = service.runners["frozen"]
    wait_for("live", lambda: runner.snapshot().frames >= 2, 10)
    server.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for("the stall noticed", lambda: runner.snapshot().state != "live", 5)
        assert runner.snapshot().reconnects >= 1
    finally:
        server.proc.send_signal(signal.SIGCONT)
    frames = runner.snapshot().frames
    wait_for("frames again after the server thawed", lambda: runner.snapshot().frames > frames + 2, 12)


def test_fervid_demo_on_a_live_rtsp_camera_stops_after_seconds(rtsp_server: RtspServer, tmp_path: Path) -> None:
    """The whole pipeline on the real RTSP server: a live source runs until --seconds of video."""
    import subprocess
    import sys

    url = rtsp_server.url("cam")
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "from fervid.cli import main; main()",
            "demo",
            url,
            "--camera",
            "door",
            "--seconds",
            "2",
            "--fps",
            "5",
            "--data-dir",
            str(tmp_path / "d"),
            "-v",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "COLUMNS": "120"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    analysed = int(next(line for line in r.stdout.splitlines() if "frames analysed" in line).split("│")[2])
    assert 8 <= analysed <= 12, r.stdout  # 2 s at 5 fps
    assert PASSWORD not in r.stdout + r.stderr
    assert "rtsp://***@127.0.0.1" in r.stderr


def refused_port() -> int:
    """A local port nobody listens on: connections are refused, as to a camera that is switched off."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OpenCounter(threading.Thread):
    """Watches runners' full-open counters and records when each one went up."""

    def __init__(self, runners: dict[str, CameraRunner]) -> None:
        super().__init__(daemon=True)
        self.runners = runners
        self.times: dict[str, list[float]] = {name: [] for name in runners}
        self.done = threading.Event()

    def run(self) -> None:
        seen = dict.fromkeys(self.runners, 0)
        while not self.done.is_set():
            for name, runner in self.runners.items():
                opens = runner.snapshot().opens
                self.times[name] += [time.monotonic()] * (opens - seen[name])
                seen[name] = opens
            time.sleep(0.05)


def test_flapping_camera_is_live_within_2s_of_every_return_and_dead_ones_are_opened_gently(
    service: IngestService,
    rtsp_server_factory: ServerFactory,
    silent_listener: int,
) -> None:
    """20 outages of 1-2 s with 1-2 s of service between them: live again within 2 s of every return. Meanwhile
    a camera that is switched off (connections refused) is fully opened at most once per 30 s, and one that
    accepts connections but never answers, once it has failed for 30 s, too."""
    flap = rtsp_server_factory(("cam",))
    service.apply(
        [
            CameraConfig(name="flap", url=flap.url(), fps=5),
            CameraConfig(name="off", url=f"rtsp://127.0.0.1:{refused_port()}/cam", fps=5),
            CameraConfig(name="mute", url=f"rtsp://127.0.0.1:{silent_listener}/cam", fps=5, open_timeout=2),
        ]
    )
    runner = service.runners["flap"]
    opens = OpenCounter({n: service.runners[n] for n in ("off", "mute")})
    opens.start()
    started = time.monotonic()
    wait_for("live", lambda: runner.snapshot().frames >= 3, 15)
    rng = random.Random(3)
    returns = []
    try:
        for _ in range(20):
            flap.kill()
            time.sleep(rng.uniform(1.0, 2.0))
            frames = runner.snapshot().frames
            flap.start()  # same port; returns once it accepts connections
            back = time.monotonic()
            wait_for("a frame after the return", lambda f=frames: runner.snapshot().frames > f, 10)
            returns.append(time.monotonic() - back)
            time.sleep(rng.uniform(1.0, 2.0))
    finally:
        opens.done.set()
        opens.join()
        print("returns (s):", " ".join(f"{r:.2f}" for r in returns))
        print(
            "opens of the dead cameras (s after start):",
            {n: [round(t - started, 1) for t in ts] for n, ts in opens.times.items()},
        )
    assert len(returns) == 20 and max(returns) <= 2.0, returns
    elapsed = time.monotonic() - started
    off = opens.times["off"]
    assert off and all(b - a >= 29.5 for a, b in itertools.pairwise(off)), off
    assert len(off) <= 1 + elapsed / 30
    # The silent one backs off from 0.5 s while it has failed for less than 30 s; after that, once per 30 s.
    mute = [t - started for t in opens.times["mute"]]
    late = [(a, b) for a, b in itertools.pairwise(mute) if b > 35]
    assert late and all(b - a >= 29.5 for a, b in late), mute


def test_encode_once_server_loops_its_stored_h264_at_real_time(
    rtsp_server_factory: ServerFactory, rtsp_clip: Path, redis_client: redis.Redis, settings: Settings
) -> None:
    """bench/live.py's cameras: the loop encoded once, sent as stored H.264 — past the loop's end, at 30 frames/s."""
    import av

    server = rtsp_server_factory(mounts=("a", "b"), encode_once=True)
    with av.open(rtsp_clip) as clip:
        loop = clip.streams.video[0].frames
    runners = [
        CameraRunner(CameraConfig(name=m, url=server.url(m), fps=None), redis_client, settings) for m in ("a", "b")
    ]
    for r in runners:
        r.start()
    try:
        wait_for("both cameras past the loop's end", lambda: min(r.snapshot().frames for r in runners) > loop + 15, 20)
    finally:
        for r in runners:
            r.stop()
            r.join(5)
    for mount in ("a", "b"):
        frames = seqs(redis_client, mount)
        assert [s for s, _ in frames] == sorted({s for s, _ in frames}), "seq goes up, no repeats"
        (first_seq, first_ts), (last_seq, last_ts) = frames[0], frames[-1]
        rate = (last_seq - first_seq) / (last_ts - first_ts)
        assert 27 < rate < 33, f"{mount}: {rate:.1f} frames per second of capture time"
