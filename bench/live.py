"""Live capacity and freshness: how many RTSP cameras one machine analyses with sub-second results.

    uv run python bench/live.py [--cameras 1 2 4 8] [--fps 5] [--warmup 20] [--window 30] [--mode up demo]
                                [--up-arg=--one-process] [--allow-load]

For each N: one real RTSP server (tests/rtsp_server.py: GStreamer, run under the system Python) serves N mounts
of a looping 640x480 clip with two real faces, encoded once at start-up and sent at 30 frames/s as a camera's own
encoder would (a live x264 per mount took ~12% of a core per camera here, which is the camera's work, not
fervid's); fervid analyses them at `--fps` each until stopped:

* ``up``: `fervid up --config cameras.yaml` (one process per stage, embedded Redis, SQLite), plus any --up-arg;
* ``demo``: `fervid demo URL1 ... URLN --fps F` (every stage in one process).

The SQLite file is polled every 100 ms for new frame rows; a row's latency is the poll time minus its capture
time (the wall clock at connect + PTS), so it includes up to 0.1 s of polling. After `--warmup` seconds from the
first stored row (start-up and its backlog are not steady state), a window of `--window` seconds of capture time
is measured: frames stored / expected (N x fps x window) and latency p50 / p95 / max of the rows captured in it,
and the CPU the whole process tree used (share of all cores); also the time from launch to the first stored row.
Goals on the 2-core development machine: 4 cameras at 5 fps with p95 < 1 s and >= 95% of frames stored; first
row <= 5 s after launch. `--up-arg=--one-process` runs `fervid up` with its stages in one process.

The load average is printed before and after each run; the script refuses to start above 1.0 per core (the
runs would measure the other processes) unless --allow-load, and then flags every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from support import LoadGuard, add_load_arguments, machine_line

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the RTSP server and its fixture class


@dataclass
class Result:
    mode: str
    cameras: int
    stored: int
    expected: int
    latencies: list[float]
    cpu_share: float
    load: float
    first_row_s: float  # launch -> first stored row

    @property
    def p95(self) -> float:
        lat = sorted(self.latencies)
        return lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else float("inf")

    @property
    def meets_goal(self) -> bool:
        return self.p95 < 1.0 and self.stored >= 0.95 * self.expected

    def row(self) -> str:
        lat = sorted(self.latencies)
        if lat:
            p50 = statistics.median(lat)
            figures = f"{p50:.2f} | {self.p95:.2f} | {lat[-1]:.2f}"
        else:
            figures = "- | - | -"
        share = self.stored / self.expected if self.expected else 0.0
        return (
            f"| {self.mode} | {self.cameras} | {self.first_row_s:.1f} | {self.stored}/{self.expected} ({share:.0%}) | "
            f"{figures} | {self.cpu_share:.0%} | {self.load:.2f} |"
        )


def fervid_command() -> list[str]:
    script = Path(sys.executable).parent / "fervid"
    return [str(script)] if script.exists() else [sys.executable, "-m", "fervid.cli"]


def launch(mode: str, urls: list[str], fps: float, data: Path, up_args: list[str]) -> subprocess.Popen[bytes]:
    data.mkdir(parents=True, exist_ok=True)
    if mode == "up":
        config = data / "cameras.yaml"
        lines = ["cameras:"] + [f"  - name: cam{i + 1}\n    url: {url}\n    fps: {fps:g}" for i, url in enumerate(urls)]
        config.write_text("\n".join(lines) + "\n")
        argv = [*fervid_command(), "up", "--config", str(config), "--data-dir", str(data), *up_args]
    else:
        names = [a for i in range(len(urls)) for a in ("--camera", f"cam{i + 1}")]
        argv = [*fervid_command(), "demo", *urls, *names, "--fps", f"{fps:g}", "--data-dir", str(data)]
    log = (data / "bench.log").open("wb")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ProcessLookupError):  # anything the command left behind in its process group
        os.killpg(proc.pid, signal.SIGKILL)


def tree_cpu(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def measure(
    mode: str, n: int, args: argparse.Namespace, server_urls: list[str], work: Path, guard: LoadGuard
) -> Result:
    data = work / f"{mode}-{n}"
    proc = launch(mode, server_urls[:n], args.fps, data, args.up_arg or [])
    ps = psutil.Process(proc.pid)
    db = data / "fervid.db"
    seen: dict[tuple[str, int], float] = {}  # (camera, seq) -> latency
    captured: dict[tuple[str, int], float] = {}  # (camera, seq) -> capture time
    last_id = 0
    first_row_at: float | None = None
    launched = time.time()
    window: tuple[float, float] | None = None
    cpu_mark: tuple[float, float] | None = None
    cpu_share = 0.0
    deadline = time.time() + args.startup_timeout
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{mode} with {n} cameras exited early ({proc.returncode}); see {data / 'bench.log'}")
            now = time.time()
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2) as conn:
                    rows = conn.execute(
                        "SELECT id, camera, seq, ts_ms FROM frames WHERE id > ? ORDER BY id", (last_id,)
                    ).fetchall()
            except sqlite3.Error:
                rows = []
            for row_id, camera, seq, ts_ms in rows:
                last_id = max(last_id, row_id)
                seen[(camera, seq)] = now - ts_ms / 1000
                captured[(camera, seq)] = ts_ms / 1000
            if rows and first_row_at is None:
                first_row_at = now
                window = (now + args.warmup, now + args.warmup + args.window)
                print(
                    f"  {mode} N={n}: first row {now - (deadline - args.startup_timeout):.1f} s after launch",
                    flush=True,
                )
            if first_row_at is None and now > deadline:
                raise SystemExit(f"{mode} with {n} cameras stored nothing in {args.startup_timeout:.0f} s; see {data}")
            if window is not None:
                if cpu_mark is None and now >= window[0]:
                    cpu_mark = (now, tree_cpu(ps))
                if now >= window[1] and cpu_mark is not None and cpu_share == 0.0:
                    cpu_share = (tree_cpu(ps) - cpu_mark[1]) / (now - cpu_mark[0]) / psutil.cpu_count()
                if now >= window[1] + args.grace:
                    break
            time.sleep(0.1)
    finally:
        stop(proc)
    assert window is not None and first_row_at is not None
    inside = [k for k, ts in captured.items() if window[0] <= ts < window[1]]
    return Result(
        mode,
        n,
        len(inside),
        round(n * args.fps * args.window),
        [seen[k] for k in inside],
        cpu_share,
        guard.check() * psutil.cpu_count(),
        first_row_at - launched,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 2, 4, 8], help="camera counts (default 1 2 4 8)")
    parser.add_argument("--fps", type=float, default=5.0, help="analysis rate per camera (default 5)")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds after the first row before the window")
    parser.add_argument("--window", type=float, default=30.0, help="seconds of capture time measured (default 30)")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds to wait for the window's last rows")
    parser.add_argument("--startup-timeout", type=float, default=120.0, help="fail when no row is stored by then")
    parser.add_argument("--mode", nargs="+", choices=["up", "demo"], default=["up", "demo"], help="what to run")
    parser.add_argument("--up-arg", action="append", help="extra argument for `fervid up` (repeatable)")
    add_load_arguments(parser)
    args = parser.parse_args()

    from rtsp_fixtures import RtspServer

    from fervid.sample import make_sample_clip

    work = Path(tempfile.mkdtemp(prefix="fervid-live-"))
    clip = work / "clip.mp4"
    make_sample_clip(clip, seconds=10.0)
    mounts = tuple(f"cam{i + 1}" for i in range(max(args.cameras)))
    print(f"fervid live: {machine_line()}; cameras 640x480 looping, {args.fps:g} fps analysis each")
    server = RtspServer(clip, mounts=mounts, encode_once=True).start()
    results: list[Result] = []
    try:
        urls = [server.url(m) for m in mounts]
        with LoadGuard(args.allow_load) as guard:
            for n in args.cameras:
                for mode in args.mode:
                    results.append(measure(mode, n, args, urls, work, guard))
                    print(f"  {results[-1].row()}", flush=True)
    finally:
        server.kill()
    print(
        f"\nsteady window {args.window:g} s after {args.warmup:g} s of warm-up; latency = capture -> stored row (s)\n"
    )
    print(
        "| mode | cameras | first row (s) | frames stored/expected | p50 | p95 | max | CPU (all cores) | load (1 min) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(r.row())
    for mode in args.mode:
        fit = [r.cameras for r in results if r.mode == mode and r.meets_goal]
        print(f"{mode}: cameras within p95 < 1 s and >= 95% stored: {max(fit) if fit else 'none'} (of {args.cameras})")
    if guard.loaded:
        print("** LOADED machine: these figures are not measurements **")


if __name__ == "__main__":
    main()
