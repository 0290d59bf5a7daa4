"""The detector's per-camera metrics, scraped from the Prometheus registry after a real run on a real Redis."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import redis
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from detector.registry import create_detector
from detector.worker import DetectorStage
from fervid.bus import Bus
from fervid.contracts import DETECTOR_GROUP, FacesMsg, FrameMsg, FrameRef, Keys
from fervid.sample import render_frames
from fervid.settings import load_settings
from fervid.worker import run_stage

KEYS = Keys()  # the default namespace


def scrape() -> dict[tuple[str, str], float]:
    """(sample name, camera) → value, for the detector's per-camera samples."""
    out = {}
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        for s in family.samples:
            if s.labels.get("stage") == "detector" and "camera" in s.labels and "le" not in s.labels:
                out[(s.name, s.labels["camera"])] = s.value
    return out


def test_per_camera_detector_metrics(redis_client: redis.Redis, tmp_path: Path) -> None:
    cameras = ["metrics-one", "metrics-two"]  # names no other test uses: the registry is per process
    frames, _truth = render_frames(seconds=4 / 30, fps=30, faces=2)
    producer = Bus(redis_client, "ingest")
    redis_client.sadd(KEYS.cameras, *cameras)
    for camera, faces in zip(cameras, (2, 0), strict=True):
        for seq, image in enumerate(frames):
            image = image if faces else np.full_like(image, 100)  # the second camera sees a grey wall
            _ok, jpeg = cv2.imencode(".jpg", image)
            producer.publish(
                KEYS.frames(camera),
                FrameMsg(FrameRef(camera, seq, 100.0 + seq / 30, 640, 480), jpeg.tobytes()),
                downstream_group=DETECTOR_GROUP,
                backlog=64,
            )
    before = scrape()
    settings = load_settings(data_dir=tmp_path, detector__batch_size=8, detector__max_wait_ms=500)
    stage = DetectorStage(Bus(redis_client, DETECTOR_GROUP), create_detector("retinaface"), settings)
    run_stage(stage, stage.bus, max_messages=8, idle_timeout=5, block_ms=100)
    after = scrape()

    def delta(name: str, camera: str) -> float:
        return after.get((name, camera), 0.0) - before.get((name, camera), 0.0)

    msgs = [FacesMsg.decode(f) for _, f in redis_client.xrange(KEYS.faces)]
    faces = {c: sum(len(m.faces) for m in msgs if m.frame.camera == c) for c in cameras}
    assert faces == {"metrics-one": 8, "metrics-two": 0}
    for camera in cameras:
        assert delta("fervid_camera_frames_total", camera) == 4
        assert after[("fervid_camera_frames_per_second", camera)] > 0
        assert delta("fervid_camera_faces_per_frame_count", camera) == 4
        assert delta("fervid_camera_faces_per_frame_sum", camera) == faces[camera]
        assert delta("fervid_camera_faces_total", camera) == faces[camera]
        # One batch of 8 carried both cameras' 4 frames: each camera sees that batch, its size and its time.
        assert delta("fervid_camera_inference_seconds_count", camera) == 1
        assert delta("fervid_camera_inference_seconds_sum", camera) > 0
        assert delta("fervid_camera_batch_images_sum", camera) == 8
