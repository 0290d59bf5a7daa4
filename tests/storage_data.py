"""Deterministic EventsMsg generators for the storage tests, and what a run stored."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from fervid.contracts import EMOTIONS, EVENT_COLUMNS, Box, Emotion, EventsMsg, FrameRef

T0 = 1_764_028_800.0  # 2025-11-25T00:00:00Z


def probs(rng: random.Random, favourite: int) -> tuple[float, ...]:
    raw = [rng.random() * 0.2 for _ in EMOTIONS]
    raw[favourite] += 1.0
    s = sum(raw)
    return tuple(x / s for x in raw)


def make_messages(
    n_frames: int, camera: str = "cam1", seed: int = 1, fps: float = 5.0, t0: float = T0, faces: int = 2
) -> list[EventsMsg]:
    rng = random.Random(seed)
    out = []
    for seq in range(n_frames):
        emotions = []
        for i in range(rng.randint(0, faces)):
            p = probs(rng, (seq // 7 + i * 3) % len(EMOTIONS))
            consensus = EMOTIONS[(seq // 7 + i * 3 + 1) % 7] if seq % 3 else None
            quality = None if (seq + i) % 11 == 0 else ((seq * 7 + i * 3) % 97) / 96  # some unknown, as before 0004
            box = Box(10.0 + i * 50, 20.0, 40.0, 40.0)
            emotions.append(
                Emotion(
                    index=i, box=box, score=0.99, probs=p, track_id=i + 1, quality=quality, smoothed_label=consensus
                )
            )
        frame = FrameRef(camera=camera, seq=seq, capture_ts=t0 + seq / fps, width=640, height=480)
        out.append(EventsMsg(frame=frame, detector="mtcnn", model="mini_xception", emotions=tuple(emotions)))
    return out


def event_row(msg: EventsMsg, emotion: Emotion) -> dict[str, Any]:
    """The ``events`` row of one face by column name: EVENT_COLUMNS read plainly, one attribute path at a time
    (storage's writer builds the same values in bulk; the tests hold the two equal)."""
    roots = {"frame": msg.frame, "emotion": emotion, "message": msg}
    row = {}
    for col in EVENT_COLUMNS:
        root, _, path = col.source.partition(".")
        value: Any = roots[root]
        for part in path.split("."):
            name, _, index = part.partition("[")
            value = getattr(value, name)
            if index:
                value = value[int(index.rstrip("]"))]
        row[col.name] = value
    return row


def stored(db_url: str, camera: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(seq, faces) per stored frame, and (frame_seq, face_index) per stored event (SQLite or PostgreSQL)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError, ProgrammingError

    if db_url.startswith("sqlite:///") and not Path(db_url.removeprefix("sqlite:///")).exists():
        return [], []
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            frames = conn.execute(
                text("select seq, faces from frames where camera = :c order by seq"), {"c": camera}
            ).all()
            events = conn.execute(
                text("select frame_seq, face_index from events where camera = :c order by 1, 2"), {"c": camera}
            ).all()
    except (OperationalError, ProgrammingError):  # no schema yet
        return [], []
    finally:
        engine.dispose()
    return [(seq, faces) for seq, faces in frames], [(seq, index) for seq, index in events]
