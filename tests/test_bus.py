"""The bus against a real (embedded) Redis: bounded publishing, exact drop counts, reclaim, dead letters."""

from __future__ import annotations

import time

import pytest
import redis

from fervid.bus import Bus, Heartbeat, StopRequested, connect, redact_url
from fervid.contracts import FrameMsg, FrameRef, Keys
from fervid.errors import ServiceUnavailable

KEYS = Keys()  # the default namespace

STREAM = "fervid:frames:cam"


def frame(seq: int) -> FrameMsg:
    return FrameMsg(FrameRef("cam", seq, 1.0 + seq, 8, 8), b"jpeg", live=True)


def seqs(deliveries: list) -> list[int]:
    return [FrameMsg.decode(d.fields).frame.seq for d in deliveries]


def drop_oldest(producer: Bus, seq: int, backlog: int) -> int:
    """Publish frame `seq` under the drop_oldest policy; how many undelivered frames it dropped."""
    return producer.publish(
        STREAM, frame(seq), downstream_group="detector", backlog=backlog, policy="drop_oldest"
    ).dropped


def consume(consumer: Bus, count: int) -> int:
    """Read and ack up to `count` frames; how many there were."""
    got = consumer.read([STREAM], count, 10)
    consumer.ack(got)
    return len(got)


def test_drop_oldest_keeps_the_newest_and_counts_exactly(redis_client: redis.Redis) -> None:
    producer, consumer = Bus(redis_client, "ingest"), Bus(redis_client, "detector")
    dropped = 0
    for i in range(50):
        dropped += producer.publish(
            STREAM, frame(i), downstream_group="detector", backlog=8, policy="drop_oldest", stats_key="st"
        ).dropped
    got = consumer.read([STREAM], 100, 10)
    assert seqs(got) == list(range(42, 50))  # the 8 newest survive
    assert dropped == 42 == int(redis_client.hget("st", "dropped"))
    assert int(redis_client.hget("st", "published")) == 50
    assert dropped + len(got) == 50  # every frame is either delivered or counted as dropped


def test_slow_consumer_memory_stays_bounded_and_drops_are_exact(redis_client: redis.Redis) -> None:
    producer, consumer = Bus(redis_client, "ingest"), Bus(redis_client, "detector")
    delivered = dropped = 0
    for i in range(400):
        dropped += drop_oldest(producer, i, backlog=16)
        if i % 10 == 0:  # the consumer reads one frame per ten published
            delivered += consume(consumer, 1)
        assert redis_client.xlen(STREAM) <= 17  # acked entries are trimmed, undelivered ones capped
    delivered += len(consumer.read([STREAM], 1000, 10))
    assert delivered + dropped == 400


def test_wait_policy_blocks_instead_of_dropping(redis_client: redis.Redis) -> None:
    producer, consumer = Bus(redis_client, "ingest"), Bus(redis_client, "detector")
    for i in range(4):
        producer.publish(STREAM, frame(i), downstream_group="detector", backlog=4, policy="wait")
    with pytest.raises(StopRequested):
        producer.publish(
            STREAM, frame(4), downstream_group="detector", backlog=4, policy="wait", should_stop=lambda: True
        )
    got = consumer.read([STREAM], 2, 10)
    # Delivered but unacked entries still count: the backlog is only freed by acks.
    with pytest.raises(StopRequested):
        producer.publish(
            STREAM, frame(4), downstream_group="detector", backlog=4, policy="wait", should_stop=lambda: True
        )
    consumer.ack(got)
    producer.publish(STREAM, frame(4), downstream_group="detector", backlog=4, policy="wait")
    assert seqs(consumer.read([STREAM], 10, 10)) == [2, 3, 4]


def test_stats_fields_are_written_with_the_entry_and_only_with_it(redis_client: redis.Redis) -> None:
    producer = Bus(redis_client, "ingest")
    producer.publish(
        STREAM, frame(0), downstream_group="detector", backlog=1, policy="wait", stats_key="st", stats={"last_seq": 0}
    )
    assert redis_client.hget("st", "last_seq") == b"0"
    with pytest.raises(StopRequested):  # refused for want of room: no entry, so no last_seq either
        producer.publish(
            STREAM,
            frame(1),
            downstream_group="detector",
            backlog=1,
            policy="wait",
            stats_key="st",
            stats={"last_seq": 1},
            should_stop=lambda: True,
        )
    assert redis_client.hget("st", "last_seq") == b"0" and redis_client.xlen(STREAM) == 1


