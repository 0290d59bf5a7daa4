"""The HTTP API on real SQLite (and PostgreSQL for readiness), through FastAPI's TestClient."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from storage_data import make_messages
from typer.testing import CliRunner

from fervid.cli import app as cli_app
from fervid.contracts import FrameMsg, FrameRef, Keys
from storage.api import create_app
from storage.db import create_schema, insert_idempotent, make_engine

KEYS = Keys()  # the default namespace

TOKEN = "s3cret-token"


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'api.db'}"
    engine = make_engine(url)
    create_schema(engine)
    insert_idempotent(engine, make_messages(200) + make_messages(50, camera="cam2", seed=3))
    engine.dispose()
    return url


@pytest.fixture
def client(db_url: str, redis_url: str):
    engine = make_engine(db_url)
    with TestClient(create_app(engine, redis_url=redis_url)) as c:
        yield c
    engine.dispose()


def test_timeline_json_is_the_same_as_the_cli(client: TestClient, db_url: str) -> None:
    args = ["--since", "2025-11-25T00:00:00Z", "--until", "2025-11-25T00:01:00Z", "--bucket", "5s"]
    result = CliRunner().invoke(cli_app, ["timeline", "cam1", "--db", db_url, "--format", "json", *args])
    assert result.exit_code == 0, result.output
    r = client.get(
        "/cameras/cam1/timeline",
        params={"since": "2025-11-25T00:00:00Z", "until": "2025-11-25T00:01:00Z", "bucket": "5s"},
    )
    assert r.status_code == 200
    assert r.json() == json.loads(result.stdout) and len(r.json()) == 8


def test_cameras_events_paging_and_filters(client: TestClient) -> None:
    assert [c["name"] for c in client.get("/cameras").json()] == ["cam1", "cam2"]
    seen, after = [], None
    while True:
        page = client.get(
            "/events", params={"camera": "cam2", "limit": 17, **({"after_id": after} if after else {})}
        ).json()
        seen += page["events"]
        after = page["next_after_id"]
        if after is None:
            break
    assert len(seen) == len({e["id"] for e in seen}) > 17
    assert {e["camera"] for e in seen} == {"cam2"}
    happy = client.get("/events", params={"label": "happy", "limit": 1000}).json()["events"]
    assert happy and {e["label"] for e in happy} == {"happy"}
    ranged = client.get(
        "/events", params={"since": "2025-11-25T00:00:10Z", "until": "2025-11-25T00:00:20Z", "limit": 1000}
    ).json()["events"]
    assert ranged and all("2025-11-25T00:00:10" <= e["ts"] < "2025-11-25T00:00:20" for e in ranged)


def test_events_carry_quality_and_filter_on_it(client: TestClient) -> None:
    every = client.get("/events", params={"camera": "cam1", "limit": 1000}).json()["events"]
    known = [e["quality"] for e in every if e["quality"] is not None]
    assert known and len(known) < len(every)  # make_messages leaves some faces' quality unknown
    good = client.get("/events", params={"camera": "cam1", "limit": 1000, "min_quality": 0.5}).json()["events"]
    assert good and [e["id"] for e in good] == [e["id"] for e in every if (e["quality"] or -1) >= 0.5]


@pytest.mark.parametrize(
    "path, params, status, message",
    [
        ("/cameras/nope/timeline", {}, 404, "unknown camera"),
        ("/cameras/cam1/timeline", {"bucket": "100ms"}, 400, "out of range"),
        ("/cameras/cam1/timeline", {"bucket": "soon"}, 400, "invalid duration"),
        (
            "/cameras/cam1/timeline",
            {"since": "2025-11-26T00:00:00Z", "until": "2025-11-25T00:00:00Z"},
            400,
            "empty time range",
        ),
        ("/cameras/cam1/timeline", {"since": "0001-01-01T00:00:00"}, 400, "outside"),
        (
            "/cameras/cam1/timeline",
            {"since": "2020-01-01T00:00:00Z", "until": "2025-01-01T00:00:00Z", "bucket": "1s"},
            400,
            "buckets requested",
        ),
        ("/cameras/cam1/timeline", {"labels": "fancy"}, 422, ""),
        ("/events", {"limit": 0}, 422, ""),
        ("/events", {"label": "bored"}, 400, "unknown label"),
        ("/events", {"camera": "ghost"}, 404, "unknown camera"),
        ("/cameras/cam1/snapshot.jpg", {}, 404, "no frames"),
        ("/events", {"after_id": str(2**70)}, 422, "less than or equal"),  # beyond BIGINT
        ("/events", {"limit": str(10**12)}, 422, "less than or equal"),
        ("/events", {"min_quality": "1.5"}, 422, "less than or equal"),
        ("/events", {"min_quality": "nan"}, 422, ""),
        ("/cameras/cam1/timeline", {"bucket": "9" * 40 + "d"}, 422, "at most"),
        ("/cameras/cam1/timeline", {"bucket": "1e308s"}, 400, "invalid duration"),
        ("/cameras/cam1/timeline", {"since": "2025-11-25T00:00:00+99:00"}, 400, "invalid time"),
        ("/camera/cam1/timeline", {}, 404, "Not Found"),  # URL typo
        ("/cameras/cam1/timelines", {}, 404, "Not Found"),
    ],
)
def test_bad_input_is_4xx_with_a_message(
    client: TestClient, path: str, params: dict, status: int, message: str
) -> None:
    r = client.get(path, params=params)
    assert r.status_code == status, r.text
    assert message in json.dumps(r.json()["detail"])


@pytest.mark.parametrize(
    ("path", "param", "limit"), [("/events", "camera", 64), ("/cameras/cam1/timeline", "bucket", 16)]
)
def test_a_422_echoes_a_long_value_cut(client: TestClient, path: str, param: str, limit: int) -> None:
    """FastAPI's 422 shape (a list of errors with loc, msg, type, input, ctx: what the schema publishes), but a
    5,000-character value comes back cut to ~100 characters, saying how long it was."""
    r = client.get(path, params={param: "x" * 5000})
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == ["query", param] and error["type"] == "string_too_long"
    assert error["msg"] == f"String should have at most {limit} characters" and error["ctx"] == {"max_length": limit}
    assert error["input"] == "x" * 100 + "… (5000 characters)"
    assert len(r.content) < 500
    short = client.get(path, params={param: "y" * (limit + 1)}).json()["detail"][0]
    assert short["input"] == "y" * (limit + 1)  # a short value is echoed whole


INJECTIONS = [
    "' OR '1'='1",
    "cam1'; DROP TABLE events; --",
    "1) OR (1=1",
    'cam1" --',
    "%27%20OR%201=1",
    "$camera",
    "../../etc/passwd",
]


@pytest.mark.parametrize("payload", INJECTIONS)
@pytest.mark.parametrize(
    "param", ["camera_path", "since", "until", "bucket", "labels", "events_camera", "events_label", "after_id", "limit"]
)
def test_sql_injection_is_harmless(client: TestClient, param: str, payload: str) -> None:
    if param == "camera_path":
        r = client.get(f"/cameras/{payload}/timeline")
    elif param.startswith("events_"):
        r = client.get("/events", params={param.removeprefix("events_"): payload})
    elif param in ("after_id", "limit"):
        r = client.get("/events", params={param: payload})
    else:
        r = client.get("/cameras/cam1/timeline", params={param: payload})
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert len(client.get("/events", params={"limit": 1000}).json()["events"]) > 0
    assert [c["name"] for c in client.get("/cameras").json()] == ["cam1", "cam2"]


def test_bearer_token(db_url: str) -> None:
    engine = make_engine(db_url)
    with TestClient(create_app(engine, token=TOKEN)) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/cameras").status_code == 401
        assert c.get("/cameras", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/cameras", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
        assert c.get("/metrics").status_code == 401
        ok = c.get("/cameras", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and ok.json()
        assert c.get("/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}).json()["paths"][
            "/cameras/{name}/timeline"
        ]
        # Probes and the API's description need no token (compose healthcheck, k8s readinessProbe, /docs).
        assert c.get("/ready").json() == {"status": "ready"}
        assert c.get("/docs").status_code == 200
        schema = c.get("/openapi.json").json()
        assert schema["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
        assert schema["paths"]["/cameras"]["get"]["security"] == [{"bearer": []}]
        assert "security" not in schema["paths"]["/ready"]["get"]


def test_metrics_health_ready_docs(client: TestClient) -> None:
    client.get("/cameras")
    client.get("/cameras/nope/timeline")
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready"}
    assert client.get("/docs").status_code == 200
    text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {
        (s.labels.get("route"), s.labels.get("status")): s.value
        for s in families["fervid_api_requests"].samples
        if s.name.endswith("_total")
    }
    assert samples[("/cameras", "200")] == 1 and samples[("/cameras/{name}/timeline", "404")] == 1
    assert "fervid_api_request_duration_seconds" in families
    assert client.get("/metrics").headers["content-type"].startswith("text/plain; version=")


def test_ready_is_503_when_postgresql_is_gone(pg_url: str, pg_server: str) -> None:
    import psycopg

    engine = make_engine(pg_url)
    create_schema(engine)
    with TestClient(create_app(engine)) as c:
        assert c.get("/ready").status_code == 200
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{engine.url.database}" WITH (FORCE)')
        r = c.get("/ready")
        assert r.status_code == 503 and r.json()["status"] == "unavailable"
        assert c.get("/cameras").status_code == 503
    engine.dispose()


def test_snapshot_draws_the_newest_frame_with_faces(client: TestClient, redis_client) -> None:
    for seq in (198, 199, 500):  # 199 has faces in SQL (make_messages), 500 is newer but has no events
        image = np.full((480, 640, 3), 40, np.uint8)
        _ok, jpeg = cv2.imencode(".jpg", image)
        msg = FrameMsg(FrameRef("cam1", seq, 1.0 + seq, 640, 480), jpeg.tobytes())
        redis_client.xadd(KEYS.frames("cam1"), msg.encode())
    r = client.get("/cameras/cam1/snapshot.jpg")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    img = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    green = (img[:, :, 1] > 200) & (img[:, :, 0] < 80) & (img[:, :, 2] < 80)
    assert green.sum() > 100  # boxes of frame 199's faces were drawn (frame 500 has none)


def test_fervid_api_serves_and_warns_on_public_bind_without_token(db_url: str) -> None:
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "FERVID_API_TOKEN"}
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fervid.cli", "api", "--db", db_url, "--host", "0.0.0.0", "--port", str(port)],
        cwd=root,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/cameras/cam1/timeline", params={"bucket": "1m"}, timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert r.status_code == 200 and r.json()[0]["faces"] > 0
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        assert time.monotonic() - t0 < 10 and proc.returncode == 0, err[-2000:]  # SIGTERM: a clean exit within 10 s
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "WARNING" in err and "without FERVID_API_TOKEN" in err


# -- the published schema tells the truth: a bounded schemathesis run over it, every check --------------------

# The bearer token comes from the published security scheme (so schemathesis also sends requests without it).
# Timeline and events document a 400 for what OpenAPI cannot express across parameters (since after until, more
# than 10,000 buckets, a date outside 2000..2200, a zero duration): schema-valid data may get it.
SCHEMATHESIS_CONFIG = schemathesis.config.SchemathesisConfig.from_str(f"""
[auth.openapi.bearer]
bearer = "{TOKEN}"

