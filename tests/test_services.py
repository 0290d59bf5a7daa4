"""The distributed shape, as separate OS processes on embedded Redis + SQLite:

* one process per stage (`fervid detect/classify/store`): SIGTERM while a detector holds a batch exits cleanly
  within 10 s, nothing is lost (a second detector picks up what the first returned), metrics are served;
* `fervid up` with two detector replicas, one SIGKILLed mid-run: every face of every frame stored exactly once.

Short clips (1-2 s sampled at 10-15 fps): MTCNN runs on CPU here.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis as redislib
from prometheus_client.parser import text_string_to_metric_families
from storage_data import stored
from waiting import wait_for

from fervid.contracts import DETECTOR_GROUP, Keys

KEYS = Keys()  # the default namespace

pytestmark = pytest.mark.slow

FERVID = [sys.executable, "-m", "fervid"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sigterm_within(proc: subprocess.Popen[Any], seconds: float) -> tuple[Any, Any]:
    """SIGTERM `proc` and return its (stdout, stderr); fails unless it exits within `seconds` (killed if not)."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        outputs = proc.communicate(timeout=seconds + 8)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert time.monotonic() - t0 < seconds, f"{proc.args} took {time.monotonic() - t0:.1f}s to exit after SIGTERM"
    return outputs


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def pending_by_consumer(client: redislib.Redis, stream: str) -> dict[str, int]:
    try:
        info = client.xpending(stream, DETECTOR_GROUP)
    except redislib.ResponseError:
        return {}
    return {c["name"].decode(): int(c["pending"]) for c in info.get("consumers") or []}


def assert_every_face_once(db: str, camera: str, published: int, faces_per_frame: int) -> None:
    frames, events = stored(db, camera)
    seqs = [s for s, _ in frames]
    assert seqs == list(range(published)), f"frames stored: {seqs}"
    assert [f for _, f in frames] == [faces_per_frame] * published  # both faces of the clip in every frame
    assert len(events) == len(set(events)) == published * faces_per_frame
    assert {(s, i) for s, i in events} == {(s, i) for s in range(published) for i in range(faces_per_frame)}


