"""compose.yaml, compose.cpu.yaml and .env.example, checked without Docker: the Compose Specification JSON
schema (vendored from github.com/compose-spec/compose-spec, schema/compose-spec.json), every service command
against the real CLI, every FERVID_* variable against the settings model, the classifier's GPU reservation."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from fervid.contracts import CLASSIFIER_GROUP, DETECTOR_GROUP, Keys
from fervid.settings import Settings

KEYS = Keys()  # the default namespace

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((Path(__file__).parent / "data" / "compose-spec.json").read_text())
FERVID_IMAGE = re.compile(r"^\$\{FERVID_IMAGE:-fervid\}:")


class _Loader(yaml.SafeLoader):
    """PyYAML plus compose's `!reset` / `!override` tags."""


def _tagged(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    return loader.construct_scalar(node) or None  # type: ignore[arg-type]


_Loader.add_constructor("!reset", _tagged)
_Loader.add_constructor("!override", _tagged)


def load(name: str) -> dict[str, Any]:
    return yaml.load((ROOT / name).read_text(), Loader=_Loader)


def env_example() -> dict[str, str]:
    pairs = [
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    return {k.strip(): v.strip() for k, v in pairs}


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} (enough for our files); `$$` is a literal `$`."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in env and (env[name] or not (op or "").startswith(":")):
            return env[name]
        if op and op.endswith("?"):
            raise KeyError(f"${{{name}}} required: {arg}")
        return arg or ""

    return _VAR.sub(sub, value.replace("$$", "\0")).replace("\0", "$")


def variables(value: Any) -> set[str]:
    return {m[0] for m in _VAR.findall(yaml.safe_dump(value))}


def settings_env_names() -> set[str]:
    """Every environment variable fervid reads: FERVID_<FIELD> and FERVID_<SECTION>__<FIELD> of the settings, and
    the few read directly from os.environ (e.g. FERVID_API_TOKEN)."""
    names = set()
    for package in ("fervid", "storage", "ingest", "detector", "classifier"):
        for path in (ROOT / package).rglob("*.py"):
            names |= set(re.findall(r"environ(?:\.get)?[\[(]\s*[\"'](FERVID_[A-Z0-9_]+)[\"']", path.read_text()))
    for name, f in Settings.model_fields.items():
        names.add(f"FERVID_{name.upper()}")
        sub = getattr(f.annotation, "model_fields", None)
        for child in sub or {}:
            names.add(f"FERVID_{name.upper()}__{child.upper()}")
    return names


def fervid_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if FERVID_IMAGE.match(str(s.get("image", "")))}


@pytest.mark.parametrize("name", ["compose.yaml", "compose.cpu.yaml"])
def test_valid_against_compose_spec(name: str) -> None:
    raw = load(name)
    jsonschema.Draft7Validator(SCHEMA).validate(raw)  # as written (variables unresolved)
    jsonschema.Draft7Validator(SCHEMA).validate(interpolate(raw, env_example()))  # as compose sees it with .env.example


def test_env_example_documents_every_variable() -> None:
    used = variables(load("compose.yaml")) | variables(load("compose.cpu.yaml"))
    documented = set(env_example())
    assert used - documented == set(), "used in compose but missing from .env.example"
    assert documented - used == set(), ".env.example documents variables compose never reads"


def test_every_fervid_variable_is_a_setting() -> None:
    known = settings_env_names()
    services = fervid_services(load("compose.yaml")) | load("compose.cpu.yaml")["services"]
    assert {"migrate", "ingest", "detector", "classifier", "storage", "api"} <= set(services)
    for name, svc in services.items():
        for var in svc.get("environment") or {}:
            if var.startswith("FERVID_"):
                assert var in known, f"{name}: {var} is not read by fervid.settings.Settings"
    dockerfile_env = set(re.findall(r"\b(FERVID_[A-Z_]+)=", (ROOT / "Dockerfile").read_text()))
    assert dockerfile_env <= known


def _commands() -> list[tuple[str, list[str]]]:
    return [(n, s["command"]) for n, s in fervid_services(load("compose.yaml")).items()]