def test_drop_counts_stay_exact_across_the_cheap_path_below_the_cap(redis_client: redis.Redis) -> None:
    """Below the cap the script skips its exact count; crossing the cap back and forth must not miscount."""
    producer, consumer = Bus(redis_client, "ingest"), Bus(redis_client, "detector")
    delivered = dropped = 0
    for i in range(300):
        dropped += drop_oldest(producer, i, backlog=6)
        if i % 40 < 20:  # bursts of a fast consumer (stream far below the cap) and of none (full, dropping)
            delivered += consume(consumer, 3)
    delivered += len(consumer.read([STREAM], 1000, 10))
    assert dropped > 0 and delivered + dropped == 300


def test_dead_consumers_entries_are_reclaimed_then_dead_lettered(redis_client: redis.Redis) -> None:
    Bus(redis_client, "ingest").publish(STREAM, frame(0), downstream_group="detector", backlog=10)
    dead = Bus(redis_client, "detector", "dies", claim_idle_ms=100)
    assert seqs(dead.read([STREAM], 10, 10)) == [0]  # then it "dies" without acking
    survivor = Bus(redis_client, "detector", "survivor", claim_idle_ms=100, max_deliveries=2)
    assert survivor.read([STREAM], 10, 10) == []  # not idle long enough yet
    time.sleep(0.15)
    survivor._last_claim.clear()
    (again,) = survivor.read([STREAM], 10, 10)
    assert again.deliveries == 2 and seqs([again]) == [0]
    time.sleep(0.15)
    survivor._last_claim.clear()
    (third,) = survivor.read([STREAM], 10, 10)
    assert third.deliveries == 3
    survivor.dead_letter(third, "delivered 3 times")
    ((_, fields),) = redis_client.xrange(KEYS.dead)
    assert fields[b"dl_reason"] == b"delivered 3 times" and fields[b"dl_stream"] == STREAM.encode()
    assert FrameMsg.decode(fields).frame.seq == 0  # the original payload is kept for replay
    assert redis_client.xpending(STREAM, "detector")["pending"] == 0


def pending_of(client: redis.Redis, stream: str, group: str = "detector") -> dict[str, int]:
    return {c["name"].decode(): int(c["pending"]) for c in client.xpending(stream, group)["consumers"] or []}


def test_a_dead_consumers_entries_are_claimed_at_once_a_live_ones_never(redis_client: redis.Redis) -> None:
    """Heartbeats: entries of a consumer whose heartbeat expired (killed) are claimed by the next read, long before
    claim_idle_ms; a consumer that keeps beating keeps its batch however long it takes; one that never beat (a
    tool) is left to the idle timeout; one that stopped gracefully (retired) is dead at once."""
    producer = Bus(redis_client, "ingest")
    for i in range(6):
        producer.publish(STREAM, frame(i), downstream_group="detector", backlog=100)

    def bus(name: str) -> Bus:
        return Bus(redis_client, "detector", name, claim_idle_ms=60_000, heartbeat_ms=300)

    killed, slow, silent, survivor = bus("killed"), bus("slow"), bus("silent"), bus("survivor")
    killed.beat()
    assert seqs(killed.read([STREAM], 2, 10)) == [0, 1]  # then it is killed: it beats no more
    beating = Heartbeat(slow).start()  # alive, holding a batch that takes long
    try:
        assert seqs(slow.read([STREAM], 2, 10)) == [2, 3]
        assert seqs(silent.read([STREAM], 2, 10)) == [4, 5]
        time.sleep(0.5)  # killed's heartbeat has expired; slow's is fresh
        got = survivor.read([STREAM], 10, 10)
        assert seqs(got) == [0, 1] and [d.deliveries for d in got] == [2, 2]
        time.sleep(1.1)  # past the next dead check
        assert survivor.read([STREAM], 10, 10) == []
        assert pending_of(redis_client, STREAM) == {"slow": 2, "silent": 2, "survivor": 2}
    finally:
        beating.stop()  # a graceful stop retires the heartbeat: what slow still holds goes at once
    survivor._last_dead_check = 0.0
    assert seqs(survivor.read([STREAM], 10, 10)) == [2, 3]
    assert pending_of(redis_client, STREAM) == {"silent": 2, "survivor": 4}


