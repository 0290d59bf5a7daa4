"""Where the in-process pipeline's time goes (`fervid demo`, fervid/pipeline.py), in figures that survive a loaded
machine: CPU seconds per thread group and per stage, Redis commands per frame, inference batch sizes.

    uv run python bench/profile_pipeline.py [--seconds 4] [--detector retinaface] [--cprofile DIR]

One run of `run_pipeline` on a generated 640x480 clip with two real faces (every frame), on an embedded Redis and
SQLite, with the stages wrapped so that each `handle` call's wall and thread CPU time are counted. Then the same
frames through the detector alone (decode + detect in batches of the configured size), for the CPU cost per
frame the pipeline is compared with. Printed:

* CPU seconds by thread group (from /proc: every native thread, torch's OpenMP pool included; the embedded Redis
  server is its own process), and per frame.
* per stage: batches, mean batch size, wall and CPU inside `handle`, and the stage's busy share of the run.
* Redis commands by name (the server's commandstats), per frame: round trips the stages make.
* pipeline CPU per frame / detector-alone CPU per frame: the overhead the stages add, which, unlike a wall-clock
  ratio, barely moves with the machine's load (spin-waiting threads do show up in it, as they should).

With --cprofile DIR, each stage thread is also profiled (cProfile, thread CPU clock) into DIR/<thread>.prof.
Load average is printed; CPU seconds are still meaningful on a loaded machine, wall seconds are not.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from support import load_report  # bench/support: run as `python bench/NAME.py`, bench/ is on the path

if TYPE_CHECKING:
    from fervid.settings import Settings
    from fervid.stages import StageEntry
    from fervid.worker import Stage


def thread_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of every native thread of this process, by thread id."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def group_of(name: str) -> str:
    for prefix, group in (
        ("detector", "detector stage"),
        ("classifier", "classifier stage"),
        ("storage", "storage stage"),
        ("jpeg-", "ingest JPEG encoders"),
        ("ingest-", "ingest decode"),
        ("camera-", "ingest decode"),
        ("MainThread", "main (progress, drain)"),
    ):
        if name.startswith(prefix):
            return group
    return name


class StageClock:
    """Wraps a stage's `handle`: calls, messages, wall and thread CPU seconds inside it."""

    def __init__(self, stage: Any, profile_dir: Path | None) -> None:
        self.stage = stage
        self.calls = 0
        self.messages = 0
        self.wall = 0.0
        self.cpu = 0.0
        self.profile: cProfile.Profile | None = None
        self.profile_dir = profile_dir
        inner = stage.handle

        def handle(batch: list[Any]) -> Any:
            if self.profile_dir is not None and self.profile is None:
                self.profile = cProfile.Profile(time.thread_time)
            w, c = time.perf_counter(), time.thread_time()
            try:
                if self.profile is not None:
                    return self.profile.runcall(inner, batch)
                return inner(batch)
            finally:
                self.wall += time.perf_counter() - w
                self.cpu += time.thread_time() - c
                self.calls += 1
                self.messages += len(batch)

        stage.handle = handle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="clip length (30 fps, 640x480, two faces)")
    parser.add_argument("--detector", default=None, help="detector backend (default: the settings' default)")
    parser.add_argument("--cprofile", type=Path, default=None, help="write one cProfile file per stage here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    load_report("before")

    import fervid.stages as stages_module
    from fervid.bus import EmbeddedRedis, connect
    from fervid.pipeline import run_pipeline
    from fervid.sample import make_sample_clip
    from fervid.settings import load_settings
    from ingest.runner import SourceSpec

    work = Path(tempfile.mkdtemp(prefix="fervid-profile-"))
    clip = work / "clip.mp4"
    make_sample_clip(clip, seconds=args.seconds)
    settings = load_settings(data_dir=work / "data", detector__backend=args.detector)

    clocks: dict[str, StageClock] = {}
    build = stages_module.StageEntry.build

    def timed_build(entry: StageEntry, s: Settings, bus: Any, should_stop: Callable[[], bool]) -> Stage[Any]:
        stage = build(entry, s, bus, should_stop)
        clocks[entry.name] = StageClock(stage, args.cprofile)
        return stage

    stages_module.StageEntry.build = timed_build  # type: ignore[method-assign,assignment]  # time every build

    server = EmbeddedRedis(work / "redis")
    redis_pid = getattr(server, "pid", None) or server._server.pid
    redis_proc = psutil.Process(redis_pid)
    try:
        client = connect(server.url)
        client.config_resetstat()
        cpu0 = thread_cpu()
        redis_cpu0 = sum(redis_proc.cpu_times()[:2])
        names: dict[int, str] = {}
        cpu1: dict[int, float] = {}
        sampling = threading.Event()

        def sample() -> None:
            # Threads come and go: note each native id's Python name and CPU while it lives (a thread that ends
            # leaves /proc, so its last 50 ms may be missed).
            while True:
                for t in threading.enumerate():
                    if t.native_id is not None:
                        names.setdefault(t.native_id, t.name)
                cpu1.update(thread_cpu())
                if sampling.wait(0.05):
                    return

        sampler = threading.Thread(target=sample, name="profiler", daemon=True)
        sampler.start()
        wall0 = time.perf_counter()
        summary = run_pipeline([SourceSpec("bench", str(clip))], settings, server.url)
        wall = time.perf_counter() - wall0
        sampling.set()
        sampler.join()
        redis_cpu = sum(redis_proc.cpu_times()[:2]) - redis_cpu0
        commands = {
            k.removeprefix("cmdstat_"): int(v["calls"])
            for k, v in client.info("commandstats").items()
            if isinstance(v, dict)
        }
    finally:
        server.close()
    n = summary.frames_stored

    by_group: Counter[str] = Counter()
    for tid, seconds in cpu1.items():
        used = seconds - cpu0.get(tid, 0.0)
        name = names.get(tid)
        if used <= 0 or name == "profiler":
            continue
        by_group[group_of(name) if name else "torch/OpenMP pool and native threads"] += used
    by_group["embedded Redis server (own process)"] += redis_cpu
    total = sum(by_group.values())

    print(f"\npipeline: {n} frames, {summary.faces} faces, wall {wall:.1f} s (load-dependent), {total:.1f} CPU s\n")
    print(f"| {'thread group':<40} | {'CPU s':>7} | {'ms/frame':>8} | {'share':>6} |")
    print(f"|{'-' * 42}|{'-' * 9}|{'-' * 10}|{'-' * 8}|")
    for group, seconds in by_group.most_common():
        print(f"| {group:<40} | {seconds:7.2f} | {1000 * seconds / n:8.1f} | {seconds / total:6.1%} |")

    print(f"\n| {'stage':<10} | {'batches':>7} | {'mean batch':>10} | {'handle wall s':>13} | {'handle CPU s':>12} |")
    print(f"|{'-' * 12}|{'-' * 9}|{'-' * 12}|{'-' * 15}|{'-' * 14}|")
    for name, c in clocks.items():
        mean = c.messages / c.calls if c.calls else 0.0
        print(f"| {name:<10} | {c.calls:7d} | {mean:10.1f} | {c.wall:13.2f} | {c.cpu:12.2f} |")
        if c.profile is not None and args.cprofile is not None:
            args.cprofile.mkdir(parents=True, exist_ok=True)
            c.profile.dump_stats(str(args.cprofile / f"{name}.prof"))

    print(f"\n| {'Redis command':<20} | {'calls':>7} | {'per frame':>9} |")
    print(f"|{'-' * 22}|{'-' * 9}|{'-' * 11}|")
    for name, calls in sorted(commands.items(), key=lambda kv: -kv[1]):
        print(f"| {name:<20} | {calls:7d} | {calls / n:9.2f} |")
    print(f"| {'all':<20} | {sum(commands.values()):7d} | {sum(commands.values()) / n:9.2f} |")

    detector_cpu = detector_alone_cpu(clip, settings)
    print(
        f"\nCPU per frame: pipeline {1000 * total / n:.1f} ms, detector alone (decode + detect, batch "
        f"{settings.detector.batch_size}) {1000 * detector_cpu / n:.1f} ms; ratio {detector_cpu / total:.2f} "
        "(the wall-clock ratio on an idle machine tends to this when the cores are kept busy)"
    )
    load_report("after")


def detector_alone_cpu(clip: Path, settings: Any) -> float:
    """CPU seconds (whole process, all threads) to decode `clip` and detect faces in batches."""
    from detector.registry import create_configured
    from ingest.source import decode, open_container

    detector = create_configured(
        settings.detector.backend, device=settings.detector.device, min_face=settings.detector.min_face
    )
    batch = settings.detector.batch_size
    before = sum(thread_cpu().values())
    with open_container(str(clip)) as c:
        chunk = []
        for f in decode(c):
            chunk.append(f.image)
            if len(chunk) == batch:
                detector.detect(chunk)
                chunk = []
        if chunk:
            detector.detect(chunk)
    return sum(thread_cpu().values()) - before


if __name__ == "__main__":
    main()
