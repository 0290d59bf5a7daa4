"""Several detector replicas on one real Redis: camera leases keep each camera's frames on one replica, so no
frame is lost or published twice and tracks stay whole; a crashed replica's cameras are taken over."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
from waiting import wait_for

from detector.leases import CameraLeases
from detector.registry import create_detector
from detector.tracking import EPOCH_STRIDE
from detector.worker import DetectorStage
from fervid.bus import Bus
from fervid.contracts import DETECTOR_GROUP, FacesMsg, Keys
from fervid.sample import GroundTruth
from fervid.settings import Settings, load_settings
from fervid.worker import StopFlag, run_stage
from ingest.runner import SourceSpec, run_source

KEYS = Keys()  # the default namespace

FPS = 15  # the 30 fps sample clip analysed at 15 fps: 30 frames per camera


def replica_settings(tmp_path: Path) -> Settings:
    # A lease long enough to outlast any batch on two busy cores, short enough to wait out in a test.
    return load_settings(data_dir=tmp_path, detector__batch_size=4, detector__max_wait_ms=50, detector__lease_ms=5000)


def published(client: redis.Redis) -> list[FacesMsg]:
    return [FacesMsg.decode(fields) for _, fields in client.xrange(KEYS.faces)]


def owners(client: redis.Redis, cameras: list[str]) -> dict[str, str | None]:
    return {c: (v.decode() if (v := client.get(Keys().lease(c))) else None) for c in cameras}


def start(stage: DetectorStage, stop: StopFlag, errors: list[BaseException]) -> threading.Thread:
    def loop() -> None:
        try:
            run_stage(stage, stage.bus, stop=stop, block_ms=100)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=loop, name=stage.bus.consumer, daemon=True)
    t.start()
    return t


def ingest(client: redis.Redis, clip: Path, cameras: list[str], settings: Settings) -> int:
    return sum(
        run_source(Bus(client, "ingest"), SourceSpec(c, str(clip), fps=FPS), settings).published for c in cameras
    )


def assert_each_frame_once(msgs: list[FacesMsg], cameras: list[str], frames_per_camera: int) -> None:
    seen = Counter((m.frame.camera, m.frame.seq) for m in msgs)
    assert set(seen) == {(c, s) for c in cameras for s in range(frames_per_camera)}, "a frame was lost"
    assert max(seen.values()) == 1, f"published twice: {[k for k, n in seen.items() if n > 1]}"


def stable_share(msgs: list[FacesMsg], camera: str, width: int) -> list[float]:
    """For each of the two faces (left and right half of the frame): the share of the camera's frames on
    which it carries its most common track id."""
    frames = [m for m in msgs if m.frame.camera == camera]
    shares = []
    for side in (0, 1):
        ids = [f.track_id for m in frames for f in m.faces if (f.box.x + f.box.w / 2 > width / 2) == bool(side)]
        ids = [i for i in ids if i is not None]
        shares.append(max(Counter(ids).values(), default=0) / len(frames))
    return shares


def test_two_replicas_neither_lose_nor_duplicate_and_keep_tracks(
    redis_client: redis.Redis, sample_clip: tuple[Path, GroundTruth], tmp_path: Path
) -> None:
    clip, truth = sample_clip
    cameras = ["cam-a", "cam-b", "cam-c"]
    settings = replica_settings(tmp_path)
    redis_client.sadd(KEYS.cameras, *cameras)
    stop, errors = StopFlag(), []
    stages = [
        DetectorStage(Bus(redis_client, DETECTOR_GROUP), create_detector("retinaface"), settings, stop.is_set)
        for _ in range(2)
    ]
    threads = [start(s, stop, errors) for s in stages]
    try:
        # Both replicas registered and the cameras split 2 + 1 before any frame flows.
        names = {s.bus.consumer for s in stages}
        wait_for(
            "cameras split between the replicas",
            lambda: set(owners(redis_client, cameras).values()) == names,
            30,
            threads,
        )
        total = ingest(redis_client, clip, cameras, settings)
        assert total == len(cameras) * len(truth.boxes) // 2
        wait_for("every frame published", lambda: redis_client.xlen(KEYS.faces) >= total, 300, threads)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not errors, errors
    msgs = published(redis_client)
    assert_each_frame_once(msgs, cameras, total // len(cameras))
    # Affinity: every replica that processes a camera's frames starts its own tracker (a new epoch); one epoch
    # per camera means one replica saw all of that camera's frames. Without leases each camera has two.
    assert [int(redis_client.get(f"fervid:camera:{c}:track_epoch")) for c in cameras] == [1, 1, 1]
    for camera in cameras:
        assert all(share >= 0.9 for share in stable_share(msgs, camera, truth.width)), (
            camera,
            stable_share(msgs, camera, truth.width),
        )
    # A graceful stop gives the leases back.
    assert set(owners(redis_client, cameras).values()) == {None}


class Crash(BaseException):
    """Stands in for SIGKILL: not an Exception, so the worker loop does not handle it."""


class CrashingStage(DetectorStage):
    """Dies holding its second batch, unacked; like a killed process it never gets to give its leases back."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches = 0

    def handle(self, batch: list[Any]) -> Any:
        self.batches += 1
        if self.batches == 2:
            raise Crash
        return super().handle(batch)

    def close(self) -> None:
        pass  # a killed process runs no cleanup


