"""End-to-end throughput on CPU (or GPU): decode alone, detector alone, classifier alone, full pipeline.

    uv run python bench/e2e.py [--seconds 6] [--detector retinaface]

Prints one table from one run; the ratio pipeline/detector is the figure of merit (goal >= 0.85): the
pipeline adds JPEG, Redis, classification and SQL around the detector, on the same cores.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from classifier.serving import load_classifier
from detector.crops import square_crop
from detector.registry import create_configured
from fervid.bus import EmbeddedRedis
from fervid.pipeline import run_pipeline
from fervid.sample import make_sample_clip
from fervid.settings import load_settings
from ingest.runner import SourceSpec
from ingest.source import decode, open_container


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="clip length (30 fps, 640x480, two faces)")
    parser.add_argument("--detector", default=None, help="detector backend (default: the settings' default)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="fervid-bench-"))
    clip = work / "clip.mp4"
    make_sample_clip(clip, seconds=args.seconds)
    settings = load_settings(data_dir=work / "data", detector__backend=args.detector)
    batch = settings.detector.batch_size

    t0 = time.perf_counter()
    with open_container(str(clip)) as c:
        frames = [f.image for f in decode(c)]
    decode_s = time.perf_counter() - t0
    n = len(frames)

    detector = create_configured(
        settings.detector.backend, device=settings.detector.device, min_face=settings.detector.min_face
    )
    detector.detect(frames[:batch])  # warm-up: first-call allocations are not throughput
    t0 = time.perf_counter()
    detections = []
    for i in range(0, n, batch):
        detections += detector.detect(frames[i : i + batch])
    detect_s = time.perf_counter() - t0

    crops = [
        square_crop(f, d, settings.detector.crop_size, settings.detector.crop_margin)
        for f, ds in zip(frames, detections)
        for d in ds
    ]
    classifier = load_classifier(settings.classifier.model, device=settings.classifier.device)
    classifier.predict(crops[:64])
    t0 = time.perf_counter()
    for i in range(0, len(crops), settings.classifier.batch_size):
        classifier.predict(crops[i : i + settings.classifier.batch_size])
    classify_s = time.perf_counter() - t0

    with EmbeddedRedis(work / "redis") as server:
        summary = run_pipeline([SourceSpec("bench", str(clip))], settings, server.url)
        pipeline_s = summary.seconds  # from the first frame published: model loading is not throughput
    assert summary.frames_stored == n, (summary.frames_stored, n)

    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    rows = [
        ("decode alone (PyAV)", n / decode_s, f"{n} frames"),
        (f"detector alone ({detector.name}, batch {batch})", n / detect_s, f"{len(crops)} faces"),
        (f"classifier alone ({classifier.model_id})", len(crops) / classify_s, "crops/s"),
        ("full pipeline (ingest→detector→classifier→storage)", n / pipeline_s, f"{summary.faces} rows"),
    ]
    print(f"\nfervid end-to-end benchmark: {args.seconds:.0f} s of 640x480 @30 fps, two real faces, device {device}\n")
    print(f"| {'stage':<55} | {'per s':>9} | note |")
    print(f"|{'-' * 57}|{'-' * 11}|------|")
    for name, rate, note in rows:
        print(f"| {name:<55} | {rate:9.1f} | {note} |")
    print(f"\nratio pipeline / detector alone: {(n / pipeline_s) / (n / detect_s):.2f}  (goal >= 0.85)")


if __name__ == "__main__":
    main()
