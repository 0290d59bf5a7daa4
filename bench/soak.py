"""Soak: looping RTSP cameras through `fervid up` for N minutes; does any process's memory grow?

    uv run python bench/soak.py                    # 2 cameras, 10 minutes
    uv run python bench/soak.py --minutes 60       # the long soak
    uv run python bench/soak.py --minutes 1        # a quick check that it all works

A real RTSP server (tests/rtsp_server.py: Debian's GStreamer RTSP server, looping a generated clip with two real
faces) serves `--cameras` mounts; `fervid up --config cameras.yaml` runs ingest, detector, classifier and storage
as processes on an embedded Redis and SQLite (or `--redis URL`). Every `--interval` seconds the RSS of every
process (the supervisor, each worker, the embedded redis-server, the RTSP server) and Redis's ``used_memory`` are
sampled. At the end one table: per process, RSS at the end of the warm-up, min, max and last after it, and
whether every sample after the warm-up stayed within +-5% of their median; plus frames published, dropped and
stored. `--csv PATH` keeps every sample.

Needs the RTSP test server's Debian packages (see tests/rtsp_server.py). The README's Benchmarks section has the
last 10-minute run on the quiet development machine.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from rtsp_fixtures import RtspServer  # noqa: E402

from fervid.contracts import Keys  # noqa: E402
from fervid.sample import make_sample_clip  # noqa: E402

MB = 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--minutes", type=float, default=10.0, help="how long to run (default 10; 60 for the long soak)"
    )
    parser.add_argument("--cameras", type=int, default=2, help="RTSP cameras (mounts of one server)")
    parser.add_argument("--fps", type=float, default=5.0, help="analysis rate per camera")
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, help="seconds before RSS is judged (default: a fifth of the run)")
    parser.add_argument("--redis", help="an existing Redis instead of the embedded one")
    parser.add_argument("--csv", type=Path, help="write every sample here")
    args = parser.parse_args()
    duration = args.minutes * 60
    warmup = args.warmup if args.warmup is not None else max(args.interval, duration / 5)

    with tempfile.TemporaryDirectory(prefix="fervid-soak-") as tmp_s:
        tmp = Path(tmp_s)
        clip = tmp / "faces.mp4"
        make_sample_clip(clip, seconds=4.0, fps=15)
        mounts = tuple(f"cam{i}" for i in range(args.cameras))
        rtsp = RtspServer(clip, mounts, encode_once=True).start()  # the cameras encode, not this machine
        config = tmp / "cameras.yaml"
        config.write_text(
            "cameras:\n"
            + "".join(f"  - {{name: soak{i}, url: '{rtsp.url(m)}', fps: {args.fps}}}\n" for i, m in enumerate(mounts))
        )
        data = tmp / "data"
        cmd = [sys.executable, "-m", "fervid", "up", "--config", str(config), "--data-dir", str(data)]
        if args.redis:
            cmd += ["--redis", args.redis]
        env = {**os.environ, "COLUMNS": "1000"}  # one line per console message, to read the Redis URL from
        log = open(tmp / "up.log", "w+b")  # noqa: SIM115 - closed below
        up = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        samples: list[dict[str, float]] = []
        restarts: dict[str, int] = {}
        try:
            redis_url = args.redis or wait_for_redis_url(tmp / "up.log", up)
            client = redis.Redis.from_url(redis_url)
            started = time.monotonic()
            print(
                f"soak: {args.cameras} RTSP camera(s) at {args.fps} fps through `fervid up` for {args.minutes} min; "
                f"warm-up {warmup:.0f}s, a sample every {args.interval:.0f}s",
                flush=True,
            )
            while time.monotonic() - started < duration:
                if up.poll() is not None:
                    raise SystemExit(f"fervid up exited with {up.returncode}: see {tmp / 'up.log'}")
                sample = {"t": time.monotonic() - started, **rss_by_process(up, data, rtsp, restarts)}
                with contextlib.suppress(redis.RedisError):  # a sample without it
                    sample["redis used_memory"] = int(client.info("memory")["used_memory"]) / MB
                samples.append(sample)
                print(
                    f"  t={sample['t']:5.0f}s  " + "  ".join(f"{k} {v:.0f}" for k, v in sample.items() if k != "t"),
                    flush=True,
                )
                time.sleep(max(0.0, args.interval - (time.monotonic() - started - sample["t"])))
            totals = progress(client, data, args.cameras)
        finally:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(30)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait()
            log.close()
            rtsp.kill()
    report(samples, warmup, restarts, totals)
    if args.csv:
        write_csv(args.csv, samples)


def wait_for_redis_url(log: Path, up: subprocess.Popen[bytes], timeout: float = 60) -> str:
    """The embedded Redis's URL, from `fervid up`'s first line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(r"\[up\] redis (\S+)", log.read_text(errors="replace"))
        if match:
            return match.group(1)
        if up.poll() is not None:
            raise SystemExit(f"fervid up exited with {up.returncode}:\n{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)
    raise SystemExit("fervid up did not report its Redis")


def rss_by_process(
    up: subprocess.Popen[bytes], data: Path, rtsp: RtspServer, restarts: dict[str, int]
) -> dict[str, float]:
    """RSS in MB of the supervisor, each worker (by name, from up.json), redis-server and the RTSP server."""
    procs = {"supervisor": up.pid, "rtsp server": rtsp.proc.pid if rtsp.proc else None}
    try:
        status = json.loads((data / "up.json").read_text())
    except (OSError, ValueError):
        status = {}
    for name, s in status.items():
        procs[name] = s.get("pid")
        restarts[name] = s.get("restarts", 0)
    try:
        for child in psutil.Process(up.pid).children():
            if "redis-server" in child.name():
                procs["redis-server"] = child.pid
    except psutil.Error:
        pass
    out: dict[str, float] = {}
    for name, pid in procs.items():
        try:
            out[name] = psutil.Process(pid).memory_info().rss / MB if pid else float("nan")
        except psutil.Error:
            out[name] = float("nan")
    return out


def progress(client: redis.Redis, data: Path, cameras: int) -> dict[str, int]:
    keys = Keys()
    published = dropped = 0
    for i in range(cameras):
        stats = client.hgetall(keys.camera(f"soak{i}", "stats"))
        published += int(stats.get(b"published", 0))
        dropped += int(stats.get(b"dropped", 0))
    import sqlite3

    with sqlite3.connect(data / "fervid.db") as conn:
        stored = conn.execute("select count(*) from frames").fetchone()[0]
    return {"published": published, "dropped": dropped, "stored": stored}


def report(samples: list[dict[str, float]], warmup: float, restarts: dict[str, int], totals: dict[str, int]) -> None:
    after = [s for s in samples if s["t"] >= warmup]
    names = list(dict.fromkeys(k for s in samples for k in s if k != "t"))  # workers appear after the first sample
    print()
    print(f"{'process':<18} {'MB at warm-up':>13} {'min':>7} {'max':>7} {'last':>7} {'drift':>7}  within +-5%")
    for name in names:
        values = [s[name] for s in after if name in s and s[name] == s[name]]  # NaN: not running then
        if not values:
            print(f"{name:<18} {'-':>13}  (no sample after the warm-up)")
            continue
        median = statistics.median(values)
        within = all(abs(v - median) <= 0.05 * median for v in values)
        note = f" (restarted {restarts[name]}x)" if restarts.get(name) else ""
        print(
            f"{name:<18} {values[0]:13.1f} {min(values):7.1f} {max(values):7.1f} {values[-1]:7.1f} "
            f"{(values[-1] - values[0]) / values[0] * 100:+6.1f}%  {'yes' if within else 'NO'}{note}"
        )
    print(
        f"\nsamples after the warm-up: {len(after)} of {len(samples)}; frames published {totals['published']}, "
        f"dropped {totals['dropped']}, stored {totals['stored']}"
    )


def write_csv(path: Path, samples: list[dict[str, float]]) -> None:
    names = sorted({k for s in samples for k in s})
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows(samples)


if __name__ == "__main__":
    main()
