"""Per-track smoothing: EMA/consensus semantics on a real Redis, replicas sharing state, and the path to SQL."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import redis
from sqlalchemy import text
from synth import astronaut_bgr

from classifier.serving import load_classifier
from classifier.smoothing import Observation, TrackSmoother
from classifier.worker import ClassifierStage
from fervid.bus import Bus
from fervid.contracts import EMOTIONS, Box, EventsMsg, Face, FacesMsg, FrameRef, Keys
from fervid.settings import Settings, SmoothingSettings, load_settings
from fervid.worker import run_stage
from storage.db import create_schema, make_engine
from storage.worker import StorageStage

KEYS = Keys()  # the default namespace

HAPPY, SAD, NEUTRAL = EMOTIONS.index("happy"), EMOTIONS.index("sad"), EMOTIONS.index("neutral")


def onehot(k: int, p: float = 0.8) -> tuple[float, ...]:
    rest = (1 - p) / 6
    return tuple(p if i == k else rest for i in range(7))


def obs(
    seq: int, probs: tuple[float, ...], track: int = 1, camera: str = "cam", ts: float | None = None
) -> Observation:
    return Observation(camera, track, seq, 1000.0 + seq * 0.2 if ts is None else ts, probs)


@pytest.fixture
def smoother(redis_client: redis.Redis) -> TrackSmoother:
    return TrackSmoother(
        redis_client, SmoothingSettings(alpha=0.5, min_observations=3, window=5, agreement=0.6, ttl_s=60)
    )


def test_ema_starts_at_the_first_observation_and_reports_from_the_third(smoother: TrackSmoother) -> None:
    seq = [onehot(HAPPY), onehot(SAD), onehot(HAPPY)]
    got = smoother.update([obs(i, p) for i, p in enumerate(seq)])
    assert got[0].probs is None and got[1].probs is None  # too few observations
    ema = np.array(seq[0])
    for p in seq[1:]:
        ema = 0.5 * np.array(p) + 0.5 * ema
    np.testing.assert_allclose(got[2].probs, ema, rtol=0, atol=1e-12)
    assert sum(got[2].probs) == pytest.approx(1.0)
    assert got[2].label == "happy"  # 2 of 3 = 67% >= 60%
    # Continuing in a later call from the stored state, exactly as if it were one call.
    (nxt,) = smoother.update([obs(3, onehot(NEUTRAL))])
    np.testing.assert_allclose(nxt.probs, 0.5 * np.array(onehot(NEUTRAL)) + 0.5 * ema, atol=1e-12)


@pytest.mark.parametrize(
    "labels, consensus",
    [
        ([HAPPY, HAPPY], None),  # 2 observations: never a consensus
        ([HAPPY, HAPPY, HAPPY], "happy"),
        ([HAPPY, SAD, NEUTRAL], None),  # 33%
        ([HAPPY, SAD, HAPPY, SAD], None),  # 50%
        ([HAPPY, SAD, HAPPY, SAD, HAPPY], "happy"),  # 60%: enough
        ([SAD, SAD, SAD, HAPPY, HAPPY], "sad"),  # 60% sad
        ([SAD, SAD, SAD, HAPPY, HAPPY, HAPPY], "happy"),  # window of 5 holds S S H H H: 60% happy
        ([HAPPY] * 10 + [SAD, SAD, SAD], "sad"),  # the window forgets: H H S S S
    ],
)
def test_consensus_needs_three_observations_and_sixty_percent_of_the_window(
    smoother: TrackSmoother, labels: list[int], consensus: str | None
) -> None:
    got = smoother.update([obs(i, onehot(k)) for i, k in enumerate(labels)])
    assert got[-1].label == consensus


def test_replays_and_late_frames_do_not_count_twice(smoother: TrackSmoother, redis_client: redis.Redis) -> None:
    first = smoother.update([obs(i, onehot(HAPPY if i % 2 else SAD)) for i in range(4)])
    state = redis_client.hgetall(Keys().track("cam", 1))
    replay = smoother.update([obs(2, onehot(NEUTRAL)), obs(3, onehot(NEUTRAL))])  # redelivered / overtaken
    assert redis_client.hgetall(Keys().track("cam", 1)) == state
    assert replay[0].probs == replay[1].probs == first[3].probs  # reported with the state as it stands
    # Within one call, observations are applied in frame order whatever order they come in.
    a = TrackSmoother(redis_client, smoother.cfg).update(
        [obs(12, onehot(SAD), track=2), obs(10, onehot(HAPPY), track=2), obs(11, onehot(HAPPY), track=2)]
    )
    assert a[0].label == "happy" and a[1].probs is None
    np.testing.assert_allclose(
        a[0].probs,
        0.5 * np.array(onehot(SAD)) + 0.25 * np.array(onehot(HAPPY)) + 0.25 * np.array(onehot(HAPPY)),
        atol=1e-12,
    )


def test_one_call_for_a_batch_equals_one_call_per_observation(redis_client: redis.Redis) -> None:
    """The script reads each track once per call and writes it once at the end: the results and the stored
    state must be exactly those of applying the observations one call at a time (tracks interleaved, a replay,
    a gap that restarts a track)."""
    rng = np.random.default_rng(3)
    stream = []
    for i in range(40):
        p = rng.dirichlet(np.ones(7))
        stream.append(
            obs(i // 2, tuple(float(v) for v in p), track=i % 2, ts=1000.0 + (i // 2) * 0.2 + (20 if i >= 30 else 0))
        )
    stream.insert(25, obs(3, onehot(NEUTRAL), track=1))  # a late frame: must not change track 1
    cfg = SmoothingSettings(alpha=0.3, min_observations=3, window=5, agreement=0.6, ttl_s=60)
    batched = TrackSmoother(redis_client, cfg).update(stream)
    state = {t: redis_client.hgetall(Keys().track("cam", t)) for t in (0, 1)}
    redis_client.delete(*(Keys().track("cam", t) for t in (0, 1)))
    one_by_one = [TrackSmoother(redis_client, cfg).update([o])[0] for o in sorted(stream, key=lambda o: o.seq)]
    by_obs = dict(zip((id(o) for o in sorted(stream, key=lambda o: o.seq)), one_by_one, strict=True))
    assert batched == [by_obs[id(o)] for o in stream]
    assert {t: redis_client.hgetall(Keys().track("cam", t)) for t in (0, 1)} == state
    assert sum(b.probs is not None for b in batched) > 20 and any(b.label for b in batched)


def test_tracks_are_separate_bounded_and_restart_after_a_gap(
    smoother: TrackSmoother, redis_client: redis.Redis
) -> None:
    got = smoother.update(
        [obs(i, onehot(HAPPY), track=1) for i in range(3)]
        + [obs(i, onehot(SAD), track=2) for i in range(3)]
        + [obs(i, onehot(SAD), track=1, camera="other") for i in range(3)]
    )
    assert [g.label for g in got[2::3]] == ["happy", "sad", "sad"]
    for key in (Keys().track("cam", 1), Keys().track("cam", 2), Keys().track("other", 1)):
        assert 0 < redis_client.ttl(key) <= 60  # forgotten when the track is gone
    # 30 s later (capture time) track 1 is someone else: the history starts again.
    (later,) = smoother.update([obs(3, onehot(SAD), ts=1000.0 + 30)])
    assert later.probs is None and later.label is None
    assert redis_client.hget(Keys().track("cam", 1), "n") == b"1"


# -- through the worker ------------------------------------------------------------------------------------


def track_frames(n: int) -> list[FacesMsg]:
    """One tracked face (real pixels) over n frames, its expression varying: two framings and a flip."""
    img = astronaut_bgr()
    crops = [img[56:176, 177:272], cv2.flip(img[56:176, 177:272], 1), img[30:200, 150:300], img[80:176, 190:272]]
    out = []
    for seq in range(n):
        _ok, buf = cv2.imencode(".jpg", crops[(seq // 2) % len(crops)])
        faces = (
            Face(index=0, box=Box(10, 10, 60, 60), score=0.9, crop=buf.tobytes(), track_id=7),
            Face(index=1, box=Box(100, 10, 60, 60), score=0.9, crop=buf.tobytes()),
        )
        out.append(
            FacesMsg(frame=FrameRef("cam", seq, 100.0 + seq * 0.2, 640, 480), detector="retinaface", faces=faces)
        )
    return out


def classify(
    redis_client: redis.Redis, settings: Settings, replicas: int, frames: list[FacesMsg], model
) -> tuple[list[EventsMsg], dict[bytes, bytes]]:
    """Publish `frames`, then let `replicas` stages take turns, one batch each, until all are handled; returns the
    events and the tracked face's smoothing state."""
    redis_client.flushdb()
    producer = Bus(redis_client, "detector")
    for m in frames:
        producer.publish(KEYS.faces, m, downstream_group="classifier", backlog=1000)
    stages = [
        ClassifierStage(Bus(redis_client, "classifier", f"replica-{i}"), model, settings) for i in range(replicas)
    ]
    handled = 0
    turn = 0
    while handled < len(frames):
        stage = stages[turn % replicas]
        handled += run_stage(stage, stage.bus, max_messages=1, idle_timeout=1, block_ms=50).messages
        turn += 1
    assert turn >= 2 * replicas  # each replica really took several turns
    events = [EventsMsg.decode(f) for _, f in redis_client.xrange(KEYS.events)]
    return events, redis_client.hgetall(KEYS.track("cam", 7))


