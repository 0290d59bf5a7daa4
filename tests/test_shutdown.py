"""Graceful stop of the worker loop on real Redis: what a stage finished is acked, what it did not is handed
back (pending, marked idle, delivery count unchanged) and taken over by another replica at once."""

from __future__ import annotations

import time
from collections.abc import Sequence

import redis

from fervid.bus import Bus, Delivery
from fervid.contracts import FrameMsg, FrameRef
from fervid.metrics import STAGE_BATCH_SIZE, STAGE_MESSAGES
from fervid.worker import Outcome, StopFlag, run_stage

STREAM = "fervid:frames:t"


class HalfThenStop:
    """Finishes the first message of its batch, then is told to stop (as a publish with should_stop would)."""

    name = "halfstage"
    message_type = FrameMsg
    batch_size = 4
    max_wait_ms = 50

    def __init__(self, stop: StopFlag) -> None:
        self.stop = stop
        self.seen: list[str] = []

    def input_streams(self) -> Sequence[str]:
        return [STREAM]

    def handle(self, batch: list[tuple[Delivery, FrameMsg]]) -> Outcome:
        self.seen += [d.id for d, _ in batch]
        self.stop.set()
        return Outcome(done=[batch[0][0]])


def test_stop_mid_batch_acks_done_and_returns_the_rest(redis_client: redis.Redis) -> None:
    producer = Bus(redis_client, "ingest")
    for seq in range(4):
        msg = FrameMsg(FrameRef("t", seq, 1000.0 + seq, 2, 2), b"jpeg", live=False)
        producer.publish(STREAM, msg, downstream_group="halfstage", backlog=16)
    before = STAGE_MESSAGES.labels("halfstage")._value.get()

    stop = StopFlag()
    stage = HalfThenStop(stop)
    bus = Bus(redis_client, "halfstage", "replica-a", claim_idle_ms=60_000)
    started = time.monotonic()
    run_stage(stage, bus, stop=stop, block_ms=100)
    assert time.monotonic() - started < 2
    assert len(stage.seen) == 4

    pending = redis_client.xpending_range(STREAM, "halfstage", "-", "+", 10)
    assert [p["message_id"].decode() for p in pending] == stage.seen[1:]  # the first one was acked
    assert all(p["times_delivered"] == 1 for p in pending)  # returning is not a failed delivery
    assert all(p["time_since_delivered"] >= 60_000 for p in pending)  # marked idle: claimable now

    # Another replica takes them over immediately, not after the 60 s idle timeout.
    other = Bus(redis_client, "halfstage", "replica-b", claim_idle_ms=60_000)
    taken = other.read([STREAM], 10, 100)
    assert [d.id for d in taken] == stage.seen[1:]

    assert STAGE_MESSAGES.labels("halfstage")._value.get() - before == 4
    assert STAGE_BATCH_SIZE.labels("halfstage")._sum.get() >= 4