def test_stage_processes_sigterm_metrics(
    redis_url: str, redis_client: redislib.Redis, sample_clip: Any, tmp_path: Path
) -> None:
    from fervid.bus import Bus
    from fervid.settings import load_settings
    from ingest.runner import SourceSpec, run_source

    clip, truth = sample_clip
    db = f"sqlite:///{tmp_path / 'fervid.db'}"
    env = {
        **os.environ,
        "FERVID_REDIS_URL": redis_url,
        "FERVID_DB_URL": db,
        "FERVID_DATA_DIR": str(tmp_path),
        "FERVID_BUS__CLAIM_IDLE_MS": "1500",
        "FERVID_DETECTOR__BATCH_SIZE": "4",
        "FERVID_DETECTOR__MAX_WAIT_MS": "200",
        "FERVID_DETECTOR__BACKEND": "mtcnn",  # the slower backend: a batch is surely in flight when SIGTERM comes
    }
    ports = {name: free_port() for name in ("detect", "classify", "store", "detect2")}

    def start(name: str, cmd: str) -> subprocess.Popen[bytes]:
        with open(tmp_path / f"{name}.log", "wb") as log:  # the child keeps its own copy of the descriptor
            return subprocess.Popen(
                [*FERVID, cmd, "--metrics-port", str(ports[name])], env=env, stdout=log, stderr=subprocess.STDOUT
            )

    procs = {
        name: start(name, cmd) for name, cmd in (("detect", "detect"), ("classify", "classify"), ("store", "store"))
    }
    try:
        # /health answers at once; /ready only when Redis is reachable and the model is loaded.
        for name in procs:
            wait_for(
                f"{name} /health",
                lambda name=name: http_get(ports[name], "/health")[0] == 200,
                60,
                list(procs.values()),
            )
        for name in procs:
            wait_for(
                f"{name} /ready", lambda name=name: http_get(ports[name], "/ready")[0] == 200, 120, list(procs.values())
            )

        settings = load_settings(data_dir=tmp_path)
        counters = run_source(Bus(redis_client, "ingest"), SourceSpec("cam1", str(clip), fps=10, seconds=1.5), settings)
        published = counters.published
        assert published == 15

        # SIGTERM while the detector holds a batch: it finishes (or returns) the batch and exits 0 within 10 s.
        stream = KEYS.frames("cam1")
        det = procs["detect"]
        wait_for(
            "the detector to hold a batch", lambda: any(pending_by_consumer(redis_client, stream).values()), 60, [det]
        )
        t0 = time.monotonic()
        det.send_signal(signal.SIGTERM)
        assert det.wait(timeout=10) == 0
        assert time.monotonic() - t0 < 10
        mine = {c: n for c, n in pending_by_consumer(redis_client, stream).items() if f"-{det.pid}-" in c}
        returned = sum(mine.values())  # 0 when it finished its batch; otherwise reclaimed below

        # A second detector takes over the rest, including anything the first returned unacked.
        procs["detect2"] = start("detect2", "detect")
        alive = [p for n, p in procs.items() if n != "detect"]
        wait_for("every frame stored", lambda: len(stored(db, "cam1")[0]) == published, 150, alive)
        assert_every_face_once(db, "cam1", published, len(truth.boxes[0]))
        assert not any(n for c, n in pending_by_consumer(redis_client, stream).items() if f"-{det.pid}-" in c), returned

        # Metrics: parseable Prometheus text with the expected names.
        expected = {
            "detect2": {
                "fervid_stage_messages",
                "fervid_stage_batch_messages",
                "fervid_stage_handle_seconds",
                "fervid_camera_frames_per_second",
                "fervid_camera_frames",
                "fervid_camera_faces",
                "fervid_inference_seconds",
                "fervid_inference_batch_images",
            },
            "classify": {"fervid_stage_messages", "fervid_inference_seconds", "fervid_camera_faces"},
            "store": {"fervid_stage_messages", "fervid_stage_handle_seconds"},
        }
        # The bus's series come from one process only (storage), so a sum() over them counts each stream once.
        bus_metrics = {
            "fervid_bus_up",
            "fervid_stream_entries",
            "fervid_stream_lag_entries",
            "fervid_stream_pending_entries",
            "fervid_dead_letters",
            "fervid_camera_frames_published",
            "fervid_camera_frames_dropped",
        }
        for name, names in expected.items():
            status, text = http_get(ports[name], "/metrics")
            assert status == 200
            families = {f.name: f for f in text_string_to_metric_families(text)}
            missing = (names | {"fervid_ready"}) - set(families)
            assert not missing, f"{name}: missing {missing}"
            assert any(s.value > 0 for s in families["fervid_stage_messages"].samples if s.name.endswith("_total"))
            if name != "store":
                assert not bus_metrics & set(families), f"{name} exports bus series: only storage does"
                continue
            assert bus_metrics <= set(families), f"store: missing {bus_metrics - set(families)}"
            published_samples = {
                s.labels["camera"]: s.value for s in families["fervid_camera_frames_published"].samples
            }
            assert published_samples == {"cam1": published}
        _, text = http_get(ports["detect2"], "/metrics")
        families = {f.name: f for f in text_string_to_metric_families(text)}
        fps = [
            s
            for s in families["fervid_camera_frames_per_second"].samples
            if s.labels == {"camera": "cam1", "stage": "detector"}
        ]
        assert fps and fps[0].value > 0

        # Idle workers: SIGTERM → exit 0 within 10 s.
        for name in ("detect2", "classify", "store"):
            t0 = time.monotonic()
            procs[name].send_signal(signal.SIGTERM)
            assert procs[name].wait(timeout=10) == 0, (tmp_path / f"{name}.log").read_text()[-2000:]
            assert time.monotonic() - t0 < 10
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_up_two_detectors_one_sigkilled(
    backend: str,
    redis_url: str,
    redis_client: redislib.Redis,
    sample_clip: Any,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    clip, truth = sample_clip
    data = tmp_path / "data"
    db = f"sqlite:///{data / 'fervid.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    env = {
        **os.environ,
        "FERVID_BUS__CLAIM_IDLE_MS": "2000",
        "FERVID_DETECTOR__BATCH_SIZE": "2",
        "FERVID_DETECTOR__MAX_WAIT_MS": "100",
    }
    cmd = [*FERVID, "up", "--source", str(clip), "--camera", "cam2", "--fps", "15", "--detectors", "2"]
    cmd += ["--redis", redis_url, "--db", db, "--data-dir", str(data), "--until-drained", "--drain-timeout", "240"]
    up = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        status_file = data / "up.json"
        stream = KEYS.frames("cam2")

        def victim() -> tuple[str, int] | None:
            """Whichever replica holds frames first (the other may still be loading its model)."""
            if not status_file.exists():
                return None
            status = json.loads(status_file.read_text())
            held = pending_by_consumer(redis_client, stream)
            for name in ("detector-1", "detector-2"):
                pid = status[name]["pid"]
                if any(n for c, n in held.items() if f"-{pid}-" in c):
                    return name, pid
            return None

        killed, pid = wait_for("a detector to hold frames", victim, 150, [up])
        os.kill(pid, signal.SIGKILL)
        output, _ = up.communicate(timeout=240)
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            up.wait(timeout=20)
    text = output.decode()
    assert up.returncode == 0, text
    assert "SIGKILL" in text and "restarting" in text, text  # the supervisor saw the crash and restarted it
    status = json.loads(status_file.read_text())
    assert status[killed]["restarts"] >= 1
    assert all(s["last_rc"] == 0 for s in status.values()), status  # every worker stopped cleanly on SIGTERM

    published = int(redis_client.hget("fervid:camera:cam2:stats", "published"))
    assert published == 30
    assert_every_face_once(db, "cam2", published, len(truth.boxes[0]))
    # What the killed detector held was reclaimed (XAUTOCLAIM), not dead-lettered.
    assert not any(n for c, n in pending_by_consumer(redis_client, stream).items() if f"-{pid}-" in c)
    assert not redis_client.hgetall("fervid:dead:counts")


def test_up_stops_everything_on_sigterm(redis_url: str, sample_clip: Any, tmp_path: Path) -> None:
    """SIGTERM to `fervid up` (what Ctrl-C does too): every worker gets SIGTERM, all are gone within ~10 s."""
    clip, _ = sample_clip
    data = tmp_path / "data"
    cmd = [
        *FERVID,
        "up",
        "--source",
        str(clip),
        "--camera",
        "cam3",
        "--redis",
        redis_url,
        "--data-dir",
        str(data),
        "-v",
    ]
    up = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    status_file = data / "up.json"
    try:
        wait_for(
            "workers started", lambda: status_file.exists() and len(json.loads(status_file.read_text())) == 4, 60, [up]
        )
        time.sleep(3)
        pids = [s["pid"] for s in json.loads(status_file.read_text()).values() if s["state"] == "running"]
        output, _ = sigterm_within(up, 12)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert up.returncode == 0, output.decode()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert all(s["state"] in ("stopped", "done") for s in json.loads(status_file.read_text()).values())