@pytest.mark.parametrize(("service", "command"), _commands(), ids=[n for n, _ in _commands()])
def test_service_command_exists(service: str, command: list[str]) -> None:
    import typer.main

    from fervid.cli import app

    assert command[0] in set(typer.main.get_command(app).commands), f"{service}: no `fervid {command[0]}`"  # type: ignore[attr-defined]
    # --help after the service's own arguments: click rejects an unknown option or argument first.
    result = subprocess.run(
        [sys.executable, "-m", "fervid", *command, "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "Usage: fervid" in result.stdout.replace("\n", " ") or "Usage:" in result.stdout


def test_classifier_reserves_a_gpu_and_cpu_override_drops_it() -> None:
    compose = load("compose.yaml")
    devices = compose["services"]["classifier"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d.get("capabilities", []) and d.get("driver") == "nvidia" for d in devices)
    assert compose["services"]["detector"]["deploy"]["replicas"]
    cpu = load("compose.cpu.yaml")["services"]["classifier"]
    assert cpu["deploy"]["resources"]["reservations"]["devices"] == []  # `!reset []`
    assert cpu["environment"]["FERVID_CLASSIFIER__DEVICE"] == "cpu"


def test_compose_shape() -> None:
    s = load("compose.yaml")["services"]
    assert "--appendonly" in s["redis"]["command"] and "--requirepass" in s["redis"]["command"]
    assert s["postgres"]["healthcheck"] and any("/var/lib/postgresql/data" in v for v in s["postgres"]["volumes"])
    assert s["migrate"]["restart"] == "no"
    assert s["storage"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert s["detector"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert any(v.endswith(":/etc/fervid/cameras.yaml:ro") for v in s["ingest"]["volumes"])
    assert any("deploy/grafana/provisioning" in v for v in s["grafana"]["volumes"])
    for name, svc in fervid_services(load("compose.yaml")).items():
        assert svc.get("restart") in ("unless-stopped", "no"), name
        assert svc.get("healthcheck"), name
    assert (ROOT / "cameras.example.yaml").exists()


def _k8s_docs() -> list[dict[str, Any]]:
    base = ROOT / "deploy" / "k8s"
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((base / name).read_text()) if d]
    return docs


def test_k8s_base() -> None:
    docs = _k8s_docs()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for name in ("fervid-ingest", "fervid-detector", "fervid-classifier", "fervid-storage", "fervid-api"):
        assert ("Deployment", name) in kinds
    assert ("Job", "fervid-migrate") in kinds
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d for d in docs if d["kind"] == "ScaledObject"}
    assert set(scaled) == {"fervid-detector", "fervid-classifier"}
    # Detector: one query over every camera's frame stream (no per-camera list to keep in step with cameras.yaml).
    (detector,) = scaled["fervid-detector"]["spec"]["triggers"]
    assert detector["type"] == "prometheus" and int(detector["metadata"]["threshold"]) > 0
    # Classifier: KEDA's redis-streams scaler on the one faces stream, pending entries and lag.
    (classifier,) = scaled["fervid-classifier"]["spec"]["triggers"]
    meta = classifier["metadata"]
    assert classifier["type"] == "redis-streams" and (meta["stream"], meta["consumerGroup"]) == (
        KEYS.faces,
        CLASSIFIER_GROUP,
    )
    assert int(meta["pendingEntriesCount"]) > 0 and int(meta["lagCount"]) > 0
    known = settings_env_names()
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    secrets = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "fervid-backends"]
    env_names = set(config["data"]) | {k for s in secrets for k in s["stringData"] if k.startswith("FERVID_")}
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            for c in d["spec"]["template"]["spec"]["containers"]:
                env_names |= {e["name"] for e in c.get("env", [])}
    assert env_names <= known
    ingest = next(d for d in docs if d["metadata"]["name"] == "fervid-ingest")
    assert ingest["spec"]["replicas"] == 1 and ingest["spec"]["strategy"]["type"] == "Recreate"


def test_cameras_example_is_a_valid_cameras_yaml() -> None:
    from ingest.cameras import parse_cameras

    text = (ROOT / "cameras.example.yaml").read_text()
    names = set(re.findall(r"\$\{([A-Z_]+)\}", text))
    cameras = parse_cameras(text, "cameras.example.yaml", env={n: "x" for n in names})
    assert [c.name for c in cameras] == ["entrance", "lobby"]
    k8s = yaml.safe_load_all((ROOT / "deploy" / "k8s" / "secrets.yaml").read_text())
    by_name = {d["metadata"]["name"]: d for d in k8s}
    creds = set(by_name["fervid-camera-credentials"]["stringData"])
    assert names <= creds  # every ${VAR} of the camera list has a credential in the Secret
    parse_cameras(by_name["fervid-cameras"]["stringData"]["cameras.yaml"], "k8s", env={n: "x" for n in creds})


def test_grafana_gets_every_variable_its_provisioning_reads() -> None:
    grafana = load("compose.yaml")["services"]["grafana"]
    needed = set()
    for path in (ROOT / "deploy" / "grafana" / "provisioning").rglob("*.y*ml"):
        needed |= set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)\}", path.read_text()))
    assert needed and needed <= set(grafana["environment"])


