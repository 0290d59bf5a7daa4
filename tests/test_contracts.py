from __future__ import annotations

import json

import pytest

from fervid.contracts import EMOTIONS, BadMessage, Box, Emotion, EventsMsg, Face, FacesMsg, FrameMsg, FrameRef, Keys

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
            REF,
            "mtcnn",
            (
                Face(0, Box(1, 2, 30, 40), 0.99, b"\x00crop", track_id=3, quality=0.5),
                Face(1, Box(100, 2, 30, 40), 0.9, b"c2"),
            ),
        ),
        FacesMsg(REF, "mtcnn", ()),
        EventsMsg(
            REF,
            "mtcnn",
            "mini_xception",
            (Emotion(0, Box(1, 2, 30, 40), 0.99, PROBS, track_id=3, smoothed=PROBS, smoothed_label="happy"),),
        ),
    ],
)
def test_round_trip(msg: FrameMsg | FacesMsg | EventsMsg) -> None:
    assert type(msg).decode(as_redis(msg.encode())) == msg


def test_emotion_label_is_argmax() -> None:
    assert Emotion(0, Box(0, 0, 1, 1), 1.0, PROBS).label == "happy"


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
        Emotion(0, Box(0, 0, 1, 1), 1.0, probs)


def test_face_indices_must_be_dense() -> None:
    with pytest.raises(ValueError, match="0..n-1"):
        FacesMsg(REF, "mtcnn", (Face(1, Box(0, 0, 1, 1), 0.9, b"c"),))


def test_stream_names_reject_injection() -> None:
    assert KEYS.frames("lobby.cam_2") == "fervid:frames:lobby.cam_2"
    with pytest.raises(ValueError):
        KEYS.frames("a:b")
    assert len(EMOTIONS) == 7
