"""Many cameras in one process: reload semantics, looping files, and `fervid ingest` / `fervid cameras` as
real subprocesses (SIGHUP reload, SIGTERM stop)."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from rtsp_fixtures import RtspServer
from waiting import wait_for

from fervid.bus import iter_entries
from fervid.contracts import FrameMsg, Keys
from fervid.settings import Settings
from ingest.cameras import CameraConfig
from ingest.service import IngestService

KEYS = Keys()  # the default namespace


def test_reload_keeps_unchanged_restarts_changed_stops_removed(
    redis_client: redis.Redis, settings: Settings, rtsp_clip: Path
) -> None:
    svc = IngestService(redis_client, settings)
    try:
        a = CameraConfig(name="a", url=str(rtsp_clip), loop=True, fps=5)
        b = CameraConfig(name="b", url=str(rtsp_clip), loop=True, fps=5)
        c = CameraConfig(name="c", url=str(rtsp_clip), loop=True, fps=5)
        svc.apply([a, b, c])
        ra, rb, rc = (svc.runners[n] for n in "abc")
        changes = svc.apply(
            [a, b.model_copy(update={"fps": 2.0}), CameraConfig(name="d", url=str(rtsp_clip), enabled=False)]
        )
        assert changes == {"started": [], "stopped": ["c"], "restarted": ["b"], "unchanged": ["a"]}
        assert svc.runners["a"] is ra and ra.is_alive()
        assert rc.stopping and "c" not in svc.runners and "d" not in svc.runners
        wait_for("old b to exit", lambda: not rb.is_alive(), 5)
        svc.tick()
        assert svc.runners["b"] is not rb and svc.runners["b"].config.fps == 2.0
        wait_for("new b publishing", lambda: svc.runners["b"].snapshot().frames > 0, 5)
    finally:
        svc.stop()
    # b's sequence continued across its restart: one writer at a time, seq strictly increasing.
    numbers = [FrameMsg.decode(f).frame.seq for _, f in iter_entries(redis_client, KEYS.frames("b"))]
    assert numbers == sorted(set(numbers))


def test_looping_file_waits_for_room_and_keeps_time_moving(
    redis_client: redis.Redis, settings: Settings, rtsp_clip: Path
) -> None:
    """Files favour completeness: with backlog 8 and nobody reading, ingest waits (no drop); PTS-derived
    capture times keep increasing across loops."""
    settings = settings.model_copy(update={"bus": settings.bus.model_copy(update={"frame_backlog": 8})})
    svc = IngestService(redis_client, settings)
    try:
        svc.apply([CameraConfig(name="loop", url=str(rtsp_clip), loop=True, fps=10)])  # 2 s clip: 20 frames per pass
        r = svc.runners["loop"]
        wait_for("backlog full", lambda: r.snapshot().frames >= 8, 5)
        time.sleep(0.5)
        assert r.snapshot().frames == 8 and r.snapshot().drops == 0 and r.snapshot().state == "live"
        # Drain as a detector would, and let it loop.
        for _ in range(40):
            for stream, entries in (
                redis_client.xreadgroup("detector", "t", {KEYS.frames("loop"): ">"}, count=10, block=200) or []
            ):
                redis_client.xack(stream, "detector", *[i for i, _ in entries])
            if r.snapshot().frames >= 45:
                break
        assert r.snapshot().frames >= 45
    finally:
        svc.stop()
    stamps = [FrameMsg.decode(f).frame.capture_ts for _, f in iter_entries(redis_client, KEYS.frames("loop"))]
    assert stamps == sorted(stamps)
    assert int(redis_client.hget(KEYS.camera("loop", "stats"), "dropped") or 0) == 0


def _fervid(*args: str) -> list[str]:
    return [sys.executable, "-c", "from fervid.cli import main; main()", *args]


def test_fervid_ingest_cli_sighup_reload_and_cameras_table(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, rtsp_server: RtspServer
) -> None:
    config = tmp_path / "cameras.yaml"
    config.write_text(
        "cameras:\n"
        f"  - {{name: front, url: 'rtsp://${{CAM_USER}}:${{CAM_PASS}}@127.0.0.1:{rtsp_server.port}/cam', fps: 5}}\n"
        "  - {name: gone, url: 'rtsp://127.0.0.1:1/nothing', fps: 5}\n"
    )
    env = {**os.environ, "CAM_USER": "viewer", "CAM_PASS": "s3cret-pw"}
    proc = subprocess.Popen(
        _fervid("ingest", "--config", str(config), "--redis", redis_url, "-v"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def state(name: str) -> str:
            return (redis_client.hget(KEYS.camera(name, "state"), "state") or b"").decode()

        wait_for(
            "front live, gone backing off", lambda: state("front") == "live" and state("gone") == "backing_off", 15
        )
        since = redis_client.hget(KEYS.camera("front", "state"), "since")
        config.write_text(
            config.read_text()
            .replace(
                "rtsp://127.0.0.1:1/nothing", f"rtsp://${{CAM_USER}}:${{CAM_PASS}}@127.0.0.1:{rtsp_server.port}/cam2"
            )
            .replace("name: gone", "name: added")
        )
        proc.send_signal(signal.SIGHUP)
        wait_for("reload applied", lambda: state("added") == "live" and state("gone") == "stopped", 15)
        assert redis_client.hget(KEYS.camera("front", "state"), "since") == since, "an unchanged camera was restarted"

        table = subprocess.run(
            _fervid("cameras", "--redis", redis_url),
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert table.returncode == 0, table.stderr
        for word in ("front", "added", "gone", "live", "stopped", "reconnects"):
            assert word in table.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err[-2000:]
    assert "s3cret-pw" not in err
    assert "reloaded" in err and "rtsp://***@127.0.0.1" in err
    assert state("front") == "stopped"


def test_cameras_without_redis_reads_the_embedded_redis_of_the_running_ingest(tmp_path: Path, rtsp_clip: Path) -> None:
    """`fervid ingest` without --redis runs an embedded Redis; `fervid cameras` on the same data dir reads that one
    (it starts none of its own). Once the ingest is gone, it says there is no embedded Redis to read."""
    data = tmp_path / "data"
    config = tmp_path / "cameras.yaml"
    config.write_text(f"cameras:\n  - {{name: lobby, url: '{rtsp_clip}', loop: true, fps: 5}}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERVID_")} | {"COLUMNS": "200"}

    def cameras() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            _fervid("cameras", "--data-dir", str(data)), capture_output=True, text=True, timeout=60, env=env
        )

    proc = subprocess.Popen(
        _fervid("ingest", "--config", str(config), "--data-dir", str(data)), env=env, stderr=subprocess.PIPE, text=True
    )
    try:

        def live() -> bool:
            table = cameras()
            return table.returncode == 0 and "lobby" in table.stdout and "live" in table.stdout

        wait_for("`fervid cameras` showing the ingest's camera live", live, 60, [proc])
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    gone = cameras()
    assert gone.returncode == 1 and "Traceback" not in gone.stderr
    assert f"no embedded Redis is running under {data}" in " ".join(gone.stderr.split())
    assert not (data / "redis.url").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b"cameras:\n  - {name: a, url: 'rtsp://u:${NOPE_PW}@h/x'}\n",
            "cameras.0.url: environment variable NOPE_PW is not set",
        ),
        (b"cameras:\n  - {name: caf\xe9, url: x.mp4}\n", "cameras.yaml:2:15: not UTF-8 text (byte 0xe9)"),
        (b"cameras:\n  - {name: a, url: 'rtsp://'}\n", "rtsp:// has no host"),
        (b"cameras:\n  - {name: '" + b"x" * 5000 + b"', url: x.mp4}\n", "(5002 characters) is invalid"),
    ],
    ids=["missing-env", "not-utf8", "no-host", "long-name"],
)
def test_fervid_ingest_bad_config_is_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    config = tmp_path / "cameras.yaml"
    config.write_bytes(content)
    r = subprocess.run(
        _fervid("ingest", "--config", str(config)),
        capture_output=True,
        text=True,
        timeout=60,
        env={**{k: v for k, v in os.environ.items() if k != "NOPE_PW"}, "COLUMNS": "1000"},
    )
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1 and len(r.stderr) < 1000


def test_camera_state_belongs_to_its_process_and_expires_with_it(
    redis_client: redis.Redis, settings: Settings, rtsp_clip: Path
) -> None:
    """A process that stops a camera another process has taken over (a rolling restart) does not overwrite the
    new owner's state with `stopped`; a camera whose process is gone shows as unknown."""
    from fervid.cli.ingest import camera_rows
    from ingest.camera import STATE_TTL_S, CameraRunner

    cfg = CameraConfig(name="door", url=str(rtsp_clip), loop=True, fps=5)
    old = CameraRunner(cfg, redis_client, settings, owner="old-host-1")
    new = CameraRunner(cfg, redis_client, settings, owner="new-host-2")
    key = KEYS.camera("door", "state")

    def state() -> tuple[str, str]:
        h = redis_client.hgetall(key)
        return h.get(b"state", b"").decode(), h.get(b"owner", b"").decode()

    old.publish_state()
    assert state() == ("connecting", "old-host-1")
    new.start()
    try:
        wait_for("the new owner live", lambda: state() == ("live", "new-host-2"), 30, [new])
        old.stop()
        old._set("stopped")  # what the old runner's thread writes as it ends
        assert state() == ("live", "new-host-2")
        assert 0 < redis_client.pttl(key) <= STATE_TTL_S * 1000
        (row,) = camera_rows(redis_client, KEYS)
        assert row["state"] == "live"
    finally:
        new.stop()
        new.join(10)
    assert not new.is_alive()
    assert state() == ("stopped", "new-host-2")  # its owner may say so
    # Its process gone, the state is not refreshed: once the TTL has passed the camera is unknown.
    (row,) = camera_rows(redis_client, KEYS, now=time.time() + STATE_TTL_S + 1)
    assert row["state"] == "unknown" and int(row["frames"]) > 0
    redis_client.delete(key)  # what the TTL does
    (row,) = camera_rows(redis_client, KEYS)
    assert row["state"] == "unknown" and row["age"] == "-" and int(row["frames"]) > 0


