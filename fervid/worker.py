"""The one worker loop every consuming stage runs: read a batch → decode → handle → ack.

A stage supplies its input streams, its message type and a ``handle`` that publishes outputs. The loop owns
everything else: dead letters, the consumer's heartbeat, riding out a lost Redis (the batch in hand is kept and
handled again), a bounded mode for tests (``max_messages``, ``idle_timeout``) and graceful stop (first SIGTERM
finishes and acks the batch in hand; the second exits).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, Self, TypeVar

import redis

from fervid.backoff import Backoff
from fervid.bus import Bus, Delivery, Heartbeat, StopRequested
from fervid.contracts import BadMessage
from fervid.metrics import (
    STAGE_BATCH_FAILURES,
    STAGE_BATCH_SIZE,
    STAGE_DEAD_LETTERS,
    STAGE_HANDLE_SECONDS,
    STAGE_MESSAGES,
)
from fervid.signals import handle_stop_signals

log = logging.getLogger(__name__)


class Decodable(Protocol):
    """A stage's message type: `decode` builds one from a stream entry's fields, raising BadMessage for what must
    be dead-lettered."""

    @classmethod
    def decode(cls, fields: dict[bytes, bytes]) -> Self: ...


M = TypeVar("M", bound=Decodable)  # what `message_type.decode` returns


@dataclass
class Outcome:
    """What `handle` did with its batch: entries to ack, and entries to dead-letter with a reason."""

    done: list[Delivery] = field(default_factory=list)
    dead: list[tuple[Delivery, str]] = field(default_factory=list)


class Stage(Protocol[M]):
    name: str
    message_type: type[M]
    batch_size: int
    max_wait_ms: int

    def input_streams(self) -> Sequence[str]: ...

    # `message_type.decode(fields)` may do more than parse (the classifier decodes its crops there); it raises
    # BadMessage for what must be dead-lettered.

    def handle(self, batch: list[tuple[Delivery, M]]) -> Outcome:
        """Process and publish. Raise for a failure of the whole batch (it stays pending and is retried)."""
        ...


class StopFlag:
    """Set by the first SIGTERM/SIGINT (finish the batch, then exit); a second one exits at once."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        return self._event.wait(seconds)

    def install_signal_handlers(self) -> None:
        def on_signal(signum: int, _frame: object) -> None:
            if self._event.is_set():
                raise SystemExit(128 + signum)
            log.info("signal %d: finishing the batch in hand, then stopping (again to stop now)", signum)
            self._event.set()

        handle_stop_signals(on_signal)


@dataclass
class LoopStats:
    messages: int = 0
    dead: int = 0
    batches: int = 0


