"""`fervid demo rtsp://…` reconnects: the whole pipeline (run_pipeline, as the demo runs it) on the real RTSP
server, which is SIGKILLed and restarted mid-run. The pipeline keeps going and the frames after the restart
are stored with later sequence numbers."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from rtsp_fixtures import RtspServer, ServerFactory
from sqlalchemy import select
from waiting import wait_for

from fervid.bus import EmbeddedRedis
from fervid.pipeline import run_pipeline
from fervid.settings import Settings, load_settings
from fervid.worker import StopFlag
from ingest.runner import SourceSpec
from storage.db import FrameRow, create_schema, make_engine


def test_pipeline_on_rtsp_survives_a_server_restart(
    rtsp_server_factory: ServerFactory,
    embedded_redis: EmbeddedRedis,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    server = rtsp_server_factory(("cam",))
    redis.Redis.from_url(embedded_redis.url).flushdb()
    settings = load_settings(data_dir=tmp_path)
    stop = StopFlag()
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["summary"] = run_pipeline(
                [SourceSpec("door", server.url(), fps=5)], settings, embedded_redis.url, stop=stop
            )
        except BaseException as exc:
            result["error"] = exc

    engine = make_engine(settings.resolved_db_url)
    create_schema(engine)  # before the pipeline starts, so the polling below never meets a half-made schema
    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def stored() -> list[tuple[int, int]]:
        with engine.connect() as conn:
            return [
                tuple(r)
                for r in conn.execute(
                    select(FrameRow.seq, FrameRow.ts_ms).where(FrameRow.camera == "door").order_by(FrameRow.seq)
                )
            ]

    try:
        wait_for(
            "frames stored before the kill (models load first)", lambda: len(stored()) >= 5 or "error" in result, 90
        )
        assert "error" not in result, result.get("error")
        server.kill()
        killed_at = time.time()
        time.sleep(1.5)
        before = stored()
        server.start()  # same port
        restarted_at = time.time()
        wait_for(
            "frames stored after the restart",
            lambda: sum(ts / 1000 > restarted_at for _, ts in stored()) >= 5 or "error" in result,
            30,
        )
        assert thread.is_alive() and "error" not in result, result.get("error")
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert "error" not in result, result.get("error")
    rows = stored()
    seqs = [s for s, _ in rows]
    assert seqs == sorted(set(seqs))
    after = [(s, ts) for s, ts in rows if ts / 1000 > restarted_at]
    assert after and min(s for s, _ in after) > max(s for s, _ in before)
    assert not any(killed_at + 0.5 < ts / 1000 < restarted_at for _, ts in rows), (
        "frames stamped while the server was down"
    )
    summary = result["summary"]
    assert summary.frames_published >= len(rows) >= 10
    assert "reconnecting in" in caplog.text and "door" in caplog.text


def test_a_wrong_path_ends_the_live_run_instead_of_retrying(
    rtsp_server: RtspServer, redis_client: redis.Redis, settings: Settings
) -> None:
    """A typo in a demo's URL is an error at once (the runner alone would retry it every minute)."""
    from fervid.bus import Bus
    from fervid.errors import SourceError
    from ingest.runner import run_source

    started = time.monotonic()
    with pytest.raises(
        SourceError, match=r"rtsp://\*\*\*@127.0.0.1:\d+/nope: no such stream path on the camera \(404 Not Found\)"
    ):
        run_source(Bus(redis_client, "ingest"), SourceSpec("typo", rtsp_server.url("nope")), settings)
    assert time.monotonic() - started < 30
