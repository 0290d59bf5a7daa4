"""Throughput and recall of the face-detector backends on the same generated frames.

    uv run python bench/detector_backends.py [--frames 32] [--clip 48] [--device cuda] [--sizes]

Frames: 640x480, the skimage astronaut face pasted at known places/scales/flips on plain and noisy backgrounds
(ground truth known). Throughput = batch / median time of one detect call (after two warm-up calls), at least 3
calls per batch size.
Recall = ground-truth faces matched at IoU >= 0.5 on a generated clip; FP = unmatched detections.
Backends as the pipeline builds them (detector.registry: mtcnn is facenet-pytorch's MTCNN, batched per frame
size, min_face 20); haar (CPU only) loops frame by frame.

--device cuda (or --sizes on CPU) adds frames/s at 640x480 and 1280x720, batch 1 vs 16, for RetinaFace
mobilenet0.25 (real weights) and ResNet50 (the real architecture with RANDOM weights: throughput only).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from synth import make_frame, match  # noqa: E402

BATCHES = (1, 4, 8, 16)


def generated_clip(n: int, seed: int = 0):
    """A 640x480 clip: one face drifting and zooming, a second face in every third frame."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        t = i / max(1, n - 1)
        scale = 0.5 + 1.0 * t
        x, y = int(20 + 300 * t), int(20 + 60 * np.sin(6 * t))
        place = [(x, max(0, y), scale, i % 2 == 1)]
        if i % 3 == 0:
            place.append((450, 280, 0.6, False))
        frames.append(make_frame(640, 480, "noisy" if i % 4 else "plain", place, seed=int(rng.integers(1 << 30))))
    return frames


def backends(device: str):
    """The project's backends as the pipeline builds them (detector.registry), mtcnn with its settings."""
    from detector.registry import create_configured

    out = [("retinaface mnet0.25", lambda: create_configured("retinaface", device=device))]
    out.append(("mtcnn (facenet-pytorch)", lambda: create_configured("mtcnn", device=device, min_face=20)))
    if device == "cpu":
        out.append(("haar (OpenCV)", lambda: create_configured("haar")))
    return out


def random_resnet50(device: str, max_size: int | None):
    """RetinaFace-ResNet50 with RANDOM weights: the real architecture, for throughput only (its boxes mean nothing)."""
    from support.weights import random_resnet50_weights

    from detector.retinaface import RetinaFaceDetector

    return RetinaFaceDetector("resnet50", weights=random_resnet50_weights(), device=device, max_size=max_size)


def sizes_table(device: str, calls: int) -> None:
    """frames/s at 640x480 and 1280x720 (network input at that size: max_size=None), batch 1 vs 16."""
    from detector.retinaface import RetinaFaceDetector

    models = [
        ("retinaface mnet0.25", lambda: RetinaFaceDetector("mobilenet0.25", device=device, max_size=None)),
        ("retinaface resnet50 (RANDOM weights, speed only)", lambda: random_resnet50(device, None)),
    ]
    print(f"\nframes/s on {device} at native input size (max_size=None), median of {calls} calls\n")
    print("| model | 640x480 b=1 | 640x480 b=16 | 1280x720 b=1 | 1280x720 b=16 |")
    print("|---|---:|---:|---:|---:|")
    frames = {
        size: [make_frame(*size, "noisy", [(60, 40, 1.2, False)], seed=i).image for i in range(16)]
        for size in ((640, 480), (1280, 720))
    }
    for label, make in models:
        det = make()
        cells = [
            fps(det, frames[size], b, min_calls=calls, sync=device == "cuda")
            for size in ((640, 480), (1280, 720))
            for b in (1, 16)
        ]
        print(f"| {label} | " + " | ".join(f"{c:.1f}" for c in cells) + " |", flush=True)


def fps(det, frames, batch: int, min_calls: int = 3, sync: bool = False) -> float:
    """frames/s from the median time of one `detect` call (robust to other processes sharing the CPU)."""
    for _ in range(2):
        det.detect(frames[:batch])  # warm-up (kernel selection, prior cache)
    times = []
    i = 0
    while len(times) < max(min_calls, len(frames) // batch):
        chunk = [frames[(i + k) % len(frames)] for k in range(batch)]
        t0 = time.perf_counter()
        det.detect(chunk)  # returns Python lists: the GPU work is done by then
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        i += batch
    return batch / float(np.median(times))


def recall(det, clip) -> tuple[float, int]:
    found = total = fp = 0
    for i in range(0, len(clip), 8):
        chunk = clip[i : i + 8]
        for frame, dets in zip(chunk, det.detect([f.image for f in chunk]), strict=True):
            k, _ = match(frame.boxes, dets)
            found += k
            total += len(frame.boxes)
            fp += len(dets) - k
    return found / total, fp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--clip", type=int, default=48)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda adds the 640x480/1280x720, batch 1 vs 16 table)")
    ap.add_argument("--sizes", action="store_true", help="print the size/batch table on CPU too (slow)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    clip = generated_clip(args.clip)
    frames = [f.image for f in generated_clip(args.frames, seed=1)]
    ngt = sum(len(f.boxes) for f in clip)
    dev = "cuda: " + torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({os.cpu_count()} cores)"
    print(
        f"device {dev}, torch {torch.__version__} threads {torch.get_num_threads()}, "
        f"{platform.processor() or platform.machine()}"
    )
    print(f"load average before start: {os.getloadavg()[0]:.2f} (other processes share these cores)")
    print(
        f"frames/s at 640x480 (median per-call time, {len(frames)} distinct frames); "
        f"recall@IoU0.5 on a {len(clip)}-frame clip with {ngt} faces\n"
    )
    header = f"| {'backend':<24} | " + " | ".join(f"b={b:<3}" for b in BATCHES) + " | recall | FP |"
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    for label, make in backends(args.device):
        det = make()
        speeds = [fps(det, frames, b) for b in BATCHES]
        r, fp = recall(det, clip)
        print(f"| {label:<24} | " + " | ".join(f"{s:5.1f}" for s in speeds) + f" | {r:6.3f} | {fp:2d} |", flush=True)
    if args.device == "cuda" or args.sizes:
        sizes_table(args.device, calls=10 if args.device == "cuda" else 2)


if __name__ == "__main__":
    main()
