"""The fast path's seams, checked without timing anything: one torch pool per process (sized by the setting, idle
threads asleep, CPU inference taking turns), start-up imports (no torchvision or torch._dynamo for the default
models, no torch for the CLI), the NMS that replaced torchvision's, and the detection interval (tracked faces
carried between detected frames, at a measured recall)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis
import torch

from detector.base import Detection
from detector.registry import create_detector
from detector.retinaface import batched_nms
from detector.tracking import FaceTracker
from detector.worker import DetectorStage
from fervid.bus import Bus
from fervid.contracts import CLASSIFIER_GROUP, DETECTOR_GROUP, FacesMsg, FrameMsg, FrameRef, Keys
from fervid.sample import render_frames
from fervid.settings import load_settings
from fervid.threads import _CPU_INFERENCE, available_cores, configure_torch, cpu_inference
from fervid.worker import run_stage

ROOT = Path(__file__).resolve().parents[1]
KEYS = Keys()


def python(code: str, env: dict[str, str] | None = None) -> str:
    """Run `code` in a fresh interpreter (imports start from nothing) and return its stdout."""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env or dict(os.environ)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


# -- one pool per process -------------------------------------------------------------------------------


def test_importing_fervid_makes_idle_pool_threads_sleep_unless_told_otherwise() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert python("import fervid, os; print(os.environ['OMP_WAIT_POLICY'])", env) == "PASSIVE"
    assert python("import fervid, os; print(os.environ['OMP_WAIT_POLICY'])", {**env, "OMP_WAIT_POLICY": "ACTIVE"}) == (
        "ACTIVE"
    )


def test_the_pool_is_sized_by_the_setting_in_both_model_stages(redis_client: redis.Redis, tmp_path: Path) -> None:
    from classifier.worker import ClassifierStage

    before = torch.get_num_threads()
    try:
        for threads, expected in ((1, 1), (0, available_cores())):
            settings = load_settings(data_dir=tmp_path, threads=threads)
            torch.set_num_threads(3)
            DetectorStage.from_settings(settings, Bus(redis_client, DETECTOR_GROUP), lambda: False)
            assert torch.get_num_threads() == expected
            torch.set_num_threads(3)
            ClassifierStage.from_settings(settings, Bus(redis_client, CLASSIFIER_GROUP), lambda: False)
            assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)


def test_configure_torch_returns_the_pool_size() -> None:
    before = torch.get_num_threads()
    try:
        assert configure_torch(1) == 1 == torch.get_num_threads()
        assert configure_torch(0) == available_cores() == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_cpu_inference_is_one_lock_for_cpu_and_none_for_gpus() -> None:
    assert cpu_inference("cpu") is cpu_inference(torch.device("cpu")) is _CPU_INFERENCE
    with cpu_inference(torch.device("cuda")):
        assert not _CPU_INFERENCE.locked()


class LockProbe:
    """A real model, noting for each call whether the process's CPU inference lock was held, and how many items it
    had. It stands in for the model it wraps (a stage is given it where a model is expected: `type: ignore`)."""

    def __init__(self, model: object, method: str) -> None:
        self.model = model
        self.method = method
        self.held: list[bool] = []
        self.sizes: list[int] = []
        self.name = getattr(model, "name", "probe")
        self.model_id = getattr(model, "model_id", "probe")
        self.device = getattr(model, "device", "cpu")
        setattr(self, method, self._call)

    def _call(self, items: list) -> object:
        self.held.append(_CPU_INFERENCE.locked())
        self.sizes.append(len(items))
        return getattr(self.model, self.method)(items)


def publish_frames(client: redis.Redis, camera: str, images: list[np.ndarray], fps: float = 30.0) -> None:
    producer = Bus(client, "ingest")
    client.sadd(KEYS.cameras, camera)
    for seq, image in enumerate(images):
        _, jpeg = cv2.imencode(".jpg", image)
        h, w = image.shape[:2]
        producer.publish(
            KEYS.frames(camera),
            FrameMsg(FrameRef(camera, seq, 1000.0 + seq / fps, w, h), jpeg.tobytes()),
            downstream_group=DETECTOR_GROUP,
            backlog=1000,
        )


def test_both_stages_infer_under_the_one_lock(redis_client: redis.Redis, tmp_path: Path) -> None:
    from classifier.serving import load_classifier
    from classifier.worker import ClassifierStage

    frames, _ = render_frames(seconds=4 / 30, fps=30, faces=2)
    publish_frames(redis_client, "lock-cam", frames)
    settings = load_settings(data_dir=tmp_path)
    detector = LockProbe(create_detector("retinaface", device="cpu"), "detect")
    stage = DetectorStage(Bus(redis_client, DETECTOR_GROUP), detector, settings)  # type: ignore[arg-type]
    run_stage(stage, stage.bus, max_messages=4, idle_timeout=5, block_ms=100)
    classifier = LockProbe(load_classifier("mini_xception", device="cpu"), "predict")
    cstage = ClassifierStage(Bus(redis_client, CLASSIFIER_GROUP), classifier, settings)  # type: ignore[arg-type]
    run_stage(cstage, cstage.bus, max_messages=4, idle_timeout=5, block_ms=100)
    assert detector.held and all(detector.held)
    assert classifier.held and all(classifier.held)
    assert not _CPU_INFERENCE.locked()


# -- start-up imports -----------------------------------------------------------------------------------


def test_the_cli_imports_no_torch() -> None:
    assert python("import sys, fervid.cli; print('torch' in sys.modules)") == "False"


def test_the_default_models_load_without_torchvision_or_dynamo() -> None:
    code = (
        "import sys\n"
        "from detector.registry import create_configured\n"
        "from classifier.serving import load_classifier\n"
        "create_configured('retinaface', device='cpu')\n"
        "load_classifier('mini_xception', device='cpu')\n"
        "print(sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules))"
    )
    assert python(code) == "[]"


# -- NMS ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_batched_nms_equals_torchvision(seed: int) -> None:
    from torchvision.ops import batched_nms as tv_batched_nms

    rng = np.random.default_rng(seed)
    n = 300
    xy = rng.uniform(0, 600, (n, 2))
    wh = rng.uniform(5, 120, (n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    groups = rng.integers(0, 4, n)
    for iou in (0.3, 0.4, 0.7):
        expected = tv_batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(groups), iou)
        assert batched_nms(boxes, scores, groups, iou).tolist() == expected.tolist()
    assert batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), 0.4).tolist() == []


# -- detection interval ---------------------------------------------------------------------------------


def det(x: float, y: float, size: float = 50.0, score: float = 0.9) -> Detection:
    return Detection(x, y, x + size, y + size, score)


def test_interval_plans_every_kth_frame_and_any_frame_after_a_gap() -> None:
    tracker = FaceTracker(lambda camera: 1, interval=3)
    frames = [("a", seq, seq / 5) for seq in range(7)] + [("b", 0, 0.0), ("b", 1, 0.2)]
    assert tracker.plan(frames) == [True, False, False, True, False, False, True, True, False]
    tracker.assign("a", 6, 6 / 5, [det(10, 10)])
    assert tracker.plan([("a", 7, 7 / 5), ("a", 9, 9 / 5), ("a", 30, 30 / 5)]) == [False, True, True]
    assert tracker.plan([("a", 8, 8 / 5 + 10.0)]) == [True]  # a long gap in capture time
    tracker.reset("a")
    assert tracker.plan([("a", 7, 7 / 5)]) == [True]
    assert FaceTracker(lambda camera: 1).plan(frames) == [True] * len(frames)


def test_carried_faces_move_at_their_tracks_velocity_and_stay_in_the_frame() -> None:
    tracker = FaceTracker(lambda camera: 7, interval=2)
    ids = []
    for seq in range(0, 8, 2):  # a face moving right 10 px per frame, confirmed after a few detections
        ids = tracker.assign("cam", seq, seq / 5, [det(100 + 10 * seq, 40)])
    (tid,) = ids
    assert tid is not None and tid // 1_000_000 == 7
    ((carried, carried_id),) = tracker.carried("cam", 7, 640, 480)
    assert carried_id == tid
    assert carried.box == pytest.approx((170.0, 40.0, 220.0, 90.0))
    ((clipped, _),) = tracker.carried("cam", 50, 640, 480)  # x 600 + 50 px runs off the 640 px frame: clipped
    assert clipped.box == pytest.approx((600.0, 40.0, 640.0, 90.0))
    assert tracker.carried("cam", 60, 640, 480) == []  # wholly outside
    assert tracker.carried("other", 1, 640, 480) == []


def recall_at(interval: int, client: redis.Redis, tmp_path: Path, camera: str) -> tuple[float, int]:
    """Recall (IoU >= 0.5) of the faces the detector stage publishes for a 10 fps sampling of the sample
    clip's two moving faces, and how many frames it ran the detector on."""
    from test_pipeline import matched

    frames, truth = render_frames(seconds=3.0, fps=30, faces=2)
    frames, boxes = frames[::3], truth.boxes[::3]  # 10 fps analysis
    publish_frames(client, camera, frames, fps=10)
    settings = load_settings(data_dir=tmp_path, detector__interval=interval, detector__batch_size=8)
    detector = LockProbe(create_detector("retinaface", device="cpu"), "detect")
    stage = DetectorStage(Bus(client, DETECTOR_GROUP), detector, settings)  # type: ignore[arg-type]
    run_stage(stage, stage.bus, max_messages=len(frames), idle_timeout=5, block_ms=100)
    msgs = sorted(
        (FacesMsg.decode(f) for _, f in client.xrange(KEYS.faces) if FacesMsg.decode(f).frame.camera == camera),
        key=lambda m: m.frame.seq,
    )
    assert [m.frame.seq for m in msgs] == list(range(len(frames)))  # every frame published, carried ones too
    hits = sum(
        matched(boxes[m.frame.seq], [(f.box.x, f.box.y, f.box.x + f.box.w, f.box.y + f.box.h) for f in m.faces])
        for m in msgs
    )
    return hits / sum(len(b) for b in boxes), sum(detector.sizes)


