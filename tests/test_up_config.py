"""`fervid up --config cameras.yaml` (the supervisor running `fervid ingest` from a cameras file, as compose's
ingest service does) on embedded Redis + real PostgreSQL, and SIGTERM to `fervid ingest` while it publishes.

SIGTERM within 10 s for the other stages: detect (holding a batch) and classify in test_services.py, store
(mid-run) in test_storage_worker.py, api in test_storage_api.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis as redislib
from test_services import FERVID, assert_every_face_once, sigterm_within, stored
from waiting import wait_for

from fervid.contracts import Keys

KEYS = Keys()  # the default namespace

pytestmark = pytest.mark.slow


def test_up_with_a_cameras_file_stores_every_face_once(
    redis_url: str, redis_client: redislib.Redis, pg_url: str, sample_clip: Any, tmp_path: Path
) -> None:
    clip, truth = sample_clip
    data = tmp_path / "data"
    config = tmp_path / "cameras.yaml"
    # A file camera: the same ingest service and code path as RTSP cameras, with a known number of frames.
    config.write_text(f"cameras:\n  - {{name: hall, url: '{clip}', fps: 5}}\n")
    cmd = [*FERVID, "up", "--config", str(config), "--redis", redis_url, "--db", pg_url, "--data-dir", str(data)]
    up = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    status_file = data / "up.json"
    try:
        wait_for(
            "ingest, detector, classifier and storage running",
            lambda: (
                status_file.exists()
                and sorted(json.loads(status_file.read_text())) == ["classifier-1", "detector-1", "ingest", "storage"]
            ),
            60,
            [up],
        )

        def published() -> int:
            return int(redis_client.hget(KEYS.camera("hall", "stats"), "published") or 0)

        def state() -> str:
            return (redis_client.hget(KEYS.camera("hall", "state"), "state") or b"").decode()

        wait_for("the file camera to reach its end", lambda: state() == "stopped" and published() > 0, 120, [up])
        n = published()
        assert n == 10  # 2 s at 5 frames/s
        wait_for("every frame stored", lambda: len(stored(pg_url, "hall")[0]) == n, 180, [up])
        output, _ = sigterm_within(up, 12)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    text = output.decode()
    assert up.returncode == 0, text
    status = json.loads(status_file.read_text())
    assert all(s["state"] == "stopped" and s["last_rc"] == 0 and s["restarts"] == 0 for s in status.values()), status
    assert_every_face_once(pg_url, "hall", n, len(truth.boxes[0]))


def test_ingest_exits_within_10s_of_sigterm_while_publishing(
    redis_url: str, redis_client: redislib.Redis, sample_clip: Any, tmp_path: Path
) -> None:
    clip, _ = sample_clip
    config = tmp_path / "cameras.yaml"
    config.write_text(f"cameras:\n  - {{name: loopy, url: '{clip}', loop: true}}\n")  # every frame, forever
    env = {**os.environ, "FERVID_BUS__FRAME_BACKLOG": "20"}  # no detector: the publisher soon waits for room
    proc = subprocess.Popen(
        [*FERVID, "ingest", "--config", str(config), "--redis", redis_url], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for("frames published", lambda: redis_client.xlen(KEYS.frames("loopy")) >= 5, 60, [proc])
        _, err = sigterm_within(proc, 10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    assert (redis_client.hget(KEYS.camera("loopy", "state"), "state") or b"").decode() == "stopped"


def test_the_drain_check_rides_out_redis_being_away(tmp_path: Path) -> None:
    """`fervid up --until-drained`'s check says "not yet" while Redis is down, instead of failing the run."""
    import signal
    import time
    from types import SimpleNamespace

    from redis_server import RedisServer

    from fervid.cli.up import _drain_check
    from fervid.settings import load_settings

    server = RedisServer(tmp_path / "redis").start()
    try:
        sup = SimpleNamespace(failed=lambda: [], oneshots_done=lambda: True, log_dir=tmp_path)
        drained = _drain_check(sup, server.url, load_settings(data_dir=tmp_path), time.monotonic() + 300)
        server.stop(signal.SIGKILL)
        assert drained() is False  # no exception: the supervisor goes on
        assert drained() is False
        server.start()
        wait_for("drained once Redis is back", drained, 30)
    finally:
        server.close()
