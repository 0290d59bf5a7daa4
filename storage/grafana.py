"""Grafana dashboards as code, and provisioning through the HTTP API with grafana-client.

Two kinds of dashboards. The timelines ("emotions", "pipeline health") query PostgreSQL; "operations" queries
Prometheus for the pipeline's own health (per-camera fps and drops, stream lag, dead letters, batch latency,
storage commit rate, workers up and restarts), from the series in fervid/metrics.py, and for Redis' and
PostgreSQL's (up, memory, clients, connections, database size) from compose's two exporters. deploy/smoke.sh runs every
operations query (:func:`promql_queries`, macros expanded by :func:`expand_promql`) against the compose stack's
real Prometheus.

The SQL panels query PostgreSQL directly with Grafana's SQL macros on the integer epoch-ms ``ts_ms`` column:
``$__unixEpochGroupAlias(ts_ms/1000, $__interval)`` buckets, and the range filter is written as
``ts_ms >= $__unixEpochFrom()::bigint * 1000 AND ts_ms < $__unixEpochTo()::bigint * 1000`` so the
(camera, ts_ms) indexes are used. :func:`expand_macros` performs the same substitution Grafana does for a fixed
range, which is how the tests run every panel's SQL against a real PostgreSQL (no Grafana server here).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fervid.contracts import EMOTIONS

DATASOURCE_UID = "fervid-pg"
DATASOURCE_NAME = "fervid PostgreSQL"
DATASOURCE_TYPE = "grafana-postgresql-datasource"
FOLDER_UID = "fervid"
FOLDER_TITLE = "fervid"
DS = {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID}
PROMETHEUS_UID = "fervid-prometheus"
PROMETHEUS_NAME = "fervid Prometheus"
PROM = {"type": "prometheus", "uid": PROMETHEUS_UID}

_RANGE = "ts_ms >= $__unixEpochFrom()::bigint * 1000 AND ts_ms < $__unixEpochTo()::bigint * 1000"
_EMOTION_ARRAY = "ARRAY[" + ", ".join(f"'{e}'" for e in EMOTIONS) + "]"

SQL = {
    "emotion_share": (
        "SELECT $__unixEpochGroupAlias(ts_ms/1000, $__interval), label AS metric, count(*) AS faces\n"
        f"FROM events\nWHERE camera = '$camera' AND {_RANGE}\nGROUP BY 1, 2\nORDER BY 1"
    ),
    "faces_per_minute": (
        "SELECT $__unixEpochGroupAlias(ts_ms/1000, '1m'), camera AS metric, count(*) AS faces\n"
        f"FROM events\nWHERE camera IN ($camera) AND {_RANGE}\nGROUP BY 1, 2\nORDER BY 1"
    ),
    "dominant_state": (
        "SELECT time, label AS dominant FROM (\n"
        "  SELECT $__unixEpochGroup(ts_ms/1000, $__interval) AS time, label,\n"
        "         row_number() OVER (PARTITION BY $__unixEpochGroup(ts_ms/1000, $__interval)\n"
        f"                            ORDER BY count(*) DESC, array_position({_EMOTION_ARRAY}, label::text)) AS rank\n"
        f"  FROM events\n  WHERE camera = '$camera' AND {_RANGE}\n  GROUP BY 1, 2\n) ranked\nWHERE rank = 1\nORDER BY 1"
    ),
    "frames_per_minute": (
        "SELECT $__unixEpochGroupAlias(ts_ms/1000, '1m'), camera AS metric, count(*) AS frames\n"
        f"FROM frames\nWHERE camera IN ($camera) AND {_RANGE}\nGROUP BY 1, 2\nORDER BY 1"
    ),
    "camera_variable": "SELECT name FROM cameras ORDER BY name",
}


# The operations dashboard: (title, unit, [(PromQL, legend)]). `$camera` is a multi-value variable (Grafana
# writes it as a regex for Prometheus); `$__rate_interval` is Grafana's rate window for the scrape interval.
_CAM = 'camera=~"$camera"'
_RATE = "[$__rate_interval]"
_LATENCY = f"sum by (le, stage) (rate(fervid_inference_seconds_bucket{_RATE}))"
_USER_DBS = 'datname!~"|template.*"'  # not the templates, nor pg_stat_database's row for shared objects
# Restarts per service over the last hour, counted per process: a container restarted at the same address
# changes its series' start time (`changes`); one restarted at a new address (podman, often Docker) is a new
# series, and its old series ends: every series of the last hour that is gone now counts one. (Plain
# `changes(process_start_time_seconds[1h])` stays 0 for the latter.) A replica removed by scaling down also
# counts one, for an hour. tests/test_storage_grafana.py runs it in promtool; deploy/smoke.sh restarts a worker.
_START = 'process_start_time_seconds{job="fervid"}'
_RESTARTS = f"sum by (service) (changes({_START}[1h]) + (({_START} * 0) or (last_over_time({_START}[1h]) * 0 + 1)))"
PROMQL: list[tuple[str, str, list[tuple[str, str]]]] = [
    (
        "Frames per second — published by ingest, analysed by the detector",
        "fps",
        [
            (f"sum by (camera) (rate(fervid_camera_frames_published_total{{{_CAM}}}{_RATE}))", "{{camera}} published"),
            (
                f'sum by (camera) (rate(fervid_camera_frames_total{{stage="detector", {_CAM}}}{_RATE}))',
                "{{camera}} analysed",
            ),
        ],
    ),
    (
        "Frames dropped per second (the detector fell behind)",
        "fps",
        [(f"sum by (camera) (rate(fervid_camera_frames_dropped_total{{{_CAM}}}{_RATE}))", "{{camera}}")],
    ),
    (
        "Stream lag — entries not yet read, and read but not acked",
        "short",
        [
            ("sum by (stream, group) (fervid_stream_lag_entries)", "{{stream}} → {{group}} unread"),
            ("sum by (stream, group) (fervid_stream_pending_entries)", "{{stream}} → {{group}} pending"),
        ],
    ),
    (
        "Dead letters per group (over the rate window)",
        "short",
        [(f"sum by (group) (increase(fervid_dead_letters_total{_RATE}))", "{{group}}")],
    ),
    (
        "Batch latency — detector and classifier forward pass (p50, p95)",
        "s",
        [
            (f"histogram_quantile(0.5, {_LATENCY})", "{{stage}} p50"),
            (f"histogram_quantile(0.95, {_LATENCY})", "{{stage}} p95"),
        ],
    ),
    (
        "Storage commit rate — frames committed per second",
        "short",
        [(f'sum(rate(fervid_stage_messages_total{{stage="storage"}}{_RATE}))', "frames/s")],
    ),
    ("Workers up", "short", [('sum by (service) (up{job=~"fervid|fervid-api"})', "{{service}}")]),
    ("Worker restarts (last hour)", "short", [(_RESTARTS, "{{service}}")]),
    # Redis and PostgreSQL through their exporters (compose's redis-exporter and postgres-exporter).
    (
        "Redis and PostgreSQL up (as their exporters reach them)",
        "short",
        [("max(redis_up)", "Redis"), ("max(pg_up)", "PostgreSQL")],
    ),
    ("Redis memory used", "bytes", [("sum(redis_memory_used_bytes)", "used")]),
    ("Redis connected clients", "short", [("sum(redis_connected_clients)", "clients")]),
    (
        "PostgreSQL connections per database",
        "short",
        [
            (f"sum by (datname) (pg_stat_database_numbackends{{{_USER_DBS}}})", "{{datname}}"),
            ("max(pg_settings_max_connections)", "max_connections"),
        ],
    ),
    (
        "PostgreSQL database size",
        "bytes",
        [(f"sum by (datname) (pg_database_size_bytes{{{_USER_DBS}}})", "{{datname}}")],
    ),
]


def _camera_variable() -> dict[str, Any]:
    return {
        "name": "camera",
        "label": "Camera",
        "type": "query",
        "datasource": DS,
        "query": SQL["camera_variable"],
        "definition": SQL["camera_variable"],
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def _prometheus_camera_variable() -> dict[str, Any]:
    query = "label_values(fervid_camera_frames_published_total, camera)"
    return {
        "name": "camera",
        "label": "Camera",
        "type": "query",
        "datasource": PROM,
        "query": {"query": query, "refId": "cameras"},
        "definition": query,
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


_LEGEND = {"displayMode": "list", "placement": "bottom", "showLegend": True}
_PER_CAMERA = {"repeat": "camera", "repeatDirection": "v"}  # one panel per camera chosen in the variable


def _field_config(unit: str, custom: dict[str, Any]) -> dict[str, Any]:
    return {"defaults": {"unit": unit, "custom": custom}, "overrides": []}


def _prometheus_panel(pid: int, title: str, unit: str, queries: list[tuple[str, str]], y: int) -> dict[str, Any]:
    x = 0 if pid % 2 else 12
    targets = [
        {"refId": chr(ord("A") + i), "datasource": PROM, "expr": expr, "legendFormat": legend, "range": True}
        for i, (expr, legend) in enumerate(queries)
    ]
    return {
        "id": pid,
        "type": "timeseries",
        "title": title,
        "datasource": PROM,
        "gridPos": {"x": x, "y": y, "w": 12, "h": 8},
        "targets": targets,
        "options": {"legend": _LEGEND, "tooltip": {"mode": "multi"}},
        "fieldConfig": _field_config(unit, {"fillOpacity": 10}),
    }


def _target(sql: str, fmt: str = "time_series") -> dict[str, Any]:
    return {"refId": "A", "datasource": DS, "rawQuery": True, "editorMode": "code", "format": fmt, "rawSql": sql}


def _panel(pid: int, title: str, kind: str, sql: str, grid: tuple[int, int, int, int], **extra: Any) -> dict[str, Any]:
    x, y, w, h = grid
    panel = {
        "id": pid,
        "type": kind,
        "title": title,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": [_target(sql)],
        "options": {"legend": _LEGEND, "tooltip": {"mode": "multi"}},
        "fieldConfig": {"defaults": {}, "overrides": []},
    }
    panel.update(extra)
    return panel


def _dashboard(
    uid: str, title: str, panels: list[dict[str, Any]], description: str, camera: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["fervid"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [camera or _camera_variable()]},
        "panels": panels,
    }


def dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard, by file name stem."""
    share = _panel(1, "Emotion share — $camera", "timeseries", SQL["emotion_share"], (0, 0, 24, 9), **_PER_CAMERA)
    stacked = {"stacking": {"mode": "percent", "group": "A"}, "fillOpacity": 70, "lineWidth": 0, "drawStyle": "line"}
    share["fieldConfig"] = _field_config("percentunit", stacked)
    faces = _panel(2, "Faces per minute", "timeseries", SQL["faces_per_minute"], (0, 9, 24, 8))
    faces["fieldConfig"] = _field_config("short", {"drawStyle": "bars", "fillOpacity": 60})
    state = _panel(
        3, "Dominant emotion — $camera", "state-timeline", SQL["dominant_state"], (0, 17, 24, 5), **_PER_CAMERA
    )
    state["options"] = {"showValue": "auto", "mergeValues": True, "legend": _LEGEND}
    frames = _panel(1, "Analysed frames per minute", "timeseries", SQL["frames_per_minute"], (0, 0, 24, 9))
    frames["fieldConfig"] = _field_config("short", {"drawStyle": "line", "fillOpacity": 10})
    frames["description"] = (
        "Frames that reached storage, with or without faces. A camera dropping to zero has stalled upstream."
    )
    return {
        "fervid-emotions": _dashboard(
            "fervid-emotions", "fervid — emotions", [share, faces, state], "Emotion timelines per camera."
        ),
        "fervid-pipeline": _dashboard(
            "fervid-pipeline", "fervid — pipeline health", [frames], "Throughput of the analysis pipeline."
        ),
        "fervid-operations": _dashboard(
            "fervid-operations",
            "fervid — operations",
            [_prometheus_panel(i + 1, t, unit, q, 8 * (i // 2)) for i, (t, unit, q) in enumerate(PROMQL)],
            "The pipeline's own health from Prometheus: fps, drops, lag, dead letters, latency, commits, workers; "
            "Redis and PostgreSQL through their exporters.",
            camera=_prometheus_camera_variable(),
        ),
    }


def dashboard_json(dashboard: dict[str, Any]) -> str:
    return json.dumps(dashboard, indent=2, sort_keys=True) + "\n"


def export(directory: Path) -> list[Path]:
    """Write every dashboard as ``<uid>.json`` into `directory` (file provisioning reads them from there)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, d in dashboards().items():
        path = directory / f"{stem}.json"
        path.write_text(dashboard_json(d))
        paths.append(path)
    return paths


def panel_queries() -> Iterator[tuple[str, str, str]]:
    """(dashboard uid, panel title, SQL) for every SQL panel target and template variable."""
    for uid, d in dashboards().items():
        for var in d["templating"]["list"]:
            if var["datasource"] == DS:
                yield uid, f"${var['name']}", var["query"]
        for panel in d["panels"]:
            for t in panel["targets"]:
                if "rawSql" in t:
                    yield uid, panel["title"], t["rawSql"]


def promql_queries() -> Iterator[tuple[str, str, str]]:
    """(dashboard uid, panel title, PromQL) for every Prometheus panel target."""
    for uid, d in dashboards().items():
        for panel in d["panels"]:
            for t in panel["targets"]:
                if "expr" in t:
                    yield uid, panel["title"], t["expr"]


def expand_promql(expr: str, *, rate_interval: str = "1m", cameras: list[str] | None = None) -> str:
    """Substitute what Grafana does before sending a query to Prometheus: ``$__rate_interval`` and the
    multi-value ``$camera`` (a regex of the chosen cameras, escaped as Grafana does inside a PromQL string; All
    is ``.*``)."""
    escaped = (re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\\\1", c) for c in cameras or [])
    camera = "(" + "|".join(escaped) + ")" if cameras else ".*"
    return expr.replace("$__rate_interval", rate_interval).replace("$camera", camera)


def _interval_seconds(text: str) -> int:
    m = re.fullmatch(r"'?(\d+)(s|m|h|d)'?", text.strip())
    if not m:
        raise ValueError(f"interval {text!r}")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def expand_macros(sql: str, *, from_s: int, to_s: int, interval: str, cameras: list[str]) -> str:
    """Substitute template variables and macros the way Grafana's PostgreSQL datasource does for a fixed range:
    ``$camera`` (multi-value: ``'a','b'``), ``$__interval``, ``$__unixEpochFrom()``, ``$__unixEpochTo()``,
    ``$__unixEpochGroup(expr, interval)`` → ``floor((expr)/N)*N`` (+ ``AS "time"`` for the Alias form)."""
    quoted = ",".join("'" + c.replace("'", "''") + "'" for c in cameras)
    sql = sql.replace("'$camera'", quoted).replace("$camera", quoted)
    sql = sql.replace("$__interval", interval)
    sql = sql.replace("$__unixEpochFrom()", str(from_s)).replace("$__unixEpochTo()", str(to_s))

    def group(m: re.Match[str]) -> str:
        expr, iv = m.group(2).rsplit(",", 1)
        n = _interval_seconds(iv)
        out = f"floor(({expr.strip()})/{n})*{n}"
        return out + ' AS "time"' if m.group(1) == "Alias" else out

    return re.sub(r"\$__unixEpochGroup(Alias)?\(([^()]*(?:\([^()]*\))?[^()]*)\)", group, sql)


# -- provisioning over the HTTP API -------------------------------------------------------------------------


def datasource_payload(db_url: str) -> dict[str, Any]:
    """Grafana's datasource JSON for a SQLAlchemy/libpq PostgreSQL URL."""
    from sqlalchemy.engine import make_url

    from fervid.errors import ConfigError

    try:
        url = make_url(db_url)
    except Exception as exc:
        raise ConfigError(f"invalid --db: {exc}") from None
    if not url.drivername.startswith("postgresql"):
        raise ConfigError(f"Grafana dashboards need PostgreSQL, got {url.drivername!r}")
    if not url.host or not url.database:
        raise ConfigError("--db needs a host and a database, e.g. postgresql://grafana:pw@db:5432/fervid")
    return {
        "uid": DATASOURCE_UID,
        "name": DATASOURCE_NAME,
        "type": DATASOURCE_TYPE,
        "access": "proxy",
        "url": f"{url.host}:{url.port or 5432}",
        "user": url.username or "",
        "isDefault": False,
        "jsonData": {
            "database": url.database,
            "sslmode": url.query.get("sslmode", "disable"),
            "postgresVersion": 1500,
            "timescaledb": False,
        },
        "secureJsonData": {"password": url.password or ""},
    }


def prometheus_datasource_payload(prometheus_url: str) -> dict[str, Any]:
    """Grafana's datasource JSON for the Prometheus that scrapes the fervid workers."""
    return {
        "uid": PROMETHEUS_UID,
        "name": PROMETHEUS_NAME,
        "type": "prometheus",
        "access": "proxy",
        "url": prometheus_url,
        "isDefault": False,
        "jsonData": {"timeInterval": "15s"},
    }


def provision(grafana_url: str, token: str, db_url: str, prometheus_url: str | None = None) -> list[str]:
    """Create or update the datasources, the folder and every dashboard. Idempotent: fixed uids, overwrite.

    Without `prometheus_url` the operations dashboard (which needs Prometheus) is left out."""
    from grafana_client import GrafanaApi
    from grafana_client.client import GrafanaClientError, GrafanaException

    from fervid.errors import ServiceUnavailable

    api = GrafanaApi.from_url(grafana_url, credential=token)
    done = []
    sources = [datasource_payload(db_url)]
    if prometheus_url:
        sources.append(prometheus_datasource_payload(prometheus_url))
    try:
        for ds in sources:
            try:
                api.datasource.get_datasource_by_uid(ds["uid"])
                api.datasource.update_datasource_by_uid(ds["uid"], ds)
                done.append(f"datasource {ds['uid']}: updated")
            except GrafanaClientError as exc:
                if exc.status_code != 404:
                    raise
                api.datasource.create_datasource(ds)
                done.append(f"datasource {ds['uid']}: created")
        try:
            api.folder.get_folder(FOLDER_UID)
            done.append(f"folder {FOLDER_UID}: exists")
        except GrafanaClientError as exc:
            if exc.status_code != 404:
                raise
            api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)
            done.append(f"folder {FOLDER_UID}: created")
        for uid, d in dashboards().items():
            if d["templating"]["list"][0]["datasource"] == PROM and not prometheus_url:
                continue
            body = {
                "dashboard": {**d, "id": None},
                "folderUid": FOLDER_UID,
                "overwrite": True,
                "message": "fervid grafana provision",
            }
            api.dashboard.update_dashboard(body)
            done.append(f"dashboard {uid}: saved")
    except GrafanaException as exc:
        raise ServiceUnavailable(f"Grafana at {grafana_url} answered {exc.status_code}: {exc.message}") from None
    except Exception as exc:  # connection refused, DNS, TLS
        if type(exc).__module__.startswith(("niquests", "urllib3", "requests")):
            raise ServiceUnavailable(f"cannot reach Grafana at {grafana_url}: {exc}") from None
        raise
    return done
