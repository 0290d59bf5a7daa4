"""compose.yaml, compose.cpu.yaml, .env.example, the Dockerfile, Prometheus' config, the image's entrypoint and
the Kubernetes manifests, checked without a container engine: the Compose Specification JSON schema (vendored
from github.com/compose-spec/compose-spec, schema/compose-spec.json), every service command against the real CLI,
every FERVID_* variable against the settings model, secrets only from files, GPU reservations, the k8s
manifests against Kubernetes' own schemas (kubernetes-validate, offline). deploy/smoke.sh runs the real thing.
"""

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
    assert isinstance(node, yaml.ScalarNode)
    return loader.construct_scalar(node) or None


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


_VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


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


@pytest.mark.parametrize("name", ["compose.yaml", "compose.cpu.yaml", "deploy/smoke/compose.smoke.yaml"])
def test_valid_against_compose_spec(name: str) -> None:
    raw = load(name)
    env = env_example() | {"FERVID_IMAGE": "localhost/fervid-smoke/fervid"}
    jsonschema.Draft7Validator(SCHEMA).validate(raw)  # as written (variables unresolved)
    jsonschema.Draft7Validator(SCHEMA).validate(interpolate(raw, env))  # as compose sees it with .env.example


def test_env_example_documents_every_variable() -> None:
    used = variables(load("compose.yaml")) | variables(load("compose.cpu.yaml"))
    documented = set(env_example())
    assert used - documented == set(), "used in compose but missing from .env.example"
    assert documented - used == set(), ".env.example documents variables compose never reads"
    text = (ROOT / ".env.example").read_text()
    for name in documented:  # each with a comment right above it (or above its group)
        assert re.search(rf"#[^\n]*\n(?:[A-Z_]+=[^\n]*\n)*{name}=", text), f"{name} has no comment"


def test_every_fervid_variable_is_a_setting() -> None:
    """FERVID_<SETTING>_FILE is read by the image's entrypoint into FERVID_<SETTING> (deploy/docker-entrypoint.py)."""
    known = settings_env_names()
    services = fervid_services(load("compose.yaml")) | load("compose.cpu.yaml")["services"]
    assert {"migrate", "ingest", "detector", "classifier", "storage", "api"} <= set(services)
    for name, svc in services.items():
        for var in svc.get("environment") or {}:
            if var.startswith("FERVID_"):
                assert var.removesuffix("_FILE") in known, f"{name}: {var} is not read by fervid.settings.Settings"
    dockerfile_env = set(re.findall(r"\b(FERVID_[A-Z_]+)=", (ROOT / "Dockerfile").read_text()))
    assert dockerfile_env <= known


def _commands() -> list[tuple[str, list[str]]]:
    return [(n, s["command"]) for n, s in fervid_services(load("compose.yaml")).items()]


