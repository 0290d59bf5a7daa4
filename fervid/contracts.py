"""Message contracts between stages: Redis key names (under a namespace), group names and the typed, versioned
messages.

Every message crosses Redis as a flat stream entry: ``v`` (schema version), ``t`` (type), ``m`` (JSON
metadata) and ``b0``, ``b1``, ... (binary blobs such as JPEG bytes, kept out of the JSON so they are not
base64-inflated). Decoding validates everything and raises :class:`BadMessage`, which the worker loop
sends to the dead-letter stream with its reason.

Faces travel one message per *frame* (with every face of that frame inside): a frame with no face is still
accounted for downstream, and the faces of one frame are acked together, so storage can commit a frame
atomically. The classifier still batches individual crops across frames and cameras.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, TypeVar

from fervid.errors import cut

SCHEMA_VERSION = 1

# FER-2013 order. Changing it changes the meaning of every stored probability.
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

# Consumer groups, one per consuming stage.
DETECTOR_GROUP = "detector"
CLASSIFIER_GROUP = "classifier"
STORAGE_GROUP = "storage"

DEFAULT_NAMESPACE = "fervid"
_NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_CAMERA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Keys:
    """Every Redis key fervid uses, under one namespace (the key prefix): the only place key names are spelled.

    Two deployments that share a Redis with different namespaces never see each other's frames, faces, events,
    cameras, leases or dead letters (settings: ``namespace``, env ``FERVID_NAMESPACE``).
    """

    namespace: str = DEFAULT_NAMESPACE
    cameras: str = field(init=False)  # set of camera names that ingest has published
    faces: str = field(init=False)
    events: str = field(init=False)
    dead: str = field(init=False)
    dead_counts: str = field(init=False)  # hash: dead letters per consuming group
    detector_replicas: str = field(init=False)  # zset of live detector replicas (detector/leases.py)

    def __post_init__(self) -> None:
        if not isinstance(self.namespace, str) or not _NAMESPACE.match(self.namespace):
            raise ValueError(
                f"namespace {self.namespace[:100]!r} is invalid: use 1-32 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
        ns = self.namespace
        for name, key in (
            ("cameras", f"{ns}:cameras"),
            ("faces", f"{ns}:faces"),
            ("events", f"{ns}:events"),
            ("dead", f"{ns}:dead"),
            ("dead_counts", f"{ns}:dead:counts"),
            ("detector_replicas", f"{ns}:detector:replicas"),
        ):
            object.__setattr__(self, name, key)

    def frames(self, camera: str) -> str:
        """One frame stream per camera, so a busy camera's backlog never evicts another camera's frames."""
        return f"{self.namespace}:frames:{validate_camera_name(camera)}"

    def camera(self, camera: str, what: str) -> str:
        """Per-camera keys beside the stream: ``state`` (hash), ``stats`` (hash of counters), ``track_epoch``."""
        return f"{self.namespace}:camera:{validate_camera_name(camera)}:{what}"

    def lease(self, camera: str) -> str:
        """The detector replica holding `camera` (detector/leases.py)."""
        return f"{self.namespace}:detector:lease:{camera}"

    def track(self, camera: str, track_id: int) -> str:
        """Per-track smoothing state (classifier/smoothing.py)."""
        return f"{self.namespace}:track:{camera}:{track_id}"

    def consumers(self, group: str) -> str:
        """Heartbeats of a consumer group's live consumers: a sorted set scored by expiry (fervid/bus.py)."""
        return f"{self.namespace}:consumers:{group}"

    def stream_stats(self, stream: str) -> str:
        """Counters a producer keeps beside a stream (published, dropped) when it names no other key."""
        if not stream.startswith(f"{self.namespace}:"):
            raise ValueError(f"stream {stream[:100]!r} is outside namespace {self.namespace!r}")
        return f"{stream}:stats"

    def stage_streams(self, cameras: Iterable[str]) -> list[tuple[str, str]]:
        """(stream, consuming group) of every hop of the pipeline, for these cameras' frame streams."""
        pairs = [(self.frames(c), DETECTOR_GROUP) for c in cameras]
        return [*pairs, (self.faces, CLASSIFIER_GROUP), (self.events, STORAGE_GROUP)]


