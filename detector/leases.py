"""Camera → detector-replica affinity: per-camera leases in Redis, so each camera's frames go to one replica.

Tracking needs all of a camera's frames, in order, in one place. A consumer group alone splits a stream's
entries across replicas, so each replica's tracker would see only some frames and tracks would break. Instead
each replica holds a lease per camera and reads only the frame streams it holds:

* ``<namespace>:detector:lease:<camera>`` = the holder's consumer name, with a TTL (``detector.lease_ms``). The
  holder renews its leases on every loop (compare-and-extend, in the same Lua call as everything below).
* ``<namespace>:detector:replicas`` — a sorted set of live replicas scored by heartbeat expiry. A replica takes free
  cameras up to its fair share, ``ceil(cameras / live replicas)``, and gives back any surplus (a replica
  joined), between batches, after acking what it did.
* A replica that dies stops renewing: its leases expire, another replica takes the cameras, adopts the
  frames the dead one left pending, and starts fresh tracks (a new track epoch, so ids never collide).

Before publishing a frame the holder checks that the lease is still its own for at least half the TTL
(renewing it if needed), so a replica that stalled past its TTL never publishes a frame that the new holder
also publishes. This assumes no pause longer than the TTL between that check and the XADD (milliseconds).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis

from fervid.contracts import Keys

log = logging.getLogger(__name__)


# KEYS: replicas zset, lease key per camera.  ARGV: me, ttl_ms.  Returns the 1-based indexes of the held keys.
# One round trip per loop: heartbeat, prune dead replicas, renew what we hold, give back the surplus above the
# fair share, take free leases up to it. Time comes from Redis, so replicas on other machines agree on expiry.
_TICK_LUA = """
local me, ttl = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + ttl, me)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local share = math.ceil((#KEYS - 1) / math.max(1, redis.call('ZCARD', KEYS[1])))
local held, free = {}, {}
for i = 2, #KEYS do
  local owner = redis.call('GET', KEYS[i])
  if owner == me then held[#held + 1] = i elseif not owner then free[#free + 1] = i end
end
while #held > share do
  redis.call('DEL', KEYS[table.remove(held)])
end
for _, i in ipairs(held) do redis.call('PEXPIRE', KEYS[i], ttl) end
for _, i in ipairs(free) do
  if #held >= share then break end
  redis.call('SET', KEYS[i], me, 'PX', ttl)
  held[#held + 1] = i
end
for k = 1, #held do held[k] = held[k] - 1 end
return held
"""

# KEYS: lease keys.  ARGV: me, ttl_ms.  Extends (and returns 1 for) each lease that is still ours.
_EXTEND_LUA = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

# KEYS: replicas zset, lease keys.  ARGV: me.  Deletes the leases that are ours and the heartbeat.
_RELEASE_LUA = """
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class LeaseChange:
    held: list[str]
    acquired: list[str] = field(default_factory=list)  # newly ours: adopt its pending frames, start fresh tracks
    lost: list[str] = field(default_factory=list)  # no longer ours (given back, or expired while we stalled)


class CameraLeases:
    """This replica's camera leases. Not thread-safe: one per worker loop."""

    def __init__(self, client: redis.Redis, replica: str, ttl_ms: int, keys: Keys | None = None) -> None:
        self.client = client
        self.keys = keys or Keys()
        self.replica = replica
        self.ttl_ms = ttl_ms
        self._tick = client.register_script(_TICK_LUA)
        self._extend = client.register_script(_EXTEND_LUA)
        self._release = client.register_script(_RELEASE_LUA)
        # camera -> monotonic time until which the lease is surely ours (0: lost since the last tick)
        self._valid_until: dict[str, float] = {}

    def tick(self, cameras: Sequence[str]) -> LeaseChange:
        """Heartbeat, renew, rebalance and acquire, for the cameras known now. Call once per loop."""
        cameras = sorted(set(cameras) | set(self._valid_until))  # what we hold is renewed even if the list lags
        sent = time.monotonic()
        indexes = self._tick(keys=[self.keys.detector_replicas, *map(self.keys.lease, cameras)], args=[self.replica, self.ttl_ms])
        held = [cameras[int(i) - 1] for i in indexes]
        before = set(self._valid_until)
        self._valid_until = {c: sent + self.ttl_ms / 1000 for c in held}
        change = LeaseChange(held, [c for c in held if c not in before], sorted(before - set(held)))
        if change.acquired or change.lost:
            log.info("%s: cameras %s (took %s, gave up %s)", self.replica, held, change.acquired, change.lost)
        return change

    def hold(self, camera: str) -> bool:
        """True when `camera` is ours for at least half the TTL from now (renewing it when less is left)."""
        until = self._valid_until.get(camera)
        if not until:
            return False
        if until - time.monotonic() > self.ttl_ms / 2000:
            return True
        sent = time.monotonic()
        (ok,) = self._extend(keys=[self.keys.lease(camera)], args=[self.replica, self.ttl_ms])
        if ok:
            self._valid_until[camera] = sent + self.ttl_ms / 1000
            return True
        log.warning("%s: lost the lease of camera %s (stalled past %d ms?)", self.replica, camera, self.ttl_ms)
        self._valid_until[camera] = 0.0  # not ours; the next tick reports it lost
        return False

    def release_all(self) -> None:
        """Give back every lease now (graceful stop), so other replicas take the cameras without waiting."""
        self._release(keys=[self.keys.detector_replicas, *map(self.keys.lease, self._valid_until)], args=[self.replica])
        self._valid_until.clear()