@pytest.mark.parametrize(("service", "command"), _commands(), ids=[n for n, _ in _commands()])
def test_service_command_exists(service: str, command: list[str]) -> None:
    import typer.main

    from fervid.cli import app

    assert command[0] in set(typer.main.get_group(app).commands), f"{service}: no `fervid {command[0]}`"
    # --help after the service's own arguments: click rejects an unknown option or argument first.
    result = subprocess.run(
        [sys.executable, "-m", "fervid", *command, "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "Usage: fervid" in result.stdout.replace("\n", " ") or "Usage:" in result.stdout


def test_detector_and_classifier_reserve_a_gpu_and_cpu_override_drops_it() -> None:
    """The GPU stack never runs a model on the CPU silently: both GPU stages reserve a GPU and ask for cuda (a
    missing GPU fails at start); compose.cpu.yaml drops the reservations and asks for the CPU."""
    compose, cpu = load("compose.yaml")["services"], load("compose.cpu.yaml")["services"]
    for name, var in (("detector", "DETECTOR"), ("classifier", "CLASSIFIER")):
        devices = compose[name]["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d.get("capabilities", []) and d.get("driver") == "nvidia" for d in devices), name
        assert interpolate(compose[name]["environment"][f"FERVID_{var}__DEVICE"], {}) == "cuda", name
        assert cpu[name]["deploy"]["resources"]["reservations"]["devices"] == [], name  # `!reset []`
        assert cpu[name]["environment"][f"FERVID_{var}__DEVICE"] == "cpu", name
    assert compose["detector"]["deploy"]["replicas"]


def test_compose_shape() -> None:
    s = load("compose.yaml")["services"]
    redis = " ".join(s["redis"]["command"])
    assert "--appendonly yes" in redis and "--requirepass" in redis and "/run/secrets/redis_password" in redis
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


def test_every_service_rotates_its_log() -> None:
    for name, svc in load("compose.yaml")["services"].items():
        logging = svc.get("logging") or {}
        assert logging.get("driver") == "json-file" and logging["options"]["max-size"], name


def test_secrets_come_from_files_never_from_the_environment() -> None:
    """Passwords and the token are compose secrets (files at /run/secrets/<name>); each *_FILE variable points at
    a secret its service mounts; no value in any environment holds a secret; .env.example holds none."""
    compose = load("compose.yaml")
    declared = compose["secrets"]
    assert set(declared) == {"redis_password", "postgres_password", "api_token", "grafana_admin_password"}
    for secret in declared.values():
        assert secret["file"].startswith("${SECRETS_DIR:-./secrets}/")
    for name, svc in compose["services"].items():
        mounted = set(svc.get("secrets") or [])
        assert mounted <= set(declared), name
        # A secret read by the service's own command or healthcheck (a shell's `cat`) is one it mounts.
        own = json.dumps([svc.get("command"), svc.get("entrypoint"), svc.get("healthcheck")])
        for read in re.findall(r"/run/secrets/([a-z_]+)", own):
            assert read in mounted, f"{name} reads /run/secrets/{read} without mounting it"
        for var, value in (svc.get("environment") or {}).items():
            value = str(value)
            if var.endswith("_FILE") or var.endswith("__FILE"):
                assert value.removeprefix("/run/secrets/") in mounted, f"{name}: {var}={value} is not mounted"
                continue
            assert not re.search(r"PASSWORD|TOKEN|SECRET", var), f"{name}: {var} is a secret in the environment"
            assert not re.search(r"(?<!\$)\$\{[A-Z_]*(PASSWORD|TOKEN)", value), f"{name}: {var} interpolates a secret"
            for ref in re.findall(r"\$\$\{([A-Z_]+)\}", value):  # expanded inside by the entrypoint, from a file
                assert svc["environment"].get(f"{ref}_FILE", "").removeprefix("/run/secrets/") in mounted, (name, ref)
    assert not [k for k in env_example() if re.search(r"PASSWORD$|TOKEN$", k)], ".env.example must hold no secret"


def test_classifier_serves_a_checkpoint_from_a_read_only_models_mount() -> None:
    classifier = load("compose.yaml")["services"]["classifier"]
    assert "${MODELS_DIR:-./models}:/models:ro" in classifier["volumes"]
    assert classifier["environment"]["FERVID_CLASSIFIER__CHECKPOINT"] == "${CLASSIFIER_CHECKPOINT:-}"
    assert env_example()["CLASSIFIER_CHECKPOINT"] == ""  # the bundled model until the user trains one


def test_prometheus_scrapes_every_worker_and_the_api() -> None:
    compose = load("compose.yaml")
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    workers = {n for n, s in fervid_services(compose).items() if n not in ("migrate", "api")}
    (sd,) = jobs["fervid"]["dns_sd_configs"]  # DNS: every replica of a scaled service
    assert set(sd["names"]) == workers and sd["type"] == "A"
    port = compose["x-redis-env"]["FERVID_METRICS_PORT"]
    assert str(sd["port"]) == port and f"EXPOSE {port}" in (ROOT / "Dockerfile").read_text()
    assert port != "9100"  # node_exporter's
    api = jobs["fervid-api"]
    assert api["static_configs"][0]["targets"] == ["api:8000"]
    token_file = api["authorization"]["credentials_file"]
    assert token_file.removeprefix("/run/secrets/") in compose["services"]["prometheus"]["secrets"]
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_prometheus_scrapes_the_redis_and_postgresql_exporters() -> None:
    """Each exporter is a compose service, scraped on the port its healthcheck reads, labelled like the workers."""
    services = load("compose.yaml")["services"]
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    for job, service, port in (("redis", "redis-exporter", 9121), ("postgres", "postgres-exporter", 9187)):
        (static,) = jobs[job]["static_configs"]
        assert static["targets"] == [f"{service}:{port}"] and static["labels"] == {"service": job}
        assert f"http://127.0.0.1:{port}/metrics" in services[service]["healthcheck"]["test"][1], service


def test_exporters_read_their_servers_with_the_stacks_secrets() -> None:
    """The Redis and PostgreSQL exporters log in with the same secret files as the servers (no password in their
    environment or in the file), wait for their server to be healthy, and are healthy only once they read it."""
    compose = load("compose.yaml")
    s = compose["services"]
    redis = s["redis-exporter"]
    assert redis["secrets"] == ["redis_password"] and redis["environment"] == {"REDIS_ADDR": "redis://redis:6379"}
    assert 'REDIS_PASSWORD="$$(cat /run/secrets/redis_password)"' in " ".join(redis["entrypoint"])
    assert "grep -q '^redis_up 1'" in redis["healthcheck"]["test"][1]
    assert redis["depends_on"] == {"redis": {"condition": "service_healthy"}}
    pg = s["postgres-exporter"]
    env = interpolate(pg["environment"], env_example())
    assert env["DATA_SOURCE_PASS_FILE"] == "/run/secrets/postgres_password" and pg["secrets"] == ["postgres_password"]
    assert not {"DATA_SOURCE_NAME", "DATA_SOURCE_PASS"} & set(env)  # they would win over the file
    postgres = interpolate(s["postgres"]["environment"], env_example())
    assert env["DATA_SOURCE_USER"] == postgres["POSTGRES_USER"]
    assert env["DATA_SOURCE_URI"] == f"postgres:5432/{postgres['POSTGRES_DB']}?sslmode=disable"
    assert "grep -q '^pg_up 1'" in pg["healthcheck"]["test"][1]
    assert pg["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("redis-exporter", "postgres-exporter"):
        assert s[name]["restart"] == "unless-stopped" and s[name]["healthcheck"]["test"][0] == "CMD-SHELL", name


def test_third_party_images_are_pinned_and_the_smoke_run_has_a_stand_in_for_each() -> None:
    """Every image not built from the Dockerfile names a version; deploy/smoke/compose.smoke.yaml replaces each
    with a stand-in built from Debian packages (deploy/smoke/standins.sh), except Grafana's, which has none."""
    compose = load("compose.yaml")["services"]
    smoke = load("deploy/smoke/compose.smoke.yaml")["services"]
    standins = (ROOT / "deploy" / "smoke" / "standins.sh").read_text()
    third_party = {n: s["image"] for n, s in compose.items() if n not in fervid_services(load("compose.yaml"))}
    assert {"redis", "postgres", "prometheus", "redis-exporter", "postgres-exporter", "grafana"} == set(third_party)
    for name, image in third_party.items():
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert re.match(r"v?\d+(\.\d+)*(-[a-z]+)?$", tag), f"{name}: {image} is not pinned to a version"
        if name == "grafana":
            assert name not in smoke
            continue
        standin = smoke[name]["image"]
        assert standin.startswith("localhost/fervid-smoke/"), name
        assert f"have {standin}" in standins or f'have "{standin}"' in standins, f"standins.sh builds no {standin}"
    assert set(smoke) - set(third_party) == set(fervid_services(load("compose.yaml")))


def test_grafana_gets_every_variable_secret_and_dashboard_its_provisioning_reads() -> None:
    grafana = load("compose.yaml")["services"]["grafana"]
    needed, files = set(), set()
    for path in (ROOT / "deploy" / "grafana" / "provisioning").rglob("*.y*ml"):
        text = path.read_text()
        needed |= set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)\}", text))
        files |= set(re.findall(r"\$__file\{/run/secrets/([a-z_]+)\}", text))
    assert needed and needed <= set(grafana["environment"])
    assert files and files <= set(grafana["secrets"])
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    # The dashboard provider reads a folder the compose file mounts, holding the generated dashboards.
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/fervid.yaml").read_text())
    (path,) = [p["options"]["path"] for p in provider["providers"]]
    assert f"./deploy/grafana/dashboards:{path}:ro" in grafana["volumes"]
    sources = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/fervid.yaml").read_text())
    prometheus = next(d for d in sources["datasources"] if d["type"] == "prometheus")
    from storage.grafana import PROMETHEUS_UID

    assert prometheus["uid"] == PROMETHEUS_UID and prometheus["url"] == "http://prometheus:9090"


def test_dockerfile_binds_absolute_targets_and_the_image_can_export_onnx() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    targets = re.findall(r"--mount=type=(?:bind|cache)[^\s]*target=([^\s,]+)", dockerfile)
    assert targets and all(t.startswith("/") for t in targets), targets  # buildah rejects relative ones
    # uv rebuilds a local project's cached wheel only when pyproject.toml changes: force it, or edited sources
    # never reach the image (deploy/smoke.sh compares the image's files with the checkout's).
    installs = [line for line in dockerfile.splitlines() if "uv sync" in line and "--no-install-project" not in line]
    assert installs and all("--reinstall-package fervid" in line for line in installs), installs
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(re.match(r"onnx\b(?!runtime)", d) for d in deps), "`fervid export` needs onnx in the runtime install"
    assert '"fervid-entrypoint", "fervid"' in dockerfile


# -- the image's entrypoint ---------------------------------------------------------------------------------


def _entrypoint() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("fervid_entrypoint", ROOT / "deploy" / "docker-entrypoint.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_entrypoint_reads_secret_files_into_urls_and_drops_empty_settings(tmp_path: Path) -> None:
    ep = _entrypoint()
    (tmp_path / "redis").write_text("p@ss/w:rd%\n")
    (tmp_path / "token").write_text("tok en\n")
    env = ep.resolve(
        {
            "FERVID_REDIS_URL": "redis://:${REDIS_PASSWORD}@redis:6379/0",
            "REDIS_PASSWORD_FILE": str(tmp_path / "redis"),
            "FERVID_API_TOKEN_FILE": str(tmp_path / "token"),
            "FERVID_CLASSIFIER__CHECKPOINT": "",
            "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt",  # not ours: left alone
            "PATH": "/usr/bin",
        }
    )
    assert env["FERVID_REDIS_URL"] == "redis://:p%40ss%2Fw%3Ard%25@redis:6379/0"
    from redis.connection import parse_url

    assert parse_url(env["FERVID_REDIS_URL"])["password"] == "p@ss/w:rd%"
    assert env["FERVID_API_TOKEN"] == "tok en" and "FERVID_API_TOKEN_FILE" not in env
    assert "FERVID_CLASSIFIER__CHECKPOINT" not in env and "REDIS_PASSWORD" not in env
    assert env["SSL_CERT_FILE"] == "/etc/ssl/certs/ca-certificates.crt" and "SSL_CERT" not in env


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FERVID_REDIS_URL": "redis://:${NOPE}@r/0"}, "FERVID_REDIS_URL refers to ${NOPE}, but neither NOPE nor"),
        ({"FERVID_API_TOKEN": "a", "FERVID_API_TOKEN_FILE": "/x"}, "both FERVID_API_TOKEN and FERVID_API_TOKEN_FILE"),
        ({"FERVID_API_TOKEN_FILE": "/nonexistent/token"}, "FERVID_API_TOKEN_FILE: cannot read /nonexistent/token"),
    ],
)
def test_entrypoint_errors_are_one_line_naming_the_variable(env: dict[str, str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "docker-entrypoint.py"), "true"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1


def test_entrypoint_execs_the_command_with_the_resolved_environment(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("pw\n")
    result = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "docker-entrypoint.py"), "sh", "-c", 'echo "$FERVID_DB_URL"'],
        env={"PATH": "/usr/bin:/bin", "FERVID_DB_URL": "postgresql://u:${PG}@db/f", "PG_FILE": str(tmp_path / "pw")},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0 and result.stdout.strip() == "postgresql://u:pw@db/f"


# -- Kubernetes -----------------------------------------------------------------------------------------------


def _k8s_docs() -> list[dict[str, Any]]:
    base = ROOT / "deploy" / "k8s"
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((base / name).read_text()) if d]
    return docs


