"""Grafana dashboards: committed JSON == generated; every panel's SQL runs on real PostgreSQL with real rows; and
provisioning through grafana-client against a FAKE Grafana.

The fake is a small ``http.server`` on 127.0.0.1 emulating the handful of Grafana HTTP API endpoints that
``fervid grafana provision`` calls (datasources by uid, folders, dashboards/db), recording every request. It
exists because no Grafana server can run in this environment; it checks our calls and their idempotency, not
Grafana's behaviour.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from storage_data import T0, make_messages
from typer.testing import CliRunner

from fervid.cli import app as cli_app
from fervid.contracts import EMOTIONS, Keys
from storage import grafana
from storage.db import create_schema, insert_idempotent, make_engine
from storage.timeline import timeline

ROOT = Path(__file__).resolve().parents[1]


def test_committed_dashboards_equal_generated(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli_app, ["grafana", "export", str(tmp_path)])
    assert result.exit_code == 0, result.output
    generated = sorted(p.name for p in tmp_path.iterdir())
    committed = sorted(p.name for p in (ROOT / "deploy/grafana/dashboards").iterdir())
    assert generated == committed == ["fervid-emotions.json", "fervid-operations.json", "fervid-pipeline.json"]
    for name in generated:
        assert (tmp_path / name).read_text() == (ROOT / "deploy/grafana/dashboards" / name).read_text(), (
            "re-run fervid grafana export deploy/grafana/dashboards"
        )


def test_dashboards_have_camera_variable_and_expected_panels() -> None:
    boards = grafana.dashboards()
    titles = [p["title"] for uid in ("fervid-emotions", "fervid-pipeline") for p in boards[uid]["panels"]]
    assert titles == [
        "Emotion share — $camera",
        "Faces per minute",
        "Dominant emotion — $camera",
        "Analysed frames per minute",
    ]
    share = boards["fervid-emotions"]["panels"][0]
    assert share["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "percent"
    assert boards["fervid-emotions"]["panels"][2]["type"] == "state-timeline"
    for d in boards.values():
        assert d["templating"]["list"][0]["name"] == "camera"


def test_every_panel_sql_runs_on_postgresql(pg_url: str) -> None:
    engine = make_engine(pg_url)
    create_schema(engine)
    insert_idempotent(engine, make_messages(1500, fps=2) + make_messages(600, camera="cam2", seed=5, fps=1))
    start, end = int(T0), int(T0) + 3600
    results: dict[str, list[Any]] = {}
    with engine.connect() as conn:
        for uid, title, sql in grafana.panel_queries():
            cams = ["cam1"] if "— $camera" in title else ["cam1", "cam2"]
            expanded = grafana.expand_macros(sql, from_s=start, to_s=end, interval="1m", cameras=cams)
            assert "$" not in expanded, expanded
            results[f"{uid}/{title}"] = conn.execute(text(expanded)).all()
    assert [r[0] for r in results["fervid-emotions/$camera"]] == ["cam1", "cam2"]
    # Faces per minute sum to the event rows in range, per camera.
    faces = results["fervid-emotions/Faces per minute"]
    assert {r.metric for r in faces} == {"cam1", "cam2"}
    assert sum(r.faces for r in faces if r.metric == "cam1") == sum(len(m.emotions) for m in make_messages(1500, fps=2))
    frames = results["fervid-pipeline/Analysed frames per minute"]
    assert sum(r.frames for r in frames if r.metric == "cam2") == 600 and frames[0].time == int(T0)
    # The dominant-state panel agrees with the API's dominant emotion at 1 min buckets.
    api = {b["start"]: b["dominant"] for b in timeline(engine, "cam1", 60_000)}
    state = results["fervid-emotions/Dominant emotion — $camera"]
    from storage.timeline import iso

    assert {iso(int(r.time) * 1000): r.dominant for r in state} == api
    shares = results["fervid-emotions/Emotion share — $camera"]
    assert {r.metric for r in shares} <= set(EMOTIONS) and sum(r.faces for r in shares) == sum(
        r.faces for r in faces if r.metric == "cam1"
    )
    engine.dispose()


class FakeGrafana(BaseHTTPRequestHandler):
    """Emulates GET/POST/PUT of /api/datasources[/uid/X], /api/folders[/X], /api/dashboards/db; records requests."""

    state: dict[str, Any]

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        st = self.state
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        st["requests"].append((self.command, self.path, self.headers.get("Authorization"), body))
        if self.headers.get("Authorization") != "Bearer glsa_test":
            return self._reply(401, {"message": "Unauthorized"})
        path = self.path.split("?")[0]
        if path.startswith("/api/datasources/uid/"):
            uid = path.rsplit("/", 1)[1]
            if self.command == "GET":
                return (
                    self._reply(200, st["datasources"][uid])
                    if uid in st["datasources"]
                    else self._reply(404, {"message": "Data source not found"})
                )
            if self.command == "PUT" and uid in st["datasources"]:
                st["datasources"][uid] = body
                return self._reply(200, {"message": "Datasource updated"})
        if path == "/api/datasources" and self.command == "POST":
            if body["uid"] in st["datasources"]:
                return self._reply(409, {"message": "data source with the same uid already exists"})
            st["datasources"][body["uid"]] = body
            return self._reply(200, {"message": "Datasource added", "id": len(st["datasources"])})
        if path.startswith("/api/folders/") and self.command == "GET":
            uid = path.rsplit("/", 1)[1]
            return (
                self._reply(200, st["folders"][uid])
                if uid in st["folders"]
                else self._reply(404, {"message": "folder not found"})
            )
        if path == "/api/folders" and self.command == "POST":
            if body["uid"] in st["folders"]:
                return self._reply(409, {"message": "a folder with the same uid already exists"})
            st["folders"][body["uid"]] = body
            return self._reply(200, {"uid": body["uid"], "title": body["title"]})
        if path == "/api/dashboards/db" and self.command == "POST":
            uid = body["dashboard"]["uid"]
            if uid in st["dashboards"] and not body.get("overwrite"):
                return self._reply(412, {"message": "version-mismatch"})
            st["dashboards"][uid] = body
            return self._reply(200, {"status": "success", "uid": uid})
        return self._reply(404, {"message": f"fake Grafana does not emulate {self.command} {path}"})

    do_GET = do_POST = do_PUT = _handle


@pytest.fixture
def fake_grafana() -> Iterator[tuple[str, dict[str, Any]]]:
    state: dict[str, Any] = {"requests": [], "datasources": {}, "folders": {}, "dashboards": {}}
    handler = type("Handler", (FakeGrafana,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()


def test_provision_is_idempotent(fake_grafana: tuple[str, dict[str, Any]]) -> None:
    url, state = fake_grafana
    args = [
        "grafana",
        "provision",
        "--url",
        url,
        "--token",
        "glsa_test",
        "--db",
        "postgresql+psycopg://grafana:pw@db:5432/fervid",
    ]
    first = CliRunner().invoke(cli_app, args)
    assert first.exit_code == 0, first.output
    assert "datasource fervid-pg: created" in first.stdout and "folder fervid: created" in first.stdout
    second = CliRunner().invoke(cli_app, args)
    assert second.exit_code == 0, second.output
    assert "datasource fervid-pg: updated" in second.stdout and "folder fervid: exists" in second.stdout
    assert list(state["datasources"]) == ["fervid-pg"] and list(state["folders"]) == ["fervid"]
    assert sorted(state["dashboards"]) == ["fervid-emotions", "fervid-pipeline"]  # no Prometheus: no operations
    ds = state["datasources"]["fervid-pg"]
    assert (
        ds["url"] == "db:5432"
        and ds["user"] == "grafana"
        and ds["jsonData"]["database"] == "fervid"
        and ds["secureJsonData"]["password"] == "pw"
    )
    saved = state["dashboards"]["fervid-emotions"]
    assert saved["folderUid"] == "fervid" and saved["overwrite"] is True
    assert {k: v for k, v in saved["dashboard"].items() if k != "id"} == grafana.dashboards()["fervid-emotions"]
    posts = [(m, p) for m, p, _, _ in state["requests"] if m == "POST"]
    assert posts.count(("POST", "/api/datasources")) == 1 and posts.count(("POST", "/api/folders")) == 1
    assert all(auth == "Bearer glsa_test" for _, _, auth, _ in state["requests"])


def test_provision_errors_are_one_line(fake_grafana: tuple[str, dict[str, Any]]) -> None:
    from fervid.errors import ConfigError, ServiceUnavailable

    url, _ = fake_grafana
    with pytest.raises(ServiceUnavailable, match="401"):
        grafana.provision(url, "wrong", "postgresql://g:pw@db/fervid")
    with pytest.raises(ConfigError, match="PostgreSQL"):
        grafana.provision(url, "glsa_test", "sqlite:///x.db")
    with pytest.raises(ServiceUnavailable, match="cannot reach"):
        grafana.provision("http://127.0.0.1:9", "glsa_test", "postgresql://g:pw@db/fervid")


def test_provision_with_prometheus_adds_its_datasource_and_the_operations_dashboard(
    fake_grafana: tuple[str, dict[str, Any]],
) -> None:
    url, state = fake_grafana
    lines = grafana.provision(url, "glsa_test", "postgresql://g:pw@db/fervid", "http://prometheus:9090")
    assert "datasource fervid-prometheus: created" in lines
    assert state["datasources"]["fervid-prometheus"]["url"] == "http://prometheus:9090"
    assert sorted(state["dashboards"]) == ["fervid-emotions", "fervid-operations", "fervid-pipeline"]


def test_operations_dashboard_covers_the_pipeline_and_queries_exported_series() -> None:
    """Every panel of the operations dashboard is there, on the Prometheus datasource, and every fervid_* series a query
    names is one fervid exports (the metric registry plus the bus collector). deploy/smoke.sh runs each query on
    the compose stack's real Prometheus and requires a series back."""
    import re

    from prometheus_client import REGISTRY, generate_latest

    from fervid.metrics import BusCollector  # importing fervid.metrics registers its metrics

    ops = grafana.dashboards()["fervid-operations"]
    text = " ".join(p["title"] for p in ops["panels"]).lower()
    for topic in ("frames per second", "dropped", "lag", "dead letters", "latency", "commit", "up", "restarts"):
        assert topic in text, topic
    for topic in ("redis memory", "redis connected clients", "postgresql up", "postgresql connections", "size"):
        assert topic in text, topic  # Redis and PostgreSQL through compose's exporters
    assert {p["datasource"]["uid"] for p in ops["panels"]} == {grafana.PROMETHEUS_UID}
    assert ops["templating"]["list"][0]["datasource"]["uid"] == grafana.PROMETHEUS_UID
    exported = {m.name for m in REGISTRY.collect()}
    exported |= {f"{n}_total" for n in exported} | {f"{n}_bucket" for n in exported}
    exported |= set(re.findall(r"^# TYPE (\S+)", generate_latest(REGISTRY).decode(), re.M))

    class _Redis:  # the bus collector's families, from an empty bus
        def register_script(self, script: str) -> Any:
            return lambda keys, args: 0

        def smembers(self, key: str) -> set[bytes]:
            return set()

        def xlen(self, stream: str) -> int:
            return 0

        def xinfo_groups(self, stream: str) -> list[dict[str, Any]]:
            return [
                {"name": g, "last-delivered-id": b"0-0", "pending": 0, "consumers": 1}
                for g in ("classifier", "storage")
            ]

        def hgetall(self, key: str) -> dict[bytes, bytes]:
            return {}

    families = list(BusCollector(_Redis(), Keys()).collect())
    assert len(families) > 1, "the bus collector failed on the fake Redis"
    bus = {m.name for m in families}
    exported |= bus | {f"{n}_total" for n in bus}
    for _, title, expr in grafana.promql_queries():
        for name in re.findall(r"\b(fervid_[a-z_]+)", expr):
            assert name in exported, f"{title}: {name} is not exported"
        assert "$" not in grafana.expand_promql(expr, cameras=["a.b", "c"])
    # A regex inside a PromQL string: the dot escaped for the regex, the backslash for the string.
    assert grafana.expand_promql('x{camera=~"$camera"}', cameras=["a.b", "c"]) == 'x{camera=~"(a\\\\.b|c)"}'
    assert grafana.expand_promql('x{camera=~"$camera"}') == 'x{camera=~".*"}'


