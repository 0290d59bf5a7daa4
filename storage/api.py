"""The HTTP API: cameras, timelines (the same JSON as ``fervid timeline --format json``), paged events,
snapshots with boxes drawn, health/readiness and Prometheus metrics.

Auth: when a token is configured (``FERVID_API_TOKEN``), every path but :data:`OPEN_PATHS` needs
``Authorization: Bearer <token>`` (compared in constant time). Open: liveness, readiness and the API's own
description (``/docs``, ``/openapi.json``), which hold no data, so that probes (compose healthchecks, Kubernetes)
need no secret. Errors are JSON ``{"detail": message}``: 400 bad input, 401 auth, 404 unknown camera or no
frame, 422 malformed parameters (FastAPI's list of errors, what they echo cut to ~100 characters), 503
database unreachable. The OpenAPI schema publishes each of these per operation, the camera-name pattern and the
label values (a bounded schemathesis run checks it).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from fastapi import FastAPI, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel
from sqlalchemy import select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from fervid.contracts import EMOTIONS, FrameMsg, Keys, validate_camera_name
from fervid.errors import ConfigError, NotFound, ServiceUnavailable, cut
from storage import timeline as tl
from storage.db import events_table

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/ready", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
# contracts.validate_camera_name's rule, published in the schema (the check itself stays there: a 400 that says
# what is valid, not a bare 422).
CAMERA_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Problem(BaseModel):
    detail: str


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text_ = {
        400: "Bad input: the message says what is valid",
        404: "Unknown camera, or no frame to show",
        503: "Database (or Redis) unreachable",
    }
    return {code: {"model": Problem, "description": text_[code]} for code in codes}


def create_app(
    engine: Engine, *, token: str | None = None, redis_url: str | None = None, keys: Keys | None = None
) -> FastAPI:
    app = _API(bearer=bool(token))
    registry = _guard_and_count(app, token)
    _error_responses(app)
    _probe_routes(app, engine, registry)
    _data_routes(app, engine, _redis_client(redis_url), keys or Keys())
    return app


class _API(FastAPI):
    """FastAPI whose schema says what a client may send: optional query parameters are absent or a value (never
    null), and, when a token is set, the bearer scheme and the 401 of every protected operation."""

    def __init__(self, *, bearer: bool) -> None:
        super().__init__(
            title="fervid",
            version="1",
            description="Per-camera facial-expression timelines. "
            "Send `Authorization: Bearer <token>` when the server has a token.",
        )
        self._bearer = bearer

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            schema = get_openapi(
                title=self.title, version=self.version, description=self.description, routes=self.routes
            )
            for ops in schema["paths"].values():
                for op in ops.values():
                    for param in op.get("parameters", []):
                        param["schema"] = _present(param["schema"])
            if self._bearer:
                _publish_bearer(schema)
            self.openapi_schema = schema
        return self.openapi_schema


def _publish_bearer(schema: dict[str, Any]) -> None:
    schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, ops in schema["paths"].items():
        if path in OPEN_PATHS:
            continue
        for op in ops.values():
            op["security"] = [{"bearer": []}]
            op["responses"]["401"] = {
                "description": "Missing or wrong bearer token",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
            }


def _guard_and_count(app: FastAPI, token: str | None) -> CollectorRegistry:
    """The middleware that checks the bearer token and counts and times every request; returns its registry."""
    registry = CollectorRegistry()
    requests = Counter(
        "fervid_api_requests", "HTTP requests, per route and status.", ["route", "status"], registry=registry
    )
    latency = Histogram(
        "fervid_api_request_duration_seconds",
        "Seconds to answer an HTTP request, per route.",
        ["route"],
        registry=registry,
    )

    @app.middleware("http")
    async def auth_and_metrics(request: Request, call_next: Any) -> Response:
        start = time.perf_counter()
        if token and request.url.path not in OPEN_PATHS:
            given = request.headers.get("authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
                response: Response = JSONResponse(
                    {"detail": "missing or wrong bearer token"}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
                )
                requests.labels("unauthorized", "401").inc()
                return response
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        requests.labels(route, str(response.status_code)).inc()
        latency.labels(route).observe(time.perf_counter() - start)
        return response

    return registry


def _error_responses(app: FastAPI) -> None:
    """Project errors as JSON ``{"detail": message}`` with their status; a 422 keeps FastAPI's shape, with what
    it echoes cut short."""

    @app.exception_handler(RequestValidationError)
    async def malformed(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": jsonable_encoder([_shortened(e) for e in exc.errors()])}, status_code=422)

    @app.exception_handler(ConfigError)
    async def bad_input(_: Request, exc: ConfigError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(ServiceUnavailable)
    async def unavailable(_: Request, exc: ServiceUnavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(DBAPIError)
    async def db_down(_: Request, exc: DBAPIError) -> JSONResponse:
        log.warning("database error: %s", exc)
        return JSONResponse({"detail": "database unavailable"}, status_code=503)


def _redis_client(redis_url: str | None) -> Callable[[], Any]:
    """The API's Redis client, connected on first use (only snapshots need it)."""
    clients: list[Any] = []

    def client() -> Any:
        if redis_url is None:
            raise NotFound(
                "no Redis configured for this API (start it with --redis): snapshots come from the frame streams"
            )
        if not clients:
            from fervid.bus import connect

            clients.append(connect(redis_url))
        return clients[0]

    return client