def test_a_file_read_again_after_a_failure_goes_on_where_it_was(
    redis_client: redis.Redis, settings: Settings, rtsp_clip: Path
) -> None:
    """Redis refusing writes (out of memory) mid-file fails the pass; the file is read again and publishes only
    what it had not published yet: each frame once, sequence numbers and capture times increasing."""
    settings = settings.model_copy(update={"bus": settings.bus.model_copy(update={"frame_backlog": 4})})
    svc = IngestService(redis_client, settings)
    stream = KEYS.frames("door")
    seen: list[tuple[int, float]] = []

    def consume() -> None:  # a detector at ~20 frames/s: ingest waits for room, mid-file for a while
        with contextlib.suppress(redis.ResponseError):  # before ingest has made the group
            for _, entries in redis_client.xreadgroup("detector", "t", {stream: ">"}, count=1, block=50) or []:
                for entry_id, fields in entries:
                    f = FrameMsg.decode(fields).frame
                    seen.append((f.seq, f.capture_ts))
                    redis_client.xack(stream, "detector", entry_id)
        time.sleep(0.05)

    try:
        svc.apply([CameraConfig(name="door", url=str(rtsp_clip), fps=10)])  # 2 s clip: 20 frames
        runner = svc.runners["door"]
        while len(seen) < 5:
            consume()
        redis_client.config_set("maxmemory", 1)  # with the default noeviction: every write is refused
        try:
            deadline = time.monotonic() + 10
            while runner.snapshot().reconnects < 1:  # consuming makes room: the next frame's write fails
                consume()
                assert time.monotonic() < deadline, "the pass did not fail"
        finally:
            redis_client.config_set("maxmemory", 0)
        deadline = time.monotonic() + 30
        while runner.is_alive() or len(seen) < 20:
            consume()
            assert time.monotonic() < deadline, "the file did not finish"
        for _ in range(10):
            consume()  # anything published twice would be here
    finally:
        svc.stop()
    assert runner.snapshot().reconnects >= 1 and runner.snapshot().state == "stopped"
    seqs, stamps = [s for s, _ in seen], [t for _, t in seen]
    assert seqs == list(range(20)), seqs
    assert [round(b - a, 3) for a, b in itertools.pairwise(stamps)] == [0.1] * 19  # no frame twice, none skipped


