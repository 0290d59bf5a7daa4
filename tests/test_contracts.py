from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pytest
from storage_data import event_row

from fervid.contracts import (
    EMOTIONS,
    EVENT_COLUMNS,
    BadMessage,
    Box,
    Emotion,
    EventsMsg,
    Face,
    FacesMsg,
    FrameMsg,
    FrameRef,
    Keys,
)

KEYS = Keys()  # the default namespace

REF = FrameRef("cam-1", 7, 1_700_000_000.25, 640, 480)
PROBS = (0.05, 0.0, 0.05, 0.7, 0.1, 0.05, 0.05)


def as_redis(fields: dict[str, bytes]) -> dict[bytes, bytes]:
    """What a stream entry looks like when read back from Redis."""
    return {k.encode(): v for k, v in fields.items()}


@pytest.mark.parametrize(
    "msg",
    [
        FrameMsg(REF, b"\xff\xd8jpeg\x00bytes", live=True),
        FacesMsg(
            frame=REF,
            detector="mtcnn",
            faces=(
                Face(index=0, box=Box(1, 2, 30, 40), score=0.99, crop=b"\x00crop", track_id=3, quality=0.5),
                Face(index=1, box=Box(100, 2, 30, 40), score=0.9, crop=b"c2"),
            ),
        ),
        FacesMsg(frame=REF, detector="mtcnn", faces=()),
        EventsMsg(
            frame=REF,
            detector="mtcnn",
            model="mini_xception",
            emotions=(
                Emotion(
                    index=0,
                    box=Box(1, 2, 30, 40),
                    score=0.99,
                    probs=PROBS,
                    track_id=3,
                    quality=0.25,
                    smoothed_label="happy",
                ),
                Emotion(index=1, box=Box(100, 2, 30, 40), score=0.9, probs=PROBS),
            ),
        ),
    ],
)
def test_round_trip(msg: FrameMsg | FacesMsg | EventsMsg) -> None:
    assert type(msg).decode(as_redis(msg.encode())) == msg


def test_emotion_label_is_argmax() -> None:
    assert Emotion(index=0, box=Box(0, 0, 1, 1), score=1.0, probs=PROBS).label == "happy"
    tie = (0.3, 0.0, 0.0, 0.3, 0.2, 0.1, 0.1)
    assert Emotion(index=0, box=Box(0, 0, 1, 1), score=1.0, probs=tie).label == "angry"  # the first maximum


def good_fields() -> dict[bytes, bytes]:
    return as_redis(FrameMsg(REF, b"jpeg").encode())


def with_meta(**changes: object) -> dict[bytes, bytes]:
    fields = good_fields()
    meta = json.loads(fields[b"m"])
    meta["frame"].update(changes)
    fields[b"m"] = json.dumps(meta).encode()
    return fields


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({**good_fields(), b"v": b"99"}, "schema version"),
        ({k: v for k, v in good_fields().items() if k != b"m"}, "missing field 'm'"),
        ({k: v for k, v in good_fields().items() if k != b"b0"}, "missing field 'b0'"),
        ({**good_fields(), b"t": b"faces"}, "expected a 'frame'"),
        ({**good_fields(), b"m": b"{not json"}, "malformed"),
        (with_meta(seq=-1), "seq must be >= 0"),
        (with_meta(width=0), "frame size"),
        (with_meta(camera="bad name!"), "camera name"),
        (with_meta(capture_ts=float("nan")), "finite"),
        (with_meta(extra_field=1), "malformed"),
    ],
)
def test_bad_messages_say_why(fields: dict[bytes, bytes], reason: str) -> None:
    with pytest.raises(BadMessage, match=reason):
        FrameMsg.decode(fields)