def run_stage(
    stage: Stage[M],
    bus: Bus,
    *,
    stop: StopFlag | None = None,
    block_ms: int = 500,
    max_messages: int | None = None,
    idle_timeout: float | None = None,
) -> LoopStats:
    """Run `stage` until stopped, or until `max_messages` were handled, or nothing arrived for `idle_timeout` s.

    While it runs, a :class:`Heartbeat` proves the consumer alive, so a killed worker's entries are claimed by
    another within seconds. A batch that Redis vanished under is kept and handled again once Redis is back (its
    entries are still pending on this consumer; what was already published is published again, which storage's
    idempotent insert absorbs), so an outage of any length never turns good messages into dead letters.
    """
    stop = stop or StopFlag()
    stats = LoopStats()
    backoff = Backoff(initial=0.2, cap=10.0)  # after a failed batch
    redis_away = _RedisAway(stage.name)
    idle_since = time.monotonic()
    log.info("%s: consuming as %s", stage.name, bus.consumer)
    heartbeat = Heartbeat(bus).start()
    unsettled: list[Delivery] = []  # a batch in hand when Redis went away: handled again first
    try:
        while not stop.is_set():
            if max_messages is not None and stats.messages >= max_messages:
                break
            batch = unsettled
            try:
                if not batch:
                    batch = bus.read_batch(stage.input_streams, stage.batch_size, stage.max_wait_ms, block_ms)
                    redis_away.back()
                if not batch:
                    if idle_timeout is not None and time.monotonic() - idle_since > idle_timeout:
                        break
                    continue
                started = time.perf_counter()
                outcome = _process(stage, bus, batch)
                bus.ack(outcome.done)
                redis_away.back()
                unsettled = []
                if stop.is_set():  # a stage that stopped mid-batch returned what it finished; hand back the rest
                    settled = {d.id for d in outcome.done} | {d.id for d, _ in outcome.dead}
                    _release(bus, [d for d in batch if d.id not in settled])
                STAGE_HANDLE_SECONDS.labels(stage.name).observe(time.perf_counter() - started)
                backoff.reset()
            except StopRequested:
                unsettled = []
                _release(bus, batch)  # stays pending, marked idle: another replica claims it at once
                break
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                unsettled = batch
                stop.wait(redis_away.failed(exc, len(batch)))
                continue
            except Exception:
                unsettled = []
                STAGE_BATCH_FAILURES.labels(stage.name).inc()
                # A bug or an unexpected failure of the whole batch: it stays pending, is claimed again after
                # the idle timeout, and is dead-lettered once it has failed `max_deliveries` times.
                delay = backoff.next_delay()
                log.exception("%s: batch of %d failed; retrying in %.1fs", stage.name, len(batch), delay)
                stop.wait(delay)
                continue
            idle_since = time.monotonic()
            stats.batches += 1
            stats.messages += len(batch)
            stats.dead += len(outcome.dead)
            STAGE_BATCH_SIZE.labels(stage.name).observe(len(batch))
            STAGE_MESSAGES.labels(stage.name).inc(len(batch))
            STAGE_DEAD_LETTERS.labels(stage.name).inc(len(outcome.dead))
    finally:
        _release(bus, unsettled)  # stopped while Redis was away: hand the batch back if Redis is here again
        _close(stage)
        heartbeat.stop()
        log.info("%s: stopped after %d messages (%d dead-lettered)", stage.name, stats.messages, stats.dead)
    return stats


class _RedisAway:
    """Riding out a Redis outage: one warning when it goes, one when it is back (not one per retry), and the wait
    before each retry. A refused connection costs Redis nothing, so the cap is short: the worker goes again within
    a couple of seconds of Redis's return, however long the outage was."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.since: float | None = None
        self.backoff = Backoff(initial=0.2, cap=2.0)

    def failed(self, exc: Exception, holding: int) -> float:
        if self.since is None:
            self.since = time.monotonic()
            held = f"; holding a batch of {holding}" if holding else ""
            log.warning("%s: Redis unreachable (%s); retrying every <= 2 s%s", self.stage, exc, held)
        return self.backoff.next_delay()

    def back(self) -> None:
        if self.since is not None:
            log.warning("%s: Redis is back after %.0fs", self.stage, time.monotonic() - self.since)
            self.since = None
            self.backoff.reset()


def _close(stage: object) -> None:
    """A stage may define ``close()`` to hand back what it holds beyond its pending entries (the detector's
    camera leases), so that another replica takes over now rather than after a timeout."""
    close = getattr(stage, "close", None)
    if close is None:
        return
    try:
        close()
    except redis.RedisError as exc:  # what it held expires on its own
        log.warning(
            "%s: could not hand back what it held (%s); it expires on its own", getattr(stage, "name", stage), exc
        )


def _release(bus: Bus, deliveries: list[Delivery]) -> None:
    if not deliveries:
        return
    try:
        bus.release(deliveries)
        log.info("%s: returned %d unfinished entries for another replica", bus.group, len(deliveries))
    except redis.RedisError as exc:  # they stay pending anyway and are reclaimed after claim_idle_ms
        log.warning(
            "%s: could not return %d entries (%s); they will be reclaimed after the idle timeout",
            bus.group,
            len(deliveries),
            exc,
        )


def _process(stage: Stage[M], bus: Bus, batch: list[Delivery]) -> Outcome:
    decoded: list[tuple[Delivery, M]] = []
    dead: list[tuple[Delivery, str]] = []
    for d in batch:
        if d.deliveries > bus.max_deliveries:
            dead.append((d, f"delivered {d.deliveries} times without being acked (last consumer died or failed)"))
            continue
        try:
            decoded.append((d, stage.message_type.decode(d.fields)))
        except BadMessage as exc:
            dead.append((d, f"bad message: {exc}"))
    outcome = stage.handle(decoded) if decoded else Outcome()
    outcome.dead.extend(dead)
    for d, reason in outcome.dead:
        bus.dead_letter(d, reason)
    return outcome
