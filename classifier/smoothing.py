"""Per-track smoothing: an EMA of the probabilities along a face track, and a consensus label.

Classifier replicas share one consumer group, so consecutive frames of one track may be classified by
different processes. The state therefore lives in Redis (one small hash per (camera, track), with a TTL) and
is updated by one Lua script per batch: atomic, one round trip, and two replicas taking turns give exactly
the result of one.

Semantics, per track, observations taken in frame order (``seq``):

* ``ema = p`` on the first observation, then ``ema = alpha * p + (1 - alpha) * ema``.
* The smoothed probabilities are reported once the track has ``min_observations`` observations (before that
  they are None: too little history to smooth).
* The consensus label is the most common raw label among the track's last ``window`` observations, reported
  when the track has ``min_observations`` observations and that label holds at least ``agreement`` of the
  window; otherwise None, and readers fall back to the raw label (storage's timelines do:
  ``coalesce(label_smoothed, label)``).
* An observation whose ``seq`` is not newer than the track's last (a redelivery after a crash, or a frame
  overtaken by a faster replica) does not change the state; it is reported with the state as it stands, so a
  redelivered message never counts twice.
* A gap of more than ``reset_after_s`` in capture time since the track's last observation restarts it (a
  reused id is another person; a restarted source may also restart ``seq``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis

from fervid.contracts import EMOTIONS, Keys
from fervid.settings import SmoothingSettings

# KEYS: one state hash per distinct track in the call.
# ARGV: alpha, min_observations, window, agreement, reset_after_s, ttl_s, then per observation (in frame
#       order): key index (1-based), seq, capture ts, raw label index, the K probabilities.
# Returns per observation {ema as 'p1,...,pK' or '', consensus label index or ''}: strings, because a Lua
# number returned to Redis is truncated to an integer.
_SMOOTH_LUA = """
local alpha, min_obs, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local agree, reset_after, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local k = tonumber(ARGV[7])
local function split(s, as_number)
  local out = {}
  if s then for v in string.gmatch(s, '[^,]+') do out[#out + 1] = as_number and tonumber(v) or v end end
  return out
end
local function fmt(values)
  local out = {}
  for j = 1, #values do out[j] = string.format('%.17g', values[j]) end
  return table.concat(out, ',')
end
-- Each track's state is read once per call and written once at the end: a batch often holds many frames of
-- the same few tracks. '%.17g' round-trips a double exactly, so keeping numbers between frames changes nothing.
local states, order = {}, {}
local out = {}
local i = 8
while i <= #ARGV do
  local key = KEYS[tonumber(ARGV[i])]
  local seq, ts, label = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), ARGV[i + 3]
  local st = states[key]
  if st == nil then
    local h = redis.call('HMGET', key, 'seq', 'ts', 'n', 'ema', 'labels')
    st = {seq = tonumber(h[1]), ts = tonumber(h[2]), n = tonumber(h[3]) or 0, ema = split(h[4], true),
          labels = split(h[5], false), dirty = false}
    states[key] = st
    order[#order + 1] = key
  end
  -- Only a forward gap restarts: a frame reclaimed late from a dead replica is old, not a new person.
  local fresh = st.ts == nil or ts - st.ts > reset_after
  if fresh or seq > st.seq then
    if fresh then st.n, st.ema, st.labels = 0, {}, {} end
    for j = 1, k do
      local p = tonumber(ARGV[i + 3 + j])
      if st.n == 0 then st.ema[j] = p else st.ema[j] = alpha * p + (1 - alpha) * st.ema[j] end
    end
    st.n = st.n + 1
    st.labels[#st.labels + 1] = label
    while #st.labels > window do table.remove(st.labels, 1) end
    st.seq, st.ts, st.dirty = seq, ts, true
  end
  local smoothed, consensus = '', ''
  if st.n >= min_obs then
    smoothed = fmt(st.ema)
    local counts, best, best_count = {}, nil, 0
    for _, l in ipairs(st.labels) do
      counts[l] = (counts[l] or 0) + 1
      if counts[l] > best_count then best, best_count = l, counts[l] end
    end
    if #st.labels > 0 and best_count >= agree * #st.labels then consensus = best end
  end
  out[#out + 1] = {smoothed, consensus}
  i = i + 4 + k
end
for _, key in ipairs(order) do
  local st = states[key]
  if st.dirty then
    redis.call('HSET', key, 'seq', st.seq, 'ts', string.format('%.17g', st.ts), 'n', st.n,
               'ema', fmt(st.ema), 'labels', table.concat(st.labels, ','))
  end
  redis.call('EXPIRE', key, ttl)
end
return out
"""


@dataclass(frozen=True)
class Observation:
    """One classified face of a tracked person."""

    camera: str
    track_id: int
    seq: int
    capture_ts: float
    probs: Sequence[float]


@dataclass(frozen=True)
class Smoothed:
    probs: tuple[float, ...] | None  # EMA, None until the track has enough observations
    label: str | None  # consensus label, None when there is none (readers fall back to the raw label)


class TrackSmoother:
    """Updates the shared per-track state for a batch of observations in one atomic round trip."""

    def __init__(self, client: redis.Redis, cfg: SmoothingSettings, keys: Keys | None = None) -> None:
        self.cfg = cfg
        self.keys = keys or Keys()
        self._script = client.register_script(_SMOOTH_LUA)

    def update(self, observations: Sequence[Observation]) -> list[Smoothed]:
        """Smoothed values for `observations`, in their order (they are applied in frame order)."""
        if not observations:
            return []
        c = self.cfg
        keys: dict[str, int] = {}
        args: list[str | int | float] = [
            repr(c.alpha),
            c.min_observations,
            c.window,
            repr(c.agreement),
            repr(c.reset_after_s),
            c.ttl_s,
            len(EMOTIONS),
        ]
        order = sorted(range(len(observations)), key=lambda i: observations[i].seq)
        for i in order:
            o = observations[i]
            if len(o.probs) != len(EMOTIONS):
                raise ValueError(
                    f"{o.camera} track {o.track_id}: {len(o.probs)} probabilities, expected {len(EMOTIONS)}"
                )
            label = max(range(len(o.probs)), key=o.probs.__getitem__)
            key = keys.setdefault(self.keys.track(o.camera, o.track_id), len(keys) + 1)
            args += [key, o.seq, repr(float(o.capture_ts)), label, *(repr(float(p)) for p in o.probs)]
        replies = self._script(keys=list(keys), args=args)
        smoothed: dict[int, Smoothed] = {}
        for i, (ema, label) in zip(order, replies, strict=True):
            probs = tuple(float(v) for v in ema.split(b",")) if ema else None
            smoothed[i] = Smoothed(probs, EMOTIONS[int(label)] if label else None)
        return [smoothed[i] for i in range(len(observations))]