@pytest.mark.parametrize(
    ("probs", "reason"),
    [((0.5, 0.5), "7 entries"), ((1.0,) * 7, "sum to 1"), ((-0.5, 1.5, 0, 0, 0, 0, 0), r"in \[0, 1\]")],
)
def test_emotion_validates_probabilities(probs: tuple[float, ...], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        Emotion(index=0, box=Box(0, 0, 1, 1), score=1.0, probs=probs)


def test_face_indices_must_be_dense() -> None:
    with pytest.raises(ValueError, match=r"0\.\.n-1"):
        FacesMsg(frame=REF, detector="mtcnn", faces=(Face(index=1, box=Box(0, 0, 1, 1), score=0.9, crop=b"c"),))


def test_stream_names_reject_injection() -> None:
    assert KEYS.frames("lobby.cam_2") == "fervid:frames:lobby.cam_2"
    with pytest.raises(ValueError):
        KEYS.frames("a:b")
    assert len(EMOTIONS) == 7


FACE = Face(index=0, box=Box(1, 2, 30, 40), score=0.97, crop=b"c", track_id=5, quality=0.75)


def test_event_columns_store_every_emotion_field_with_its_type() -> None:
    """EVENT_COLUMNS is the one definition of the events row: every source names a real attribute, every field
    of Emotion is stored, and each value has its column's type (None only where the column is nullable)."""
    emotion = Emotion.from_face(FACE, probs=PROBS, smoothed_label="sad")
    msg = EventsMsg(frame=REF, detector="mtcnn", model="mini_xception", emotions=(emotion,))
    row = event_row(msg, emotion)
    assert list(row) == [c.name for c in EVENT_COLUMNS] and len(set(row)) == len(row)
    python_type: dict[str, type | tuple[type, ...]] = {"text": str, "int": int, "bigint": int, "float8": (int, float)}
    for c in EVENT_COLUMNS:
        assert isinstance(row[c.name], python_type[c.type]), c
        assert (c.type == "text") == (c.length is not None), c
    stored = {c.source.split(".")[1].split("[")[0] for c in EVENT_COLUMNS if c.source.startswith("emotion.")}
    assert stored == {f.name for f in dataclasses.fields(Emotion)}
    bare = Emotion(index=0, box=Box(1, 2, 3, 4), score=0.5, probs=PROBS)
    nulls = {k for k, v in event_row(msg, bare).items() if v is None}
    assert nulls == {c.name for c in EVENT_COLUMNS if c.nullable} and "quality" in nulls
    assert row["ts_ms"] == 1_700_000_000_250 and row["label"] == "happy" and row["p_happy"] == 0.7


def test_from_face_carries_every_field_the_two_share() -> None:
    assert all(getattr(FACE, f.name) != f.default for f in dataclasses.fields(Face))  # FACE sets every field
    emotion = Emotion.from_face(FACE, probs=PROBS)
    shared = {f.name for f in dataclasses.fields(Face)} & {f.name for f in dataclasses.fields(Emotion)}
    assert {"index", "box", "score", "track_id", "quality"} <= shared
    assert all(getattr(emotion, name) == getattr(FACE, name) for name in shared)
    assert emotion.probs == PROBS and emotion.smoothed_label is None


def test_faces_and_emotions_are_built_by_keyword_only() -> None:
    emotion: Any = Emotion  # a type checker rejects the positional calls below already
    face: Any = Face
    with pytest.raises(TypeError):
        emotion(0, Box(0, 0, 1, 1), 0.9, PROBS)
    with pytest.raises(TypeError):
        face(0, Box(0, 0, 1, 1), 0.9, b"c")


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda q: Face(index=0, box=Box(0, 0, 1, 1), score=0.9, crop=b"c", quality=q), "quality must be in"),
        (lambda q: Emotion(index=0, box=Box(0, 0, 1, 1), score=0.9, probs=PROBS, quality=q), "quality must be in"),
    ],
)
@pytest.mark.parametrize("quality", [-0.1, 1.5, math.nan])
def test_quality_is_within_zero_and_one(build, reason: str, quality: float) -> None:
    with pytest.raises(ValueError, match=reason):
        build(quality)


def test_events_from_an_older_classifier_still_decode() -> None:
    """Before quality was stored the classifier sent a ``smoothed`` EMA per face and no ``quality``: such
    entries, still in the stream during an upgrade, decode (the EMA is ignored, quality is None)."""
    emotion = Emotion(index=0, box=Box(1, 2, 30, 40), score=0.9, probs=PROBS, track_id=1, smoothed_label="happy")
    msg = EventsMsg(frame=REF, detector="mtcnn", model="m", emotions=(emotion,))
    fields = as_redis(msg.encode())
    meta = json.loads(fields[b"m"])
    del meta["emotions"][0]["quality"]
    meta["emotions"][0]["smoothed"] = list(PROBS)
    fields[b"m"] = json.dumps(meta).encode()
    assert EventsMsg.decode(fields) == msg