def test_adopted_entries_are_read_next_however_young_the_clock(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new camera lease holder adopts what the previous reader left; its next read takes those entries, even
    with a claim_idle_ms of an hour on a machine up for a minute (time.monotonic counts from boot)."""
    import types

    import fervid.bus

    producer = Bus(redis_client, "ingest")
    for i in range(3):
        producer.publish(STREAM, frame(i), downstream_group="detector", backlog=100)
    gone = Bus(redis_client, "detector", "gone", claim_idle_ms=3_600_000)
    assert seqs(gone.read([STREAM], 10, 10)) == [0, 1, 2]  # then its lease moves on
    clock = types.SimpleNamespace(monotonic=lambda: 60.0, sleep=time.sleep, time=time.time)
    monkeypatch.setattr(fervid.bus, "time", clock)
    heir = Bus(redis_client, "detector", "heir", claim_idle_ms=3_600_000)
    assert heir.adopt(STREAM) == 3
    assert seqs(heir.read([STREAM], 10, 10)) == [0, 1, 2]


def test_a_dead_consumers_deleted_entries_are_acked_not_delivered(redis_client: redis.Redis) -> None:
    producer = Bus(redis_client, "ingest")
    ids = [producer.publish(STREAM, frame(i), downstream_group="detector", backlog=100).id for i in range(2)]
    killed = Bus(redis_client, "detector", "killed", heartbeat_ms=300)
    killed.beat()
    assert len(killed.read([STREAM], 2, 10)) == 2
    redis_client.xdel(STREAM, ids[0])  # dropped while pending (a live camera's backlog)
    time.sleep(0.5)
    survivor = Bus(redis_client, "detector", "survivor", heartbeat_ms=300)
    assert seqs(survivor.read([STREAM], 10, 10)) == [1]
    assert redis_client.xpending(STREAM, "detector")["pending"] == 1  # only the live one, now the survivor's


def test_read_batch_fills_up_to_max_items_within_max_wait(redis_client: redis.Redis) -> None:
    producer, consumer = Bus(redis_client, "ingest"), Bus(redis_client, "detector")
    for i in range(5):
        producer.publish(STREAM, frame(i), downstream_group="detector", backlog=100)
    t0 = time.monotonic()
    assert len(consumer.read_batch([STREAM], max_items=3, max_wait_ms=1000)) == 3
    assert len(consumer.read_batch([STREAM], max_items=8, max_wait_ms=50)) == 2  # returns after max_wait
    assert time.monotonic() - t0 < 1.0


def test_unreachable_redis_is_one_clear_error() -> None:
    with pytest.raises(ServiceUnavailable, match=r"cannot reach Redis at redis://\*\*\*@127\.0\.0\.1:1"):
        connect("redis://:secret@127.0.0.1:1/0")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtsp://admin:pw@10.0.0.2:554/s1", "rtsp://***@10.0.0.2:554/s1"),
        ("redis://:pw@host:6379/0", "redis://***@host:6379/0"),
        ("rtsp://host/path@x", "rtsp://host/path@x"),
        ("/videos/a.mp4", "/videos/a.mp4"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_read_of_several_streams_never_exceeds_count(redis_client: redis.Redis) -> None:
    """XREADGROUP's COUNT is per stream: what one read delivers beyond `count` is served by the next reads."""
    producer, consumer = Bus(redis_client, "ingest"), Bus(redis_client, "detector")
    streams = [f"{STREAM}-{k}" for k in range(3)]
    for s in streams:
        for i in range(4):
            producer.publish(s, frame(i), downstream_group="detector", backlog=10)
    got = []
    while batch := consumer.read(streams, 2, 10):
        assert len(batch) <= 2
        consumer.ack(batch)
        got += batch
    assert sorted((d.stream, s) for d, s in zip(got, seqs(got), strict=True)) == [
        (s, i) for s in streams for i in range(4)
    ]
    # Surplus of a stream no longer read is not served (it stays pending, for whoever reads that stream now).
    for s in streams:
        producer.publish(s, frame(9), downstream_group="detector", backlog=10)
    (first,) = consumer.read(streams, 1, 10)  # one entry; the other two streams' new entries are surplus
    assert first.stream == streams[0]
    assert consumer.read(streams[:1], 5, 10) == []
    assert [redis_client.xpending(s, "detector")["pending"] for s in streams[1:]] == [1, 1]


def test_publish_many_is_in_order_waits_for_room_and_reports_a_partial_batch(redis_client: redis.Redis) -> None:
    from fervid.bus import PartlyPublished

    producer, consumer = Bus(redis_client, "ingest"), Bus(redis_client, "detector")
    out = producer.publish_many(STREAM, [frame(i) for i in range(3)], downstream_group="detector", backlog=5)
    assert [p.backlog for p in out] == [1, 2, 3]
    with pytest.raises(PartlyPublished) as info:  # room for 2 of 4; the first two go out, in order
        producer.publish_many(
            STREAM, [frame(i) for i in range(3, 7)], downstream_group="detector", backlog=5, should_stop=lambda: True
        )
    assert len(info.value.published) == 2 and isinstance(info.value, StopRequested)
    got = consumer.read([STREAM], 100, 10)
    assert seqs(got) == [0, 1, 2, 3, 4]
    import threading

    acking = threading.Event()

    def ack_later() -> None:
        acking.set()  # set first: once publish_many returns, this has surely run
        consumer.ack(got)

    threading.Timer(0.3, ack_later).start()  # the backlog is full until the consumer acks
    producer.publish_many(STREAM, [frame(i) for i in range(5, 9)], downstream_group="detector", backlog=5)
    assert acking.is_set()  # it waited for the ack, then went out whole
    assert seqs(consumer.read([STREAM], 100, 10)) == [5, 6, 7, 8]


def test_publish_many_is_one_call_that_counts_and_trims_like_single_publishes(redis_client: redis.Redis) -> None:
    """A batch goes out in one script call: all of it below the cap, the stats hash counts every entry, and the
    stream is trimmed of what the group had consumed, exactly as one publish per message would."""
    producer, consumer = Bus(redis_client, "ingest"), Bus(redis_client, "detector")
    producer.publish_many(STREAM, [frame(i) for i in range(40)], downstream_group="detector", backlog=1000)
    consumer.ack(consumer.read([STREAM], 40, 10))
    calls = redis_client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    out = producer.publish_many(STREAM, [frame(i) for i in range(40, 100)], downstream_group="detector", backlog=1000)
    assert redis_client.info("commandstats")["cmdstat_evalsha"]["calls"] == calls + 1
    # Below the cap the backlog is an upper bound (the consumed 40 are still in the stream until this trim).
    assert [p.backlog for p in out] == list(range(41, 101))
    assert int(redis_client.hget(f"{STREAM}:stats", "published")) == 100
    assert redis_client.xlen(STREAM) == 60
    assert seqs(consumer.read([STREAM], 100, 10)) == list(range(40, 100))


def test_entries_whose_reply_was_lost_are_read_again_at_once(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis delivers entries (they become ours, pending) and the connection drops before the reply arrives, as
    when Redis is stopped mid-read. We are alive and beating, so no claim frees them before claim_idle_ms: the
    next read after the failure returns them (our pending list, id 0), then new entries as usual.
    The drop is simulated after the real XREADGROUP ran: a real Redis cannot be made to lose one reply on cue."""
    producer = Bus(redis_client, "ingest")
    consumer = Bus(redis_client, "detector", claim_idle_ms=3_600_000)
    for i in range(3):
        producer.publish(STREAM, frame(i), downstream_group="detector", backlog=100)
    real = redis_client.xreadgroup

    def lost_reply(*args: object, **kwargs: object) -> object:
        real(*args, **kwargs)  # Redis delivers ...
        raise redis.ConnectionError("Connection closed by server.")  # ... and the reply never arrives

    monkeypatch.setattr(consumer.redis, "xreadgroup", lost_reply)
    with pytest.raises(redis.ConnectionError):
        consumer.read([STREAM], 2, 10)
    monkeypatch.setattr(consumer.redis, "xreadgroup", real)
    again = consumer.read([STREAM], 10, 10)
    assert seqs(again) == [0, 1]  # what the lost reply held, at once
    consumer.ack(again)
    new = consumer.read([STREAM], 10, 10)
    assert seqs(new) == [2]  # then new entries, and nothing twice
    consumer.ack(new)
    assert redis_client.xpending(STREAM, "detector")["pending"] == 0