def test_a_crashed_replicas_cameras_are_taken_over(
    redis_client: redis.Redis, sample_clip: tuple[Path, GroundTruth], tmp_path: Path
) -> None:
    clip, _truth = sample_clip
    cameras = ["cam-x", "cam-y"]
    settings = replica_settings(tmp_path)
    redis_client.sadd(KEYS.cameras, *cameras)
    survivor_stop, crash_stop, errors = StopFlag(), StopFlag(), []
    survivor = DetectorStage(
        Bus(redis_client, DETECTOR_GROUP), create_detector("retinaface"), settings, survivor_stop.is_set
    )
    victim = CrashingStage(
        Bus(redis_client, DETECTOR_GROUP, claim_idle_ms=60_000),
        create_detector("retinaface"),
        settings,
        crash_stop.is_set,
    )
    threads = [start(survivor, survivor_stop, errors), start(victim, crash_stop, errors)]
    try:
        wait_for("one camera each", lambda: len(set(owners(redis_client, cameras).values()) - {None}) == 2, 30, threads)
        (victims_camera,) = [c for c, o in owners(redis_client, cameras).items() if o == victim.bus.consumer]
        total = ingest(redis_client, clip, cameras, settings)
        threads[1].join(timeout=120)
        assert [type(e) for e in errors] == [Crash]
        held = redis_client.xpending_range(
            KEYS.frames(victims_camera), DETECTOR_GROUP, "-", "+", 100, consumername=victim.bus.consumer
        )
        assert held, "the crashed replica should have died holding frames"
        # Its lease expires; the survivor takes the camera, adopts the frames the victim held, and carries on.
        wait_for("every frame published", lambda: redis_client.xlen(KEYS.faces) >= total, 300, threads[:1])
    finally:
        survivor_stop.set()
        crash_stop.set()
        for t in threads:
            t.join(timeout=30)
    assert [type(e) for e in errors] == [Crash]
    msgs = published(redis_client)
    assert_each_frame_once(msgs, cameras, total // len(cameras))
    assert not redis_client.xlen(KEYS.dead)
    for camera in cameras:
        assert redis_client.xpending(KEYS.frames(camera), DETECTOR_GROUP)["pending"] == 0
    # Fresh tracks after the takeover: a new epoch, so no id of the victim's is reused, and the epochs follow
    # the frame order (the victim's frames first).
    epochs = [
        (m.frame.seq, f.track_id // EPOCH_STRIDE)
        for m in msgs
        if m.frame.camera == victims_camera
        for f in m.faces
        if f.track_id
    ]
    assert int(redis_client.get(f"fervid:camera:{victims_camera}:track_epoch")) == 2
    assert {e for _, e in epochs} <= {1, 2} and 2 in {e for _, e in epochs}
    assert [e for _, e in sorted(epochs)] == sorted(e for _, e in epochs)


@pytest.mark.parametrize(
    ("replicas", "cameras", "shares"),
    [(1, 3, [3]), (2, 3, [2, 1]), (3, 3, [1, 1, 1]), (2, 5, [3, 2]), (4, 2, [1, 1, 0, 0])],
)
def test_leases_split_cameras_fairly_and_rebalance(
    redis_client: redis.Redis, replicas: int, cameras: int, shares: list[int]
) -> None:
    names = [f"cam{i}" for i in range(cameras)]
    leases = [CameraLeases(redis_client, f"replica-{i}", ttl_ms=5000) for i in range(replicas)]
    for _ in range(3):  # the first replica takes everything, then gives back as the others register
        changes = [lease.tick(names) for lease in leases]
    assert sorted((len(c.held) for c in changes), reverse=True) == shares
    assert sorted(c for ch in changes for c in ch.held) == names  # every camera held, none twice
    # One leaves gracefully: the others take its cameras at their next tick, within their fair share.
    leases[0].release_all()
    after = [lease.tick(names) for lease in leases[1:]]
    if replicas > 1:
        assert sorted(c for ch in after for c in ch.held) == names


def test_a_stale_holder_cannot_keep_a_lease_it_lost(redis_client: redis.Redis) -> None:
    a = CameraLeases(redis_client, "a", ttl_ms=300)
    assert a.tick(["cam"]).held == ["cam"] and a.hold("cam")
    time.sleep(0.4)  # a stalls past its TTL; b takes the camera
    b = CameraLeases(redis_client, "b", ttl_ms=300)
    assert b.tick(["cam"]).acquired == ["cam"]
    assert not a.hold("cam")  # a checks before publishing: not its camera any more
    change = a.tick(["cam"])
    assert change.held == [] and change.lost == ["cam"]


def test_a_dead_replicas_leases_are_freed_once_its_heartbeat_expires(redis_client: redis.Redis) -> None:
    """A replica killed with 60 s leases: another takes its cameras seconds later (its consumer heartbeat expired),
    not after the lease TTL; a replica that still beats keeps its leases."""
    cameras = ["c1", "c2"]
    beats = {name: Bus(redis_client, DETECTOR_GROUP, name, heartbeat_ms=300) for name in ("killed", "alive", "new")}
    for bus in beats.values():
        bus.beat()
    killed, alive = (CameraLeases(redis_client, name, ttl_ms=60_000) for name in ("killed", "alive"))
    assert killed.tick(cameras).held == cameras  # alone at first: both cameras
    assert alive.tick(cameras).held == []  # its share is one, but both are held by a live replica
    beats["killed"].beat()  # still alive: nothing moves
    assert alive.tick(cameras).held == []
    time.sleep(0.5)  # killed stops beating; its leases have 59 s left
    beats["alive"].beat()
    assert alive.tick(cameras).held == cameras  # the dead replica is out of the fair share, its leases free
    assert set(owners(redis_client, cameras).values()) == {"alive"}


def test_a_lease_that_expired_while_nobody_took_it_is_taken_back(redis_client: redis.Redis) -> None:
    """Redis away longer than the TTL: the holder's frames in hand stay its own, not handed back for re-delivery."""
    a = CameraLeases(redis_client, "a", ttl_ms=300)
    assert a.tick(["cam"]).held == ["cam"]
    time.sleep(0.4)  # expired; no other replica took it
    assert not redis_client.exists(Keys().lease("cam"))
    assert a.hold("cam")
    assert owners(redis_client, ["cam"]) == {"cam": "a"}
    assert a.tick(["cam"]).lost == []