def test_ingest_files_sigterm_while_reading_is_a_stop_not_an_exit(
    redis_url: str, redis_client: redis.Redis, rtsp_clip: Path
) -> None:
    """SIGTERM while `fervid ingest-files` reads a file only asks it to stop: it stops its reader, says what it
    published and exits 0, as at the end of its files. An exit raised on the main thread meanwhile could abort the
    process ("FATAL: exception not rethrown", status -6) while FFmpeg decodes on the reader's thread. With backlog
    4 and nobody reading, the 60-frame clip never ends by itself: each try is surely mid-file."""
    # Once waiting for room mid-file; the other tries the moment the reading begins.
    for attempt in range(4):
        camera = f"stopped{attempt}"
        rc, text = _sigterm_ingest_files(redis_url, rtsp_clip, camera, redis_client if attempt == 0 else None)
        assert rc == 0, text
        assert "ingest-files: published" in text, text  # its normal end, not an exit at once
        assert int(redis_client.hget(KEYS.camera(camera, "stats"), "published") or 0) < 20


def _sigterm_ingest_files(redis_url: str, clip: Path, camera: str, full_backlog: redis.Redis | None) -> tuple[int, str]:
    """Run `fervid ingest-files` on `clip` with backlog 4; SIGTERM it once it logs that it is reading (and, given
    `full_backlog`, once the stream holds 4 frames). Returns its exit status and output."""
    env = {**os.environ, "FERVID_BUS__FRAME_BACKLOG": "4"}
    cmd = _fervid("ingest-files", str(clip), "--camera", camera, "--redis", redis_url)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        head = b""
        while b"reading" not in head:  # logged as it starts the file's reader
            line = proc.stdout.readline()
            assert line, head.decode()
            head += line
        if full_backlog is not None:
            stream = KEYS.frames(camera)
            wait_for("the backlog full", lambda: full_backlog.xlen(stream) >= 4, 30, [proc])
        proc.send_signal(signal.SIGTERM)
        text = (head + proc.communicate(timeout=30)[0]).decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, text