[[operations]]
include-path-regex = "^/(events|cameras/.*/timeline)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "404"]
""")
_PATHS = create_app(make_engine("sqlite://"), token=TOKEN).openapi()["paths"]
# Negative cases need something to break: parameters or the token (an open operation without parameters has none).
CASES = [
    (path, mode)
    for path, ops in sorted(_PATHS.items())
    for mode in ("positive", "negative")
    if mode == "positive" or ops["get"].get("parameters") or ops["get"].get("security")
]


@pytest.mark.parametrize(("path", "mode"), CASES, ids=[f"{p}-{m}" for p, m in CASES])
def test_schemathesis_finds_nothing_in_the_published_schema(
    db_url: str, redis_url: str, redis_client, path: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each operation, cases that fit the schema and cases that do not, every one of schemathesis' checks (status
    codes and content types documented, response schemas, auth enforced, invalid data rejected, valid data
    accepted). Bounded: 40 examples per operation and mode, derandomized. Camera names are generated, and half
    the time a known camera's, so that the answers with data are checked too."""
    from hypothesis import given
    from hypothesis import strategies as st
    from schemathesis.generation import GenerationMode
    from schemathesis.transport import requests as st_requests

    # grafana-client's niquests brings urllib3-future, which replaces the `urllib3` module; schemathesis counts
    # urllib3's pooled connections (to resend on a dropped keep-alive) in a way urllib3-future's pool container
    # refuses. The app is called in-process (ASGI): there are no pooled connections to count.
    monkeypatch.setattr(st_requests, "_count_opened_connections", lambda session: 0)
    _ok, jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), 40, np.uint8))
    redis_client.xadd(KEYS.frames("cam1"), FrameMsg(FrameRef("cam1", 199, 200.0, 64, 48), jpeg.tobytes()).encode())
    engine = make_engine(db_url)
    app = create_app(engine, token=TOKEN, redis_url=redis_url)
    operation = schemathesis.openapi.from_asgi("/openapi.json", app, config=SCHEMATHESIS_CONFIG)[path]["GET"]
    strategy = operation.as_strategy(GenerationMode(mode))
    if "{name}" in path:
        strategy = st.one_of(strategy, operation.as_strategy(GenerationMode(mode), path_parameters={"name": "cam1"}))
    statuses: list[int] = []

    @given(case=strategy)
    @settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        statuses.append(case.call_and_validate().status_code)

    try:
        run()
    finally:
        engine.dispose()
    if mode == "positive":  # the token was sent: data came back, not only 401s
        assert 200 in statuses, sorted(set(statuses))


def test_schema_publishes_errors_camera_pattern_and_labels() -> None:
    from fervid.contracts import EMOTIONS, validate_camera_name
    from storage.api import CAMERA_PATTERN

    paths = create_app(make_engine("sqlite://")).openapi()["paths"]
    timeline = paths["/cameras/{name}/timeline"]["get"]
    assert {"400", "404", "503"} <= set(timeline["responses"])
    name = next(p for p in timeline["parameters"] if p["name"] == "name")
    assert name["schema"]["pattern"] == CAMERA_PATTERN
    validate_camera_name("a" * 64)  # the published pattern is contracts' rule
    import re

    assert re.fullmatch(CAMERA_PATTERN, "a" * 64) and not re.fullmatch(CAMERA_PATTERN, "a" * 65)
    events = {p["name"]: p["schema"] for p in paths["/events"]["get"]["parameters"]}
    assert events["label"]["enum"] == list(EMOTIONS) and events["label"]["type"] == "string"
    assert events["camera"]["pattern"] == CAMERA_PATTERN
    assert list(paths["/metrics"]["get"]["responses"]["200"]["content"]) == [CONTENT_TYPE_LATEST]
