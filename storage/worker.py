"""The storage stage: EventsMsg in → rows committed → ack. Idempotent, so redelivery never duplicates."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from fervid.backoff import Backoff
from fervid.bus import Bus, Delivery, StopRequested
from fervid.contracts import EventsMsg
from fervid.settings import Settings
from fervid.worker import Outcome
from storage.db import create_schema, insert_idempotent, make_engine

log = logging.getLogger(__name__)


class StorageStage:
    name = "storage"
    message_type = EventsMsg

    def __init__(self, engine: Engine, settings: Settings, should_stop: Callable[[], bool] = lambda: False) -> None:
        self.engine = engine
        self.events_stream = settings.keys.events
        self.batch_size = settings.storage.batch_size
        self.max_wait_ms = settings.storage.max_wait_ms
        self.should_stop = should_stop
        self.rows_written = 0
        self.frames_written = 0

    @classmethod
    def from_settings(cls, settings: Settings, bus: Bus, should_stop: Callable[[], bool]) -> StorageStage:
        """The stage as every deployment builds it: the configured database, its schema brought up to date."""
        engine = make_engine(settings.resolved_db_url)
        create_schema(engine)
        return cls(engine, settings, should_stop)

    def input_streams(self) -> Sequence[str]:
        return [self.events_stream]

    def handle(self, batch: list[tuple[Delivery, EventsMsg]]) -> Outcome:
        # A database outage is retried here, on the same batch, rather than left to redelivery: redelivery
        # counts towards dead-lettering, and an outage must never turn good events into dead letters.
        backoff = Backoff(initial=0.2, cap=10.0)
        while True:
            try:
                self.rows_written += insert_idempotent(self.engine, [m for _, m in batch])
                self.frames_written += len(batch)
                return Outcome(done=[d for d, _ in batch])
            except (OperationalError, DBAPIError) as exc:
                if not getattr(exc, "connection_invalidated", False) and not isinstance(exc, OperationalError):
                    raise
                delay = backoff.next_delay()
                log.warning(
                    "storage: database unavailable (%s); retrying %d events in %.1fs",
                    str(exc.orig).strip()[:200],
                    len(batch),
                    delay,
                )
                if self.should_stop():
                    raise StopRequested("stopped while the database was unavailable") from exc
                self.engine.dispose()
                time.sleep(delay)
