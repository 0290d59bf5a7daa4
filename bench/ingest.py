"""Ingest benchmark: one run, one table.

1. Files: ingest throughput (PyAV decode + timestamp sampling + BGR + resize + JPEG + XADD through the real
   FramePublisher on embedded Redis) for 640x480 and 1280x720 H.264 clips, as a ratio to PyAV decode alone
   measured in the same run. Ingest is measured at every frame (worst case) and at 5 fps analysis.
2. Live: N simultaneous 640x480 RTSP cameras (N clients of one mount of the real GStreamer RTSP server,
   tests/rtsp_server.py under /usr/bin/python3) at 5 fps analysis for ~20 s in one IngestService, with a
   consumer acking frames as a detector would; CPU of the ingest process (psutil), published and dropped.

    uv run python bench/ingest.py [--seconds 20] [--cameras 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import psutil
import redis

# This file is named like the `ingest` package: keep its own folder off the path, and add tests/ for the server.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent / "tests"))

from fervid.bus import Bus, EmbeddedRedis  # noqa: E402
from fervid.contracts import DETECTOR_GROUP, frames_stream  # noqa: E402
from fervid.sample import render_frames, write_video  # noqa: E402
from fervid.settings import load_settings  # noqa: E402
from ingest.cameras import CameraConfig  # noqa: E402
from ingest.runner import SourceSpec, run_source  # noqa: E402
from ingest.service import IngestService  # noqa: E402


def make_clip(path: Path, width: int, height: int, seconds: float = 4.0, fps: int = 30) -> Path:
    frames, _ = render_frames(seconds, fps, width, height, faces=2)
    return write_video(path, frames, fps, gop=15)


def decode_only(path: Path) -> tuple[int, float]:
    t = time.perf_counter()
    n = 0
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for _ in c.decode(s):
            n += 1
    return n, time.perf_counter() - t


def ingest_file(client: redis.Redis, settings, path: Path, fps: float | None, name: str) -> tuple[int, int, float]:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    counters = run_source(Bus(client, "ingest"), SourceSpec(name, str(path), fps=fps), settings)
    return counters.decoded, counters.published, time.perf_counter() - t


def drain(client: redis.Redis, streams: list[str], stop: threading.Event) -> None:
    while not stop.is_set():
        resp = client.xreadgroup(DETECTOR_GROUP, "bench", {s: ">" for s in streams}, count=64, block=100)
        for stream, entries in resp or []:
            client.xack(stream, DETECTOR_GROUP, *[i for i, _ in entries])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--cameras", type=int, default=8)
    ap.add_argument("--clip-seconds", type=float, default=8.0)
    args = ap.parse_args()
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp_s, EmbeddedRedis(Path(tmp_s) / "redis") as server:
        tmp = Path(tmp_s)
        client = redis.Redis.from_url(server.url)
        # Nobody consumes during the file runs: a backlog that never fills measures ingest, not waiting.
        settings = load_settings(data_dir=tmp / "data", bus__frame_backlog=1_000_000)
        for w, h in ((640, 480), (1280, 720)):
            clip = make_clip(tmp / f"clip{h}.mp4", w, h, seconds=args.clip_seconds)
            decode_only(clip)  # warm-up
            # Best of 3 everywhere: the machine is shared, and the best run is the least disturbed one.
            n, dt = min((decode_only(clip) for _ in range(3)), key=lambda r: r[1])
            dec_fps = n / dt
            rows.append((f"{w}x{h} PyAV decode alone ({n} frames)", f"{dec_fps:7.0f} frames/s"))
            for fps, label in ((None, "every frame"), (5.0, "5 fps analysis")):
                runs = []
                for _ in range(3):
                    client.flushdb()
                    runs.append(ingest_file(client, settings, clip, fps, f"b{h}"))
                decoded, published, it = min(runs, key=lambda r: r[2])
                ratio = (decoded / it) / dec_fps
                rows.append(
                    (f"{w}x{h} ingest, {label}", f"{decoded / it:7.0f} frames/s  = {ratio:.2f}x decode  ({published} JPEGs published)")
                )

        # -- live RTSP cameras -------------------------------------------------------------------------
        from rtsp_fixtures import RtspServer  # tests/: the same server the tests use

        client.flushdb()
        clip = make_clip(tmp / "rtsp480.mp4", 640, 480, seconds=2.0)  # looped by the server
        rtsp = RtspServer(clip, ("cam",)).start()
        settings = load_settings(data_dir=tmp / "data")
        svc = IngestService(client, settings)
        names = [f"cam{i}" for i in range(args.cameras)]
        streams = [frames_stream(n) for n in names]
        for s in streams:
            Bus(client, "x").ensure_group(s, DETECTOR_GROUP)
        stop = threading.Event()
        consumer = threading.Thread(target=drain, args=(client, streams, stop), daemon=True)
        consumer.start()
        svc.apply([CameraConfig(name=n, url=rtsp.url("cam"), fps=5) for n in names])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(s.state == "live" for s in svc.statuses()):
            time.sleep(0.1)
        me = psutil.Process()
        srv = psutil.Process(rtsp.proc.pid)  # type: ignore[union-attr]
        frames0 = {s.name: s.frames for s in svc.statuses()}
        c0, s0, w0 = me.cpu_times(), srv.cpu_times(), time.monotonic()
        psutil.cpu_percent(None)
        time.sleep(args.seconds)
        c1, s1, wall = me.cpu_times(), srv.cpu_times(), time.monotonic() - w0
        sys_pct = psutil.cpu_percent(None)
        statuses = svc.statuses()
        svc.stop()
        stop.set()
        consumer.join(2)
        rtsp.kill()
        published = sum(s.frames - frames0[s.name] for s in statuses)
        drops = sum(s.drops for s in statuses)
        stats_drops = sum(int(client.hget(f"fervid:camera:{n}:stats", "dropped") or 0) for n in names)
        ingest_cpu = (c1.user + c1.system - c0.user - c0.system) / wall * 100
        server_cpu = (s1.user + s1.system - s0.user - s0.system) / wall * 100
        expected = args.cameras * 5 * wall
        rows.append((f"{args.cameras} RTSP cams 640x480 @5 fps, {wall:.0f} s", f"{published} frames published ({published / expected:.0%} of {expected:.0f} expected)"))
        rows.append(("  per camera", f"{published / wall / args.cameras:.2f} frames/s; states: {sorted({s.state for s in statuses})}; reconnects {sum(s.reconnects for s in statuses)}"))
        rows.append(("  drops (runner / Redis stats)", f"{drops} / {stats_drops}"))
        rows.append(("  CPU: ingest process (decode 30 fps x N)", f"{ingest_cpu:.0f}% of one core ({psutil.cpu_count()} cores)"))
        rows.append(("  CPU: RTSP server (1 shared x264 encode)", f"{server_cpu:.0f}% of one core"))
        rows.append(("  CPU: whole machine (shared)", f"{sys_pct:.0f}% of all cores"))

    width = max(len(a) for a, _ in rows)
    print(f"{'measure':<{width}}  result")
    print(f"{'-' * width}  {'-' * 60}")
    for a, b in rows:
        print(f"{a:<{width}}  {b}")


if __name__ == "__main__":
    main()
