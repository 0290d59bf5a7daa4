"""Each stage's real worker loop, bounded, on a real Redis: bad input is dead-lettered and the run goes on."""

from __future__ import annotations

import cv2
import redis
from sqlalchemy import text

from classifier.serving import load_classifier
from classifier.worker import ClassifierStage
from detector.registry import create_detector
from detector.worker import DetectorStage
from fervid.bus import Bus
from fervid.contracts import Box, EventsMsg, Face, FacesMsg, FrameMsg, FrameRef, Keys
from fervid.sample import render_frames
from fervid.settings import Settings
from fervid.worker import run_stage
from storage.db import create_schema, insert_idempotent, make_engine
from storage.worker import StorageStage

KEYS = Keys()  # the default namespace


def dead_reasons(client: redis.Redis) -> list[str]:
    return [f[b"dl_reason"].decode() for _, f in client.xrange(KEYS.dead)]


def test_detector_dead_letters_bad_frames_and_keeps_going(redis_client: redis.Redis, settings: Settings) -> None:
    frames, _truth = render_frames(seconds=0.1, fps=30, faces=2)
    _ok, jpeg = cv2.imencode(".jpg", frames[0])
    stream = KEYS.frames("cam")
    producer = Bus(redis_client, "ingest")
    redis_client.sadd(KEYS.cameras, "cam")
    for msg in [
        FrameMsg(FrameRef("cam", 0, 1.0, 640, 480), b"\xff\xd8 not a jpeg"),
        FrameMsg(FrameRef("cam", 1, 1.0, 640, 480), b""),
        FrameMsg(FrameRef("cam", 2, 1.0, 16000, 16000), jpeg.tobytes()),
        FrameMsg(FrameRef("cam", 3, 1.0, 320, 240), jpeg.tobytes()),  # size disagrees with the pixels
        FrameMsg(FrameRef("cam", 4, 1.0, 640, 480), jpeg.tobytes()),  # the good one
    ]:
        producer.publish(stream, msg, downstream_group="detector", backlog=100)
    redis_client.xadd(stream, {"v": "1", "t": "frame", "m": "{}"})  # malformed
    stage = DetectorStage(Bus(redis_client, "detector"), create_detector("mtcnn"), settings)
    stats = run_stage(stage, stage.bus, max_messages=6, idle_timeout=2, block_ms=50)
    assert stats.messages == 6 and stats.dead == 5
    reasons = dead_reasons(redis_client)
    assert any("corrupt JPEG" in r for r in reasons)
    assert any("empty frame" in r for r in reasons)
    assert any("absurd frame size" in r for r in reasons)
    assert any("message says 320x240" in r for r in reasons)
    assert any("malformed" in r for r in reasons)
    ((_, fields),) = redis_client.xrange(KEYS.faces)
    faces = FacesMsg.decode(fields)
    assert faces.frame.seq == 4 and len(faces.faces) == 2
    assert redis_client.xpending(stream, "detector")["pending"] == 0  # everything acked


def test_classifier_dead_letters_a_corrupt_crop(redis_client: redis.Redis, settings: Settings) -> None:
    frames, truth = render_frames(seconds=0.1, fps=30, faces=1)
    x1, y1, x2, y2 = (int(v) for v in truth.boxes[0][0])
    _ok, crop = cv2.imencode(".jpg", frames[0][y1:y2, x1:x2])
    producer = Bus(redis_client, "detector")
    ref = FrameRef("cam", 0, 1.0, 640, 480)
    face = Face(index=0, box=Box(x1, y1, x2 - x1, y2 - y1), score=0.99, crop=crop.tobytes())
    good = FacesMsg(frame=ref, detector="mtcnn", faces=(face,))
    junk = Face(index=0, box=Box(1, 1, 5, 5), score=0.99, crop=b"junk")
    bad = FacesMsg(frame=FrameRef("cam", 1, 1.0, 640, 480), detector="mtcnn", faces=(junk,))
    for msg in (bad, good):
        producer.publish(KEYS.faces, msg, downstream_group="classifier", backlog=100)
    stage = ClassifierStage(Bus(redis_client, "classifier"), load_classifier("mini_xception"), settings)
    run_stage(stage, stage.bus, max_messages=2, idle_timeout=2, block_ms=50)
    assert any("corrupt crop" in r for r in dead_reasons(redis_client))
    ((_, fields),) = redis_client.xrange(KEYS.events)
    events = EventsMsg.decode(fields)
    assert events.frame.seq == 0 and events.emotions[0].label == "happy"


def test_storage_redelivery_never_duplicates(redis_client: redis.Redis, settings: Settings) -> None:
    engine = make_engine(settings.resolved_db_url)
    create_schema(engine)
    probs = (0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)
    from fervid.contracts import Emotion

    msgs = [
        EventsMsg(
            frame=FrameRef("cam", i, 100.0 + i, 64, 64),
            detector="mtcnn",
            model="m",
            emotions=tuple(Emotion(index=k, box=Box(1, 1, 5, 5), score=0.9, probs=probs) for k in range(i % 3)),
        )
        for i in range(10)
    ]
    producer = Bus(redis_client, "classifier")
    for m in msgs + msgs[:4]:  # the first four delivered twice, as after a crash before the ack
        producer.publish(KEYS.events, m, downstream_group="storage", backlog=100)
    stage = StorageStage(engine, settings)
    run_stage(stage, Bus(redis_client, "storage"), max_messages=14, idle_timeout=2, block_ms=50)
    insert_idempotent(engine, msgs)  # and once more directly
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from frames")).scalar_one() == 10
        assert conn.execute(text("select count(*) from events")).scalar_one() == sum(i % 3 for i in range(10))
    assert redis_client.xpending(KEYS.events, "storage")["pending"] == 0