def test_interval_detects_fewer_frames_at_a_small_cost_in_recall(redis_client: redis.Redis, tmp_path: Path) -> None:
    every, detected_every = recall_at(1, redis_client, tmp_path, "interval-1")
    second, detected_second = recall_at(2, redis_client, tmp_path, "interval-2")
    assert detected_every == 30
    assert detected_second <= 16  # every other frame (and the first)
    assert every >= 0.95
    assert second >= 0.9  # the sample's faces move ~3 px per frame at 10 fps: carried boxes still overlap


# -- live backlog bounded in time -----------------------------------------------------------------------


@pytest.mark.parametrize("live", [True, False])
def test_a_live_backlog_is_bounded_in_time_a_file_never_drops(
    redis_client: redis.Redis, tmp_path: Path, live: bool
) -> None:
    import time

    from ingest.publisher import FramePublisher

    settings = load_settings(data_dir=tmp_path, bus__frame_max_age_ms=300)
    camera = f"aged-{live}"
    publisher = FramePublisher(Bus(redis_client, "ingest"), camera, settings, live=live, threads=0)
    image = np.full((48, 64, 3), 90, np.uint8)
    for k in range(3):
        publisher.publish(image, 1000.0 + k)
    time.sleep(0.4)  # older than the 300 ms bound: nobody consumed them (a detector still loading its model)
    publisher.publish(image, 1003.0)
    publisher.close()
    stream = KEYS.frames(camera)
    dropped = 3 if live else 0
    assert publisher.counters.dropped == dropped
    assert int(redis_client.hget(KEYS.camera(camera, "stats"), "dropped") or 0) == dropped
    assert redis_client.xlen(stream) == 4 - dropped
    assert [FrameMsg.decode(f).frame.seq for _, f in redis_client.xrange(stream)] == list(range(dropped, 4))