def test_keda_detector_query_reads_the_bus_metrics_workers_export(redis_client) -> None:
    """The detector's scaling query names metrics and labels that fervid workers really export, and evaluated
    over a real exposition it is the total backlog (unread + unacked) of every camera's frame stream. No
    Prometheus or KEDA runs here: the query's one shape, sum(max by (stream) (a{m} + b{m})), is evaluated by hand."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from fervid.bus import Bus
    from fervid.contracts import FrameMsg, FrameRef
    from fervid.metrics import BusCollector

    (trigger,) = next(
        d for d in _k8s_docs() if d["metadata"]["name"] == "fervid-detector" and d["kind"] == "ScaledObject"
    )["spec"]["triggers"]
    query = " ".join(trigger["metadata"]["query"].split())
    m = re.fullmatch(r"sum\(max by \(stream\) \((\w+)\{(\w+)=\"(\w+)\"\} \+ (\w+)\{(\w+)=\"(\w+)\"\}\)\)", query)
    assert m, query
    (a, la, va, b, lb, vb) = m.groups()
    assert (la, va) == (lb, vb) == ("group", DETECTOR_GROUP)

    # Two cameras: cam-a has 5 frames, 2 read and unacked; cam-b has 3 frames, none read. Backlog = 8.
    producer, detector = Bus(redis_client, "ingest"), Bus(redis_client, DETECTOR_GROUP, "replica-1")
    for camera, n in (("cam-a", 5), ("cam-b", 3)):
        redis_client.sadd(KEYS.cameras, camera)
        detector.ensure_group(KEYS.frames(camera))
        for seq in range(n):
            producer.publish(
                KEYS.frames(camera),
                FrameMsg(FrameRef(camera, seq, 1000.0 + seq, 2, 2), b"x"),
                downstream_group=DETECTOR_GROUP,
                backlog=64,
            )
    assert len(detector.read([KEYS.frames("cam-a")], 2, 100)) == 2

    registry = CollectorRegistry()
    registry.register(BusCollector(redis_client, KEYS))
    exposition = generate_latest(registry).decode()
    samples = [s for f in text_string_to_metric_families(exposition) for s in f.samples]
    # Two scraped workers report the same streams (the reason for max by (stream)): add a second instance.
    series = [(s.name, {**s.labels, "instance": i}, s.value) for i in ("w1", "w2") for s in samples]
    by_stream: dict[str, float] = {}
    for name, labels, value in series:
        if name == a and labels.get(la) == va:
            other = [v for n2, l2, v in series if n2 == b and l2 == labels]  # PromQL `+`: same labels
            assert len(other) == 1, f"{b} has no series matching {labels}"
            by_stream[labels["stream"]] = max(by_stream.get(labels["stream"], 0.0), value + other[0])
    assert by_stream == {KEYS.frames("cam-a"): 5.0, KEYS.frames("cam-b"): 3.0}
    assert sum(by_stream.values()) == 8