def validate_camera_name(name: str) -> str:
    if not isinstance(name, str) or not _CAMERA_NAME.match(name):
        raise ValueError(
            f"camera name {cut(repr(name))} is invalid: use 1-64 letters, digits, '_', '.' or '-', starting with a "
            "letter or digit"
        )
    return name


class BadMessage(ValueError):
    """A stream entry that can never be processed (malformed, wrong version, corrupt payload)."""


# A stream entry's fields: bytes keys as Redis returns them, str keys as `encode()` builds them.
Fields = Mapping[bytes, bytes] | Mapping[str, bytes] | Mapping[bytes | str, bytes | str]


def _get(fields: Fields, key: str) -> bytes:
    either: Mapping[Any, bytes | str] = fields
    value = either.get(key.encode(), either.get(key))
    if value is None:
        raise BadMessage(f"missing field {key!r}")
    return value if isinstance(value, bytes) else str(value).encode()


def _flat(obj: FrameRef | Box) -> dict[str, Any]:
    """The fields of a flat dataclass as a dict: `dataclasses.asdict` deep-copies, several times slower, and its
    cost showed in every message the classifier publishes."""
    return {name: getattr(obj, name) for name in _FIELD_NAMES[type(obj)]}


def _finite(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


@dataclass(frozen=True)
class FrameRef:
    """The identity of one analysed frame; ``(camera, seq)`` is unique for the life of a camera."""

    camera: str
    seq: int
    capture_ts: float  # unix seconds: wall clock for live sources, PTS-derived for files
    width: int
    height: int

    def __post_init__(self) -> None:
        validate_camera_name(self.camera)
        if self.seq < 0:
            raise ValueError(f"seq must be >= 0, got {self.seq}")
        _finite("capture_ts", self.capture_ts)
        if not (0 < self.width <= 16384 and 0 < self.height <= 16384):
            raise ValueError(f"frame size must be within 1..16384, got {self.width}x{self.height}")

    @property
    def ts_ms(self) -> int:
        """The capture time as integer epoch milliseconds, as storage keeps it."""
        return round(self.capture_ts * 1000)


def parse_utc(text: str) -> datetime:
    """An ISO-8601 time (``Z`` for UTC allowed; without a zone: UTC, as every time fervid keeps) as an aware
    datetime. ValueError when `text` is not one."""
    t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Box:
    """Pixel box in the frame: top-left corner and size."""

    x: float
    y: float
    w: float
    h: float

    def __post_init__(self) -> None:
        for name in ("x", "y", "w", "h"):
            _finite(name, getattr(self, name))
        if self.w <= 0 or self.h <= 0:
            raise ValueError(f"box width and height must be > 0, got {self.w}x{self.h}")


_FIELD_NAMES = {cls: tuple(f.name for f in dataclass_fields(cls)) for cls in (FrameRef, Box)}


def _unit(name: str, value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value}")


@dataclass(frozen=True, kw_only=True)
class Face:
    """One detected face; ``crop`` is a JPEG of the square, margin-expanded face region."""

    index: int  # position within its frame, 0-based; part of the idempotency key
    box: Box
    score: float
    crop: bytes
    track_id: int | None = None
    quality: float | None = None  # size x sharpness of the crop in [0, 1] (detector/crops.py); stored per event

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ValueError(f"face index must be >= 0, got {self.index}")
        _unit("detector score", self.score)
        _unit("quality", self.quality)


@dataclass(frozen=True, kw_only=True)
class Emotion:
    """One classified face: the face's detection plus 7 probabilities in :data:`EMOTIONS` order.

    Every field is a column of the ``events`` table (see :data:`EVENT_COLUMNS`)."""

    index: int
    box: Box
    score: float
    probs: tuple[float, ...]
    track_id: int | None = None
    quality: float | None = None
    # The track's consensus label (classifier/smoothing.py); None when the face has no track or no consensus yet.
    smoothed_label: str | None = None
    # The argmax of probs (the first maximum), set at construction: storage reads it for every row.
    label: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        p = self.probs
        if len(p) != len(EMOTIONS):
            raise ValueError(f"probabilities must have {len(EMOTIONS)} entries ({', '.join(EMOTIONS)}), got {len(p)}")
        if any(not math.isfinite(x) or x < -1e-6 or x > 1 + 1e-6 for x in p):
            raise ValueError(f"probabilities must be in [0, 1], got {p}")
        if abs(sum(p) - 1.0) > 1e-3:
            raise ValueError(f"probabilities must sum to 1, got {sum(p):.4f}")
        _unit("quality", self.quality)
        if self.smoothed_label is not None and self.smoothed_label not in EMOTIONS:
            raise ValueError(f"smoothed_label must be one of {EMOTIONS}, got {self.smoothed_label!r}")
        object.__setattr__(self, "label", EMOTIONS[p.index(max(p))])

    @classmethod
    def from_face(cls, face: Face, *, probs: tuple[float, ...], smoothed_label: str | None = None) -> Emotion:
        """The emotion of `face`: every detection field the two share is carried over."""
        detection = {name: getattr(face, name) for name in _CARRIED}
        return cls(**detection, probs=probs, smoothed_label=smoothed_label)


# The fields of a Face that its Emotion carries over (all but the crop): a field added to both travels on.
_EMOTION_FIELDS = {f.name for f in dataclass_fields(Emotion)}
_CARRIED = tuple(f.name for f in dataclass_fields(Face) if f.name in _EMOTION_FIELDS)

SqlType = Literal["text", "int", "bigint", "float8"]


@dataclass(frozen=True)
class EventColumn:
    """One column of the ``events`` table and the value it stores, named by an attribute path on the
    :class:`EventsMsg` it comes from: ``frame.<attr>`` (its :class:`FrameRef`), ``emotion.<attr>`` (each
    :class:`Emotion`; ``emotion.probs[i]`` is one probability) or ``message.<attr>``."""

    name: str
    type: SqlType  # PostgreSQL's name; storage/db.py maps it to SQLAlchemy's
    source: str
    nullable: bool = False
    length: int | None = None  # text columns: the longest value


# The event row, defined once: one row per face per frame. storage/db.py builds the table from it and
# storage/write.py its insert. A new column is a line here (and a field on Emotion, carried by the encode/decode
# of EventsMsg below, when the value is new) plus a migration (storage/migrations/versions/).
EVENT_COLUMNS: tuple[EventColumn, ...] = (
    EventColumn("camera", "text", "frame.camera", length=64),
    EventColumn("frame_seq", "bigint", "frame.seq"),
    EventColumn("face_index", "int", "emotion.index"),
    EventColumn("ts_ms", "bigint", "frame.ts_ms"),
    *(EventColumn(c, "float8", f"emotion.box.{c}") for c in ("x", "y", "w", "h")),
    EventColumn("det_score", "float8", "emotion.score"),
    EventColumn("track_id", "bigint", "emotion.track_id", nullable=True),
    *(EventColumn(f"p_{e}", "float8", f"emotion.probs[{i}]") for i, e in enumerate(EMOTIONS)),
    EventColumn("label", "text", "emotion.label", length=16),
    EventColumn("label_smoothed", "text", "emotion.smoothed_label", nullable=True, length=16),
    EventColumn("model", "text", "message.model", length=128),
    EventColumn("detector", "text", "message.detector", length=64),
    EventColumn("quality", "float8", "emotion.quality", nullable=True),
)


M = TypeVar("M", bound="Message")


@dataclass(frozen=True)
class Message:
    """Base of every bus message: encodes to and decodes from a flat stream entry."""

    TYPE: ClassVar[str] = ""

    def _meta_and_blobs(self) -> tuple[dict[str, Any], list[bytes]]:
        raise NotImplementedError

    @classmethod
    def _from_meta(cls: type[M], meta: dict[str, Any], blobs: list[bytes]) -> M:
        raise NotImplementedError

    def encode(self) -> dict[str, bytes]:
        meta, blobs = self._meta_and_blobs()
        fields = {"v": str(SCHEMA_VERSION).encode(), "t": self.TYPE.encode(), "m": json.dumps(meta).encode()}
        fields.update({f"b{i}": blob for i, blob in enumerate(blobs)})
        return fields

    @classmethod
    def decode(cls: type[M], fields: Fields) -> M:
        version = _get(fields, "v").decode(errors="replace")
        if version != str(SCHEMA_VERSION):
            raise BadMessage(f"schema version {version!r} is not supported (this build reads {SCHEMA_VERSION})")
        kind = _get(fields, "t").decode(errors="replace")
        if kind != cls.TYPE:
            raise BadMessage(f"expected a {cls.TYPE!r} message, got {kind!r}")
        try:
            meta = json.loads(_get(fields, "m"))
            n_blobs = int(meta.get("blobs", 0))
            blobs = [_get(fields, f"b{i}") for i in range(n_blobs)]
            return cls._from_meta(meta, blobs)
        except BadMessage:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise BadMessage(f"malformed {cls.TYPE} message: {exc}") from exc


@dataclass(frozen=True)
class FrameMsg(Message):
    """ingest → detector: one sampled frame as JPEG."""

    TYPE: ClassVar[str] = "frame"
    frame: FrameRef
    jpeg: bytes
    live: bool = False  # live sources favour freshness (drop oldest); files favour completeness

    def _meta_and_blobs(self) -> tuple[dict[str, Any], list[bytes]]:
        return {"frame": _flat(self.frame), "live": self.live, "blobs": 1}, [self.jpeg]

    @classmethod
    def _from_meta(cls, meta: dict[str, Any], blobs: list[bytes]) -> FrameMsg:
        return cls(frame=FrameRef(**meta["frame"]), jpeg=blobs[0], live=bool(meta.get("live", False)))


@dataclass(frozen=True, kw_only=True)
class FacesMsg(Message):
    """detector → classifier: every face found in one frame (possibly none)."""

    TYPE: ClassVar[str] = "faces"
    frame: FrameRef
    detector: str
    faces: tuple[Face, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if [f.index for f in self.faces] != list(range(len(self.faces))):
            raise ValueError("face indices must be 0..n-1 in order")

    def _meta_and_blobs(self) -> tuple[dict[str, Any], list[bytes]]:
        faces = [
            {"index": f.index, "box": _flat(f.box), "score": f.score, "track_id": f.track_id, "quality": f.quality}
            for f in self.faces
        ]
        meta = {"frame": _flat(self.frame), "detector": self.detector, "faces": faces, "blobs": len(self.faces)}
        return meta, [f.crop for f in self.faces]

    @classmethod
    def _from_meta(cls, meta: dict[str, Any], blobs: list[bytes]) -> FacesMsg:
        faces = tuple(
            Face(
                index=int(f["index"]),
                box=Box(**f["box"]),
                score=float(f["score"]),
                crop=blob,
                track_id=None if f.get("track_id") is None else int(f["track_id"]),
                quality=None if f.get("quality") is None else float(f["quality"]),
            )
            for f, blob in zip(meta["faces"], blobs, strict=True)
        )
        return cls(frame=FrameRef(**meta["frame"]), detector=str(meta["detector"]), faces=faces)


@dataclass(frozen=True, kw_only=True)
class EventsMsg(Message):
    """classifier → storage: the emotions of every face in one frame (possibly none)."""

    TYPE: ClassVar[str] = "events"
    frame: FrameRef
    detector: str
    model: str
    emotions: tuple[Emotion, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if [e.index for e in self.emotions] != list(range(len(self.emotions))):
            raise ValueError("face indices must be 0..n-1 in order")

    def _meta_and_blobs(self) -> tuple[dict[str, Any], list[bytes]]:
        emotions = [
            {
                "index": e.index,
                "box": _flat(e.box),
                "score": e.score,
                "probs": list(e.probs),
                "track_id": e.track_id,
                "quality": e.quality,
                "smoothed_label": e.smoothed_label,
            }
            for e in self.emotions
        ]
        return {"frame": _flat(self.frame), "detector": self.detector, "model": self.model, "emotions": emotions}, []

    @classmethod
    def _from_meta(cls, meta: dict[str, Any], blobs: list[bytes]) -> EventsMsg:
        emotions = tuple(
            Emotion(
                index=int(e["index"]),
                box=Box(**e["box"]),
                score=float(e["score"]),
                probs=tuple(float(p) for p in e["probs"]),
                track_id=None if e.get("track_id") is None else int(e["track_id"]),
                quality=None if e.get("quality") is None else float(e["quality"]),
                smoothed_label=e.get("smoothed_label"),
            )
            for e in meta["emotions"]
        )
        return cls(
            frame=FrameRef(**meta["frame"]), detector=str(meta["detector"]), model=str(meta["model"]), emotions=emotions
        )


Policy = Literal["drop_oldest", "wait"]
