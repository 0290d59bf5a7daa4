"""`fervid demo --annotate OUT.mp4`: after the run, the source video again, with each analysed frame's faces drawn.

The simplest correct join: the pipeline has stored every face of every frame with (camera, seq), and ingest's
sequence numbers follow the frames it kept. Reading the file again through ingest's own decode → sample loop
(:func:`ingest.frames.sampled`) and at the same target size gives frame ``first_seq + k`` for the k-th kept
frame, in the same pixel coordinates as the boxes.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Any

from fervid.errors import FervidError

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov")


def check_output(path: Path) -> None:
    """Fail before the run, in one line, when the annotated video could not be written."""
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise FervidError(f"--annotate {path}: use a video file name ending in {', '.join(VIDEO_SUFFIXES)}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FervidError(f"--annotate {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or path.is_dir():
        raise FervidError(f"--annotate {path}: cannot write there")


def write_annotated(spec: Any, first_seq: int, settings: Any, out: Path) -> int:
    """Write `spec`'s (ingest.runner.SourceSpec, a file) analysed frames with their stored faces; returns the
    number of frames written."""
    import av
    from sqlalchemy import select

    from detector.annotate import FaceLabel, FrameAnnotator
    from fervid.contracts import EMOTIONS
    from ingest.frames import sampled
    from ingest.jpeg import fit
    from ingest.source import open_container
    from storage.db import events_table, make_engine

    faces: dict[int, list[FaceLabel]] = {}
    engine = make_engine(settings.resolved_db_url)
    with engine.connect() as conn:
        ev = events_table.c
        columns = [ev.frame_seq, ev.x, ev.y, ev.w, ev.h, ev.track_id, ev.label, *(ev[f"p_{e}"] for e in EMOTIONS)]
        rows = conn.execute(select(*columns).where(ev.camera == spec.camera, ev.frame_seq >= first_seq))
        for seq, x, y, w, h, track_id, label, *probs in rows:
            faces.setdefault(seq, []).append(FaceLabel((x, y, x + w, y + h), track_id, label, tuple(probs)))
    annotator = FrameAnnotator()
    written = 0
    with open_container(spec.url) as container, av.open(str(out), "w") as sink:
        rate = Fraction(spec.fps or float(container.streams.video[0].average_rate or 30)).limit_denominator(1001)
        stream = None
        for frame in sampled(container, spec.url, fps=spec.fps, seconds=spec.seconds):
            image = fit(frame.image, settings.ingest.max_size)  # ingest's geometry: the boxes' pixel coordinates
            image = annotator.annotate(image, faces.get(first_seq + written, []))
            image = image[: image.shape[0] // 2 * 2, : image.shape[1] // 2 * 2]  # H.264 4:2:0 needs even sides
            if stream is None:
                stream = sink.add_stream("libx264", rate=rate)
                stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "yuv420p"
                stream.options = {"crf": "20", "preset": "veryfast"}
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                sink.mux(packet)
            written += 1
        if stream is not None:
            for packet in stream.encode():
                sink.mux(packet)
    return written
