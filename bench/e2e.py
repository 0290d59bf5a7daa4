"""End to end, whole processes: `fervid demo` against the default detector alone and against the peer `fer`
package, on the same generated clip (640x480, 30 fps, two real faces, every frame analysed).

    uv run python bench/e2e.py [--seconds 20] [--pairs 5] [--fer-python /tmp/fer-venv/bin/python] [--allow-load]

Each round runs, as separate whole processes timed from launch to exit (imports, model loading and start-up
included, as a user would see them):

* detector alone: decode the clip with PyAV and run the default detector (settings' backend, device and batch
  size) on every frame in batches; nothing else;
* `fervid demo CLIP`: ingest, detector, classifier, storage on an embedded Redis and SQLite, with the time from
  launch to the first stored emotion row (polled in its SQLite file) and its peak RSS (wait4);
* with --fer-python, fer's `Video.analyze` (Haar face detection, its mini-Xception on each face) on the same clip,
  in a venv of its own, outside the repository (fer pulls in TensorFlow and needs `setuptools<81` for
  pkg_resources and the non-headless OpenCV; it runs its mini-Xception with TensorFlow Lite, first face only):
      uv venv /tmp/fer-venv --python 3.11
      uv pip install --python /tmp/fer-venv/bin/python fer "setuptools<81" opencv-python

Rounds are interleaved (detector, demo, fer, detector, demo, fer, ...) and the table gives each figure's median
with its min-max, and the per-round ratios: demo/detector (goal >= 0.85), demo/fer (goal >= 3), and the time to
the first row (goal <= 5 s). Then each stage service (`fervid detect`, `classify`, `store`) is launched against an
embedded Redis and timed from launch to its ``/ready`` answering 200 (goal <= 10 s on CPU), and, in this
process, what each part does alone (decode, detector, classifier).

The load average is printed before and after; the script refuses to run when it exceeds 1.0 per core (another
process would be measured too), unless --allow-load, and then every figure is flagged.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

from support import LoadGuard, ProcessRun, Spread, add_load_arguments, machine_line, run_process

FER_SCRIPT = """
import sys
from fer.classes import Video
from fer.fer import FER
video = Video(sys.argv[1], outdir=sys.argv[2])
frames = video.analyze(FER(mtcnn=False), display=False, save_frames=False, save_video=False, annotate_frames=False,
                       zip_images=False, output="pandas")