def test_frames_a_live_camera_sent_before_the_stages_were_ready_are_dropped_and_counted(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    from fervid.pipeline import _discard_waiting
    from ingest.publisher import FramePublisher

    settings = load_settings(data_dir=tmp_path)
    publisher = FramePublisher(Bus(redis_client, "ingest"), "early", settings, live=True, threads=0)
    for k in range(3):
        publisher.publish(np.full((48, 64, 3), 90, np.uint8), 1000.0 + k)
    redis_client.xreadgroup(DETECTOR_GROUP, "reader", {KEYS.frames("early"): ">"}, count=1)  # read: not dropped
    assert _discard_waiting(redis_client, settings, "early") == 2
    assert int(redis_client.hget(KEYS.camera("early", "stats"), "dropped")) == 2
    assert [FrameMsg.decode(f).frame.seq for _, f in redis_client.xrange(KEYS.frames("early"))] == [0]
    assert _discard_waiting(redis_client, settings, "never-seen") == 0


# -- several stages in one process ----------------------------------------------------------------------


def test_up_one_process_stores_every_face_once(
    redis_url: str, redis_client: redis.Redis, sample_clip: tuple[Path, object], tmp_path: Path
) -> None:
    import json

    from test_services import assert_every_face_once

    clip, _ = sample_clip
    data = tmp_path / "data"
    db = f"sqlite:///{data / 'fervid.db'}"
    cmd = [sys.executable, "-m", "fervid", "up", "--one-process", "--source", str(clip), "--camera", "one"]
    cmd += ["--fps", "5", "--redis", redis_url, "--db", db, "--data-dir", str(data), "--until-drained"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    status = json.loads((data / "up.json").read_text())
    assert set(status) == {"ingest-files", "stages"}  # detector, classifier and storage: one process
    assert all(s["last_rc"] == 0 for s in status.values()), status
    published = int(redis_client.hget(KEYS.camera("one", "stats"), "published"))
    assert published == 10  # 2 s at 5 fps
    assert_every_face_once(db, "one", published, 2)


def test_up_one_process_refuses_replicas() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fervid", "up", "--one-process", "--detectors", "2", "--source", "x.mp4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "--one-process runs one of each stage" in result.stderr


def test_a_cpu_batch_runs_in_slices_with_the_same_detections() -> None:
    frames, _ = render_frames(seconds=5 / 30, fps=30, faces=2)
    sliced = create_detector("retinaface", device="cpu").detect(frames)  # default: slices of 2
    whole = create_detector("retinaface", device="cpu", cpu_batch=8).detect(frames)
    assert len(sliced) == len(whole) == 5
    for a, b in zip(sliced, whole, strict=True):
        assert [c for d in a for c in d.box] == pytest.approx([c for d in b for c in d.box], abs=1e-3)
        assert [d.score for d in a] == pytest.approx([d.score for d in b], abs=1e-5)
    with pytest.raises(ValueError, match="cpu_batch"):
        create_detector("retinaface", device="cpu", cpu_batch=0)


# -- the GPU check's code, on a CPU ---------------------------------------------------------------------


def test_the_gpu_check_runs_a_tiny_pass_on_a_cpu(tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    result = subprocess.run(
        [sys.executable, "bench/gpu.py", "--device", "cpu", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    table = out.read_text()
    for row in (
        "| detector | RetinaFace mobilenet0.25 | 640x480 batch 1 fp32 | real |",
        "| detector | RetinaFace resnet50 | 640x480 batch 1 fp32 |",  # RANDOM unless its weights are cached
        "| classifier | mini_xception | batch 2 fp32 | real |",
        "| classifier | mobilenet_v2 | batch 2 fp32 | RANDOM |",
        "| pipeline | run_pipeline (demo) |",
    ):
        assert row in table, table
    assert "skipped" not in table