def _camera_name(name: str) -> str:
    try:
        return validate_camera_name(name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _camera_path() -> Any:
    return Path(description="Camera name", json_schema_extra={"pattern": CAMERA_PATTERN})


def _probe_routes(app: FastAPI, engine: Engine, registry: CollectorRegistry) -> None:
    """Liveness, readiness and the API's own metrics."""

    @app.get("/health", summary="Liveness (always open, no auth)")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/ready",
        summary="Readiness: the database answers (open, no auth)",
        responses={503: {"description": "Database unreachable"}},
    )
    def ready() -> JSONResponse:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except DBAPIError as exc:
            return JSONResponse({"status": "unavailable", "detail": str(exc.orig).strip()[:200]}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get(
        "/metrics",
        summary="Prometheus text exposition",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    )
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _data_routes(app: FastAPI, engine: Engine, redis: Callable[[], Any], keys: Keys) -> None:
    """Cameras, timelines, events and snapshots."""

    @app.get("/cameras", summary="Cameras that produced frames, with first/last seen", responses=_errors(503))
    def list_cameras() -> list[dict[str, Any]]:
        return tl.cameras(engine)

    @app.get(
        "/cameras/{name}/timeline",
        summary="Bucketed emotion timeline (same JSON as `fervid timeline --format json`)",
        responses=_errors(400, 404, 503),
    )
    def camera_timeline(
        name: str = _camera_path(),
        since: str | None = Query(None, max_length=64, description="ISO-8601 or a duration ago (30m)"),
        until: str | None = Query(None, max_length=64, description="exclusive end: ISO-8601 or a duration ago"),
        bucket: str = Query("10s", max_length=16, description="1s .. 1d"),
        labels: Literal["raw", "smoothed"] = "raw",
    ) -> list[dict[str, Any]]:
        return tl.timeline(
            engine,
            _camera_name(name),
            tl.parse_bucket_ms(bucket),
            since=tl.parse_time(since) if since else None,
            until=tl.parse_time(until) if until else None,
            labels=labels,
        )

    @app.get(
        "/events",
        summary="Event rows, oldest first; page with after_id = next_after_id",
        responses=_errors(400, 404, 503),
    )
    def list_events(
        camera: str | None = Query(None, max_length=64, json_schema_extra={"pattern": CAMERA_PATTERN}),
        since: str | None = Query(None, max_length=64),
        until: str | None = Query(None, max_length=64),
        # Checked by storage.timeline.events (a 400 naming the valid labels); published here as an enum.
        label: str | None = Query(None, max_length=16, json_schema_extra={"enum": list(EMOTIONS)}),
        limit: int = Query(100, ge=1, le=1000),
        after_id: int | None = Query(None, ge=0, le=2**63 - 1),  # a BIGINT: larger would overflow the driver, a 500
        min_quality: float | None = Query(None, ge=0.0, le=1.0),
    ) -> dict[str, Any]:
        rows = tl.events(
            engine,
            camera=_camera_name(camera) if camera is not None else None,
            since=tl.parse_time(since) if since else None,
            until=tl.parse_time(until) if until else None,
            label=label,
            limit=limit,
            after_id=after_id,
            min_quality=min_quality,
        )
        return {"events": rows, "next_after_id": rows[-1]["id"] if len(rows) == limit else None}

    @app.get(
        "/cameras/{name}/snapshot.jpg",
        summary="Newest frame with faces (or the newest frame), boxes and labels drawn",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}, **_errors(400, 404, 503)},
    )
    def snapshot(name: str = _camera_path()) -> Response:
        return Response(render_snapshot(engine, redis(), _camera_name(name), keys), media_type="image/jpeg")


