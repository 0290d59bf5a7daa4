"""End to end: a clip with two real moving faces → ingest → detector → classifier → storage → timeline,
through the real bus on a real (embedded) Redis and a real SQLite file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from fervid.pipeline import run_pipeline
from fervid.sample import GroundTruth
from ingest.runner import SourceSpec
from storage.db import EventRow, FrameRow, make_engine
from storage.timeline import timeline


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def matched(truth: list[tuple[float, ...]], found: list[tuple[float, ...]], threshold: float = 0.5) -> int:
    """Greedy one-to-one matching at IoU >= threshold."""
    left, hits = list(found), 0
    for t in truth:
        best = max(left, key=lambda f: iou(t, f), default=None)
        if best is not None and iou(t, best) >= threshold:
            left.remove(best)
            hits += 1
    return hits


@pytest.fixture(scope="module", params=["retinaface", "mtcnn"])
def run(
    request: pytest.FixtureRequest,
    sample_clip: tuple[Path, GroundTruth],
    tmp_path_factory: pytest.TempPathFactory,
    embedded_redis,
) -> tuple:
    """The whole pipeline once per detector backend, each on a fresh Redis database and SQLite file."""
    import redis

    clip, truth = sample_clip
    from fervid.settings import load_settings

    redis.Redis.from_url(embedded_redis.url).flushdb()
    settings = load_settings(data_dir=tmp_path_factory.mktemp("e2e"), detector__backend=request.param)
    summary = run_pipeline([SourceSpec("lobby", str(clip))], settings, embedded_redis.url)
    return summary, truth, settings


def test_every_frame_is_stored_once(run: tuple) -> None:
    summary, truth, settings = run
    engine = make_engine(settings.resolved_db_url)
    with engine.connect() as conn:
        seqs = list(
            conn.execute(select(FrameRow.seq).where(FrameRow.camera == "lobby").order_by(FrameRow.seq)).scalars()
        )
    assert seqs == list(range(len(truth.boxes)))
    assert summary.frames_stored == summary.frames_published == len(truth.boxes)
    assert summary.dead_letters == 0 and summary.dropped == 0


def test_every_face_of_every_frame_becomes_a_row(run: tuple) -> None:
    _summary, truth, settings = run
    engine = make_engine(settings.resolved_db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            select(EventRow.frame_seq, EventRow.x, EventRow.y, EventRow.w, EventRow.h).where(EventRow.camera == "lobby")
        ).all()
    by_frame: dict[int, list[tuple[float, ...]]] = {}
    for seq, x, y, w, h in rows:
        by_frame.setdefault(seq, []).append((x, y, x + w, y + h))
    hits = sum(matched(boxes, by_frame.get(seq, [])) for seq, boxes in enumerate(truth.boxes))
    recall = hits / truth.faces
    precision = hits / len(rows)
    assert recall >= 0.95, f"recall {recall:.3f}"
    assert precision >= 0.95, f"precision {precision:.3f}"
    assert abs(len(rows) - truth.faces) <= 0.05 * truth.faces


def test_the_smiling_face_is_happy(run: tuple) -> None:
    summary, _, _ = run
    assert summary.labels.most_common(1)[0][0] == "happy"
    assert summary.labels["happy"] >= 0.9 * summary.faces


def test_timeline_json_sums_to_the_row_count(run: tuple) -> None:
    summary, _, settings = run
    engine = make_engine(settings.resolved_db_url)
    buckets = timeline(engine, "lobby", bucket_ms=1000)
    with engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(EventRow)).scalar_one()
    assert sum(b["faces"] for b in buckets) == rows == summary.faces
    assert all(sum(b["counts"].values()) == b["faces"] for b in buckets)
    assert all(abs(sum(b["mean"].values()) - 1) < 1e-3 for b in buckets)
    assert max(buckets, key=lambda b: b["faces"])["counts"]["happy"] > 0
    json.dumps(buckets)  # serialisable as the CLI prints it


def test_tracks_are_stable_for_smoothly_moving_faces(run: tuple) -> None:
    """Each of the two faces keeps one track id over >= 90% of its frames."""
    _summary, truth, settings = run
    engine = make_engine(settings.resolved_db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            select(EventRow.frame_seq, EventRow.x, EventRow.track_id).where(EventRow.camera == "lobby")
        ).all()
    for side in (0, 1):  # face 0 lives on the left half of the frame, face 1 on the right
        ids = [tid for _, x, tid in rows if (x > truth.width / 2) == bool(side)]
        assert ids, f"no rows for face {side}"
        most = max(set(ids), key=ids.count)
        assert most is not None
        assert ids.count(most) >= 0.9 * len(truth.boxes), (
            f"face {side}: {ids.count(most)} of {len(truth.boxes)} frames on track {most}"
        )