print("frames", len(frames))
"""


def detector_alone(clip: str) -> None:
    """The baseline process: decode + the default detector on every frame, in batches of the configured size."""
    from detector.registry import create_configured
    from fervid.settings import load_settings
    from ingest.source import decode, open_container

    cfg = load_settings().detector
    detector = create_configured(cfg.backend, device=cfg.device, min_face=cfg.min_face)
    frames = faces = 0
    batch = []
    with open_container(clip) as container:
        for frame in decode(container):
            batch.append(frame.image)
            if len(batch) == cfg.batch_size:
                faces += sum(len(d) for d in detector.detect(batch))
                frames += len(batch)
                batch = []
    if batch:
        faces += sum(len(d) for d in detector.detect(batch))
        frames += len(batch)
    print(f"frames {frames} faces {faces}")


def first_row_watch(db: Path, started: float, done: threading.Event) -> list[float]:
    """Poll `db` until it holds an emotion row; the list gets the seconds from `started` when it did."""
    found: list[float] = []

    def poll() -> None:
        while not done.is_set() and not found:
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1) as conn:
                    if conn.execute("SELECT 1 FROM events LIMIT 1").fetchone():
                        found.append(time.perf_counter() - started)
                        return
            except sqlite3.Error:
                pass  # not created yet, or locked by the writer for a moment
            time.sleep(0.02)

    threading.Thread(target=poll, daemon=True).start()
    return found


def fervid_command() -> list[str]:
    script = Path(sys.executable).parent / "fervid"
    return [str(script)] if script.exists() else [sys.executable, "-m", "fervid.cli"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="clip length in seconds at 30 fps (default 20)")
    parser.add_argument("--pairs", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--fer-python", type=Path, default=None, help="python of a venv with `fer` installed")
    parser.add_argument("--no-parts", action="store_true", help="skip the in-process decode/detector/classifier rows")
    parser.add_argument("--no-services", action="store_true", help="skip the services' launch-to-/ready times")
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "CLIP"), help=argparse.SUPPRESS)
    add_load_arguments(parser)
    args = parser.parse_args()
    if args.worker:
        kind, clip = args.worker
        if kind == "detector":
            detector_alone(clip)
            return
        parser.error(f"unknown worker {kind}")

    from fervid.sample import make_sample_clip

    work = Path(tempfile.mkdtemp(prefix="fervid-e2e-"))
    clip = work / "clip.mp4"
    truth = make_sample_clip(clip, seconds=args.seconds)
    n = len(truth.boxes)
    print(f"fervid e2e: {n} frames 640x480 @30 fps, two faces; {machine_line()}")
    print(f"OpenMP wait policy: {os.environ.get('OMP_WAIT_POLICY', 'unset')} (fervid's default applies to both sides)")

    det, demo, fer, first_row, rss = Spread(), Spread(), Spread(), Spread(), Spread()
    vs_det, vs_fer = Spread(), Spread()
    with LoadGuard(args.allow_load) as guard:
        for i in range(args.pairs):
            r = run_process([sys.executable, __file__, "--worker", "detector", str(clip)])
            _check(r, "detector alone")
            det.values.append(n / r.seconds)

            data = work / f"demo-{i}"
            done = threading.Event()
            started = time.perf_counter()
            found = first_row_watch(data / "fervid.db", started, done)
            r = run_process([*fervid_command(), "demo", str(clip), "--data-dir", str(data)])
            done.set()
            _check(r, "fervid demo")
            demo.values.append(n / r.seconds)
            rss.values.append(r.peak_rss_mb)
            if found:
                first_row.values.append(found[0])
            vs_det.values.append(demo.values[-1] / det.values[-1])
            shutil.rmtree(data, ignore_errors=True)

            line = f"round {i + 1}/{args.pairs}: detector {det.values[-1]:.1f} fps, demo {demo.values[-1]:.1f} fps"
            if args.fer_python:
                r = run_process([str(args.fer_python), "-c", FER_SCRIPT, str(clip), str(work / "fer-out")])
                _check(r, "fer Video.analyze")
                fer.values.append(n / r.seconds)
                vs_fer.values.append(demo.values[-1] / fer.values[-1])
                line += f", fer {fer.values[-1]:.1f} fps"
            print(f"  {line} (load {guard.check():.2f}/core)", flush=True)

    print(f"\n| {'whole process, start-up included':<44} | {'median (min-max, n)':<28} | goal |")
    print(f"|{'-' * 46}|{'-' * 30}|------|")
    rows = [
        ("detector alone (frames/s)", det, ""),
        ("fervid demo (frames/s)", demo, ""),
        ("demo / detector alone", vs_det, ">= 0.85"),
        ("fer Video.analyze (frames/s)", fer, ""),
        ("demo / fer", vs_fer, ">= 3"),
        ("demo: launch to first stored row (s)", first_row, "<= 5"),
        ("demo: peak RSS (MiB)", rss, ""),
    ]
    for name, spread, goal in rows:
        if spread.values:
            print(f"| {name:<44} | {spread!s:<28} | {goal} |")
    if not args.fer_python:
        print("(fer not measured: pass --fer-python, see --help)")
    if guard.loaded:
        print("** LOADED machine: these figures are not measurements **")
    if not args.no_services:
        services_ready(work, args.pairs)
    if not args.no_parts:
        parts(clip, n)


def services_ready(work: Path, rounds: int) -> None:
    """Each stage service, launched `rounds` times: seconds from launch to ``/ready`` answering 200."""
    import signal
    import socket
    import subprocess
    import urllib.error
    import urllib.request

    from fervid.bus import EmbeddedRedis

    times: dict[str, Spread] = {"detect": Spread(), "classify": Spread(), "store": Spread()}
    with EmbeddedRedis(work / "services-redis") as server:
        for _ in range(rounds):
            for command, spread in times.items():
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", 0))
                    port = sock.getsockname()[1]
                argv = [*fervid_command(), command, "--redis", server.url, "--metrics-port", str(port)]
                if command == "store":
                    argv += ["--db", f"sqlite:///{work / 'services.db'}"]
                started = time.perf_counter()
                proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    while proc.poll() is None and time.perf_counter() - started < 120:
                        try:
                            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as r:
                                if r.status == 200:
                                    spread.values.append(time.perf_counter() - started)
                                    break
                        except (urllib.error.URLError, OSError):
                            pass
                        time.sleep(0.05)
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(30)
    print(f"\n| {'service: launch to /ready (s)':<44} | {'median (min-max, n)':<28} | goal |")
    print(f"|{'-' * 46}|{'-' * 30}|------|")
    for command, spread in times.items():
        print(f"| {'fervid ' + command:<44} | {spread!s:<28} | <= 10 |")


def parts(clip: Path, n: int) -> None:
    """In this process: decode alone, detector alone, classifier alone (rates, for orientation)."""
    from classifier.serving import load_classifier
    from detector.crops import square_crop
    from detector.registry import create_configured
    from fervid.settings import load_settings
    from ingest.source import decode, open_container

    settings = load_settings()
    t0 = time.perf_counter()
    with open_container(str(clip)) as c:
        frames = [f.image for f in decode(c)]
    decode_s = time.perf_counter() - t0
    cfg = settings.detector
    detector = create_configured(cfg.backend, device=cfg.device, min_face=cfg.min_face)
    detector.detect(frames[: cfg.batch_size])  # warm-up: first-call allocations are not throughput
    t0 = time.perf_counter()
    detections = []
    for i in range(0, n, cfg.batch_size):
        detections += detector.detect(frames[i : i + cfg.batch_size])
    detect_s = time.perf_counter() - t0
    crops = [
        square_crop(f, d, cfg.crop_size, cfg.crop_margin) for f, ds in zip(frames, detections, strict=True) for d in ds
    ]
    classifier = load_classifier(settings.classifier.model, device=settings.classifier.device)
    classifier.predict(crops[:64])
    t0 = time.perf_counter()
    for i in range(0, len(crops), settings.classifier.batch_size):
        classifier.predict(crops[i : i + settings.classifier.batch_size])
    classify_s = time.perf_counter() - t0
    print(f"\n| {'one part alone, in this process (after warm-up)':<48} | {'per s':>9} |")
    print(f"|{'-' * 50}|{'-' * 11}|")
    print(f"| {'decode (PyAV), frames':<48} | {n / decode_s:9.1f} |")
    print(f"| {f'detector ({detector.name}, batch {cfg.batch_size}), frames':<48} | {n / detect_s:9.1f} |")
    print(f"| {f'classifier ({classifier.model_id}), crops':<48} | {len(crops) / classify_s:9.1f} |")


def _check(run: ProcessRun, what: str) -> None:
    if run.returncode != 0:
        print(f"{what} failed (exit {run.returncode}):\n{run.output[-3000:]}")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