def test_two_replicas_taking_turns_smooth_exactly_like_one(redis_client: redis.Redis, tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, classifier__batch_size=3, classifier__max_wait_ms=0)
    model = load_classifier("mini_xception", device="cpu")
    frames = track_frames(12)
    one, state = classify(redis_client, settings, 1, frames, model)
    two, state_two = classify(redis_client, settings, 2, frames, model)
    assert [e.frame.seq for e in two] == list(range(12))
    tracked = [e.emotions[0].smoothed_label for e in one]
    assert tracked == [e.emotions[0].smoothed_label for e in two] and state == state_two
    assert tracked[0] is None and tracked[1] is None  # too few observations for a consensus
    assert any(label is not None for label in tracked)
    # The track's state holds an EMA of the raw probabilities (alpha from the settings), the same for both.
    alpha = settings.classifier.smoothing.alpha
    ema = np.array(one[0].emotions[0].probs)
    for e in one[1:]:
        ema = alpha * np.array(e.emotions[0].probs) + (1 - alpha) * ema
    np.testing.assert_allclose([float(v) for v in state[b"ema"].split(b",")], ema, atol=1e-9)
    assert all(e.emotions[1].smoothed_label is None for e in one)  # untracked


def test_smoothed_label_reaches_sql(redis_client: redis.Redis, settings: Settings) -> None:
    model = load_classifier("mini_xception", device="cpu")
    producer = Bus(redis_client, "detector")
    frames = track_frames(6)
    for m in frames:
        producer.publish(KEYS.faces, m, downstream_group="classifier", backlog=1000)
    stage = ClassifierStage(Bus(redis_client, "classifier"), model, settings)
    run_stage(stage, stage.bus, max_messages=6, idle_timeout=2, block_ms=50)
    events = {e.frame.seq: e for e in (EventsMsg.decode(f) for _, f in redis_client.xrange(KEYS.events))}
    engine = make_engine(settings.resolved_db_url)
    create_schema(engine)
    run_stage(StorageStage(engine, settings), Bus(redis_client, "storage"), max_messages=6, idle_timeout=2, block_ms=50)
    with engine.connect() as conn:
        rows = conn.execute(
            text("select frame_seq, face_index, label, label_smoothed from events order by frame_seq, face_index")
        ).all()
    assert len(rows) == 12
    assert [(r.frame_seq, r.face_index, r.label, r.label_smoothed) for r in rows] == [
        (seq, em.index, em.label, em.smoothed_label) for seq in range(6) for em in events[seq].emotions
    ]
    assert any(r.label_smoothed is not None for r in rows)
