"""torch.compile vs eager for the classifier, in one run: the raw forward and the whole worker, both ways.

For each model: build it eager and compiled (static batch sizes, compiled at load: the load time is printed),
then alternate eager and compiled passes ``--repeats`` times, each pass a raw batched forward and a worker
pass through the real bus (see ``classifier_serving.py``, whose passes these are). Reported: crops/s (best) and
the median over repeats of compiled/eager, raw and worker, with the worker/raw ratio of each.

Usage:
  uv run python bench/classifier_compile.py                      # mini_xception on CPU (~3 min, 35 s of it compiling)
  uv run python bench/classifier_compile.py --models mini_xception,resnet152 --device cuda
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from classifier_serving import CPU_BATCH, CPU_CROPS, build, face_crops, raw_rate, worker_rate

from fervid.bus import EmbeddedRedis


def _median(x: np.ndarray) -> float:
    return float(np.median(x))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mini_xception")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="fervid-bench-compile-") as tmp,
        EmbeddedRedis(Path(tmp) / "redis") as server,
    ):
        for name in args.models.split(","):
            n = 4096 if args.device == "cuda" else CPU_CROPS.get(name, 96)
            batch = 64 if args.device == "cuda" else CPU_BATCH.get(name, 16)
            jpegs = face_crops(n)
            decoded = [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_GRAYSCALE) for j in jpegs]
            eager = build(name, args.device, False, batch)
            started = time.perf_counter()
            compiled = build(name, args.device, True, batch)
            compile_s = time.perf_counter() - started
            got: dict[str, list[tuple[float, float]]] = {"eager": [], "compiled": []}
            for clf in (eager, compiled):
                raw_rate(clf, decoded[: batch * 2], batch)  # warm-up
            for _ in range(args.repeats):
                for label, clf in (("eager", eager), ("compiled", compiled)):
                    got[label].append(
                        (raw_rate(clf, decoded, batch)[0], worker_rate(server.url, clf, jpegs, batch, 1, Path(tmp))[0])
                    )
            e, c = np.array(got["eager"]), np.array(got["compiled"])
            rows.append((name, batch, compile_s, e, c))
            print(f"{name}: eager {e.round(1).tolist()} compiled {c.round(1).tolist()}", file=sys.stderr, flush=True)
    print(
        f"\ndevice {args.device}, torch threads {torch.get_num_threads()}, 1 face/frame, "
        f"{args.repeats} alternating repeats\n"
    )
    print(
        "| model | batch | compile s | raw eager | raw compiled | raw compiled/eager | worker eager | worker compiled "
        "| worker compiled/eager | worker/raw eager | worker/raw compiled |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, batch, compile_s, e, c in rows:
        raw, worker = f"{e[:, 0].max():,.1f} | {c[:, 0].max():,.1f}", f"{e[:, 1].max():,.1f} | {c[:, 1].max():,.1f}"
        ratios = [_median(c[:, 0] / e[:, 0]), _median(c[:, 1] / e[:, 1])]
        ratios += [_median(e[:, 1] / e[:, 0]), _median(c[:, 1] / c[:, 0])]
        print(
            f"| {name} | {batch} | {compile_s:.1f} | {raw} | {ratios[0]:.2f} | {worker} | {ratios[1]:.2f} "
            f"| {ratios[2]:.2f} | {ratios[3]:.2f} |"
        )
    print(
        "\ncrops/s: best pass; ratios: medians over the repeats of each repeat's pair "
        "(eager and compiled back to back)."
    )


if __name__ == "__main__":
    main()