def _shortened(error: Any) -> Any:
    """One of FastAPI's validation errors (the 422's shape, as published) with what it echoes cut to ~100
    characters: a 5,000-character parameter is not sent back whole."""
    given = error.get("input") if isinstance(error, dict) else None
    if not isinstance(given, str) or cut(given) == given:
        return error
    shortened = {**error, "input": cut(given)}
    if isinstance(error.get("msg"), str):  # a message that quotes the input quotes it cut
        shortened["msg"] = cut(error["msg"].replace(given, cut(given)), 300)
    return shortened


def _present(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema of a parameter's value when it is given: an optional query parameter is absent or a string,
    never JSON null, so ``anyOf: [X, null]`` is X (keeping the pattern, enum, title and default beside it)."""
    variants = [v for v in schema.get("anyOf", []) if v.get("type") != "null"]
    if len(variants) != 1 or len(schema["anyOf"]) != 2:
        return schema
    rest = {k: v for k, v in schema.items() if k != "anyOf" and not (k == "default" and v is None)}
    return {**variants[0], **rest}


def render_snapshot(engine: Engine, client: Any, camera: str, keys: Keys, scan: int = 64) -> bytes:
    """JPEG of the newest of the last `scan` frames in Redis that has events in SQL (else the newest frame)."""
    import cv2
    import numpy as np

    entries = client.xrevrange(keys.frames(camera), count=scan)
    if not entries:
        raise NotFound(f"no frames of camera {camera!r} in Redis (the frame stream is empty or the camera is unknown)")
    frames = []
    for _, fields in entries:
        try:
            frames.append(FrameMsg.decode(fields))
        except ValueError:
            continue
    if not frames:
        raise NotFound(f"no decodable frame of camera {camera!r} in Redis")
    seqs = [f.frame.seq for f in frames]
    ev = events_table.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(ev.frame_seq, ev.x, ev.y, ev.w, ev.h, ev.label, ev.label_smoothed).where(
                ev.camera == camera, ev.frame_seq.in_(seqs)
            )
        ).all()
    by_seq: dict[int, list[Any]] = {}
    for r in rows:
        by_seq.setdefault(r.frame_seq, []).append(r)
    chosen = next((f for f in frames if f.frame.seq in by_seq), frames[0])
    image = cv2.imdecode(np.frombuffer(chosen.jpeg, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise NotFound(f"the newest frame of camera {camera!r} is not a decodable JPEG")
    for r in by_seq.get(chosen.frame.seq, []):
        x, y, w, h = (int(round(v)) for v in (r.x, r.y, r.w, r.h))
        cv2.rectangle(image, (x, y), (x + w, y + h), (0, 255, 0), 2)
        label = r.label if r.label_smoothed in (None, r.label) else f"{r.label} ({r.label_smoothed})"
        cv2.putText(image, label, (x, max(12, y - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 0), 1, cv2.LINE_AA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return buf.tobytes()