def test_k8s_manifests_are_valid_against_kubernetes_schemas() -> None:
    """kubernetes-validate (PyPI; Kubernetes' OpenAPI schemas bundled, offline), strict: unknown fields fail.
    KEDA's custom resources have no schema there; test_k8s_base checks them."""
    import kubernetes_validate

    version = "1.30"
    checked = 0
    for doc in _k8s_docs():
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        kubernetes_validate.validate(doc, version, strict=True)
        checked += 1
    assert checked >= 9
    with pytest.raises(kubernetes_validate.ValidationError):  # the validator does reject a broken manifest
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": 3}, version
        )


def test_k8s_probes_use_open_paths_on_the_served_ports() -> None:
    """Readiness on /ready everywhere (the API's is open: a probe cannot send the token), on the port each
    container serves (workers: FERVID_METRICS_PORT; the API: its --port)."""
    from storage.api import OPEN_PATHS

    docs = _k8s_docs()
    port = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["FERVID_METRICS_PORT"]
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        (c,) = d["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert c["readinessProbe"]["httpGet"]["path"] == "/ready", d["metadata"]["name"]
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if probe in c:
                assert c[probe]["httpGet"]["path"] in OPEN_PATHS
                assert c[probe]["httpGet"]["port"] in ports
        if d["metadata"]["name"] == "fervid-api":
            assert ports["http"] == int(c["args"][c["args"].index("--port") + 1])
        else:
            assert ports["metrics"] == int(port)
            assert d["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == port


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
    # Storage exports the bus's series: one replica, so the scaling query's sum counts each stream once.
    assert next(d for d in docs if d["metadata"]["name"] == "fervid-storage")["spec"]["replicas"] == 1
    detector_pod = next(d for d in docs if d["metadata"]["name"] == "fervid-detector")["spec"]["template"]["spec"]
    (container,) = detector_pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "FERVID_DETECTOR__DEVICE", "value": "cuda"} in container["env"]


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
    """The detector's scaling query names metrics and labels that fervid exports, and evaluated over a real
    exposition it is the total backlog (unread + unacked) of every camera's frame stream. No KEDA runs here: the
    query's one shape, sum(a{m} + b{m}), is evaluated by hand (deploy/smoke.sh runs the dashboard's on Prometheus)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from fervid.bus import Bus
    from fervid.contracts import FrameMsg, FrameRef
    from fervid.metrics import BusCollector

    (trigger,) = next(
        d for d in _k8s_docs() if d["metadata"]["name"] == "fervid-detector" and d["kind"] == "ScaledObject"
    )["spec"]["triggers"]
    query = " ".join(trigger["metadata"]["query"].split())
    m = re.fullmatch(r"sum\((\w+)\{(\w+)=\"(\w+)\"\} \+ (\w+)\{(\w+)=\"(\w+)\"\}\)", query)
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
    # One process (storage) exports these series: the query's plain sum counts each stream once.
    series = [(s.name, s.labels, s.value) for s in samples]
    by_stream: dict[str, float] = {}
    for name, labels, value in series:
        if name == a and labels.get(la) == va:
            other = [v for n2, l2, v in series if n2 == b and l2 == labels]  # PromQL `+`: same labels
            assert len(other) == 1, f"{b} has no series matching {labels}"
            by_stream[labels["stream"]] = value + other[0]
    assert by_stream == {KEYS.frames("cam-a"): 5.0, KEYS.frames("cam-b"): 3.0}
    assert sum(by_stream.values()) == 8