def test_worker_restarts_query_counts_every_restart_in_promtool(tmp_path: Path) -> None:
    """The restarts panel, evaluated by Prometheus' own engine (`promtool test rules`, Debian's prometheus
    package) over scraped series as a compose stack makes them: a container restarted at the same address
    (its start time changes), one restarted at a new address (a new series; the old one ends with a staleness
    marker, as when its DNS target goes), a crash loop over three addresses, and restarts older than the hour.
    The plain `changes(process_start_time_seconds[1h])` misses every restart at a new address."""
    import shutil
    import subprocess

    import yaml

    promtool = shutil.which("promtool")
    assert promtool, "Debian's prometheus package (promtool) is needed: .ci/run installs it"
    (restarts,) = [e for _, t, e in grafana.promql_queries() if t.startswith("Worker restarts")]

    def series(service: str, address: str, values: str) -> dict[str, str]:
        labels = f'job="fervid", service="{service}", instance="10.0.0.{address}:9070"'
        return {"series": f"process_start_time_seconds{{{labels}}}", "values": values}

    # One sample every 15 s for 82 min; restarts at about 10 min, the classifier's at 5, 11 and 16 min (`stale`:
    # the series ends there, as Prometheus marks it when its target goes).
    inputs = [
        series("ingest", "2", "1000x330"),
        series("detector", "3", "1000x330"),
        series("detector", "4", "1000x40 1610x290"),  # restarted at the same address
        series("storage", "5", "1000x40 stale"),  # restarted at a new address ...
        series("storage", "6", "_x42 1630x288"),  # ... here
        series("classifier", "7", "1000x20 stale"),  # a crash loop: 3 restarts, 4 addresses
        series("classifier", "8", "_x22 1330x20 stale"),
        series("classifier", "9", "_x44 1660x20 stale"),
        series("classifier", "10", "_x66 1990x264"),
    ]

    def expect(expr: str, at: str, counts: dict[str, int]) -> dict[str, Any]:
        samples = [{"labels": f'{{service="{s}"}}', "value": n} for s, n in counts.items()]
        return {"expr": expr, "eval_time": at, "exp_samples": samples}

    naive = 'sum by (service) (changes(process_start_time_seconds{job="fervid"}[1h]))'
    tests = [
        expect(restarts, "30m", {"ingest": 0, "detector": 1, "storage": 1, "classifier": 3}),
        expect(restarts, "80m", {"ingest": 0, "detector": 0, "storage": 0, "classifier": 0}),  # all > 1 h ago
        expect(naive, "30m", {"ingest": 0, "detector": 1, "storage": 0, "classifier": 0}),  # why not this one
    ]

    def promtool_test(cases: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
        doc = {"rule_files": [], "tests": [{"interval": "15s", "input_series": inputs, "promql_expr_test": cases}]}
        path = tmp_path / "restarts_test.yml"
        path.write_text(yaml.safe_dump(doc))
        return subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)

    result = promtool_test(tests)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    tests[0]["exp_samples"][3]["value"] = 2  # promtool does fail a wrong expectation: the check above can fail
    result = promtool_test(tests)
    assert result.returncode != 0 and 'got: {service="classifier"} 3E+00' in result.stderr, result.stdout
