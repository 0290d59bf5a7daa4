"""Throughput and recall of the face-detector backends on the same generated frames.

    uv run python bench/detector_backends.py [--frames 32] [--clip 48]

Frames: 640x480, the skimage astronaut face pasted at known places/scales/flips on plain and noisy backgrounds
(ground truth known). Throughput = batch / median time of one detect call (after two warm-up calls), at least 3 calls per batch size.
Recall = ground-truth faces matched at IoU >= 0.5 on a generated clip; FP = unmatched detections.
mtcnn is facenet_pytorch.MTCNN(keep_all=True) (skipped if not importable); haar loops frame by frame.
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

from detector.base import Detection  # noqa: E402
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


class MTCNNAdapter:
    """facenet_pytorch.MTCNN(keep_all=True) behind the FaceDetector interface (bench only; the project backend is
    detector.mtcnn, written on main). Frames in one call must share a size for MTCNN's batch mode."""

    name = "mtcnn"

    def __init__(self) -> None:
        from facenet_pytorch import MTCNN

        self.m = MTCNN(keep_all=True, device="cuda" if torch.cuda.is_available() else "cpu")

    def detect(self, images):
        rgb = np.stack([im[:, :, ::-1] for im in images])
        boxes, probs = self.m.detect(rgb)
        out = []
        for bs, ps, im in zip(boxes, probs, images):
            dets = []
            if bs is not None:
                h, w = im.shape[:2]
                for b, p in zip(bs, ps):
                    x1, y1, x2, y2 = np.clip(b, 0, [w, h, w, h])
                    if x2 > x1 and y2 > y1:
                        dets.append(Detection(float(x1), float(y1), float(x2), float(y2), float(min(max(p, 0), 1))))
            out.append(sorted(dets, key=lambda d: -d.score))
        return out


def backends():
    from detector.registry import create_detector

    out = [("retinaface mnet0.25", lambda: create_detector("retinaface"))]
    try:
        import facenet_pytorch  # noqa: F401

        out.append(("mtcnn (facenet-pytorch)", MTCNNAdapter))
    except ImportError:
        print("mtcnn: facenet_pytorch not importable, skipped")
    out.append(("haar (OpenCV)", lambda: create_detector("haar")))
    return out


def fps(det, frames, batch: int, min_calls: int = 3) -> float:
    """frames/s from the median time of one `detect` call (robust to other processes sharing the CPU)."""
    for _ in range(2):
        det.detect(frames[:batch])  # warm-up (kernel selection, prior cache)
    times = []
    i = 0
    while len(times) < max(min_calls, len(frames) // batch):
        chunk = [frames[(i + k) % len(frames)] for k in range(batch)]
        t0 = time.perf_counter()
        det.detect(chunk)
        times.append(time.perf_counter() - t0)
        i += batch
    return batch / float(np.median(times))


def recall(det, clip) -> tuple[float, int]:
    found = total = fp = 0
    for i in range(0, len(clip), 8):
        chunk = clip[i : i + 8]
        for frame, dets in zip(chunk, det.detect([f.image for f in chunk])):
            k, _ = match(frame.boxes, dets)
            found += k
            total += len(frame.boxes)
            fp += len(dets) - k
    return found / total, fp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--clip", type=int, default=48)
    args = ap.parse_args()
    clip = generated_clip(args.clip)
    frames = [f.image for f in generated_clip(args.frames, seed=1)]
    ngt = sum(len(f.boxes) for f in clip)
    dev = "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    print(f"device {dev}, torch {torch.__version__} threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}")
    print(f"load average before start: {os.getloadavg()[0]:.2f} (other processes share these cores)")
    print(f"frames/s at 640x480 (median per-call time, {len(frames)} distinct frames); recall@IoU0.5 on a {len(clip)}-frame clip with {ngt} faces\n")
    header = f"| {'backend':<24} | " + " | ".join(f"b={b:<3}" for b in BATCHES) + " | recall | FP |"
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    for label, make in backends():
        det = make()
        speeds = [fps(det, frames, b) for b in BATCHES]
        r, fp = recall(det, clip)
        print(f"| {label:<24} | " + " | ".join(f"{s:5.1f}" for s in speeds) + f" | {r:6.3f} | {fp:2d} |")


if __name__ == "__main__":
    main()
