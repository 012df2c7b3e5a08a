"""docker-compose.yml and the Dockerfile, checked without a Docker engine: every file they
reference exists, ports and variables are the contract's, the service waits for a healthy
PostgreSQL, and Prometheus and Grafana point at the services compose defines."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

#: the contract's environment variables (contract.md, "Settings")
CONTRACT_VARIABLES = {
    "READ_PRIMARY", "READ_PRIMARY_FILE", "SQLITE_PATH", "POSTGRES_DSN", "DUAL_WRITE",
    "MIRROR_TIMEOUT_MS", "SHADOW_SAMPLE_RATE", "SHADOW_TIMEOUT_MS", "SHADOW_WORKER",
    "METRICS_PORT", "ADMIN_TOKEN", "API_TOKEN",
}
SERVICE_PORT = 8000


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, PurePosixPath]]:
    """(host path, container path) of each bind mount (named volumes are skipped)."""
    out = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out.append(((ROOT / source).resolve(), PurePosixPath(target)))
    return out


def host_path(service: dict[str, Any], container_path: PurePosixPath) -> Path | None:
    """Where a container path of `service` comes from on this checkout, if bind-mounted."""
    for source, target in bind_mounts(service):
        if container_path == target:
            return source
        if target in container_path.parents:
            return source / container_path.relative_to(target)
    return None


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_the_five_services_exist(compose: dict[str, Any]) -> None:
    assert set(services(compose)) >= {
        "postgres", "service", "prometheus", "alertmanager", "grafana"}


def test_every_referenced_local_file_exists(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        for source, _ in bind_mounts(service):
            assert source.exists(), f"{name} mounts {source}, which does not exist"
        build = service.get("build")
        if build is not None:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get(
                "dockerfile", "Dockerfile")
            assert (context / dockerfile).is_file(), f"{name} builds from a missing Dockerfile"


def test_postgres_has_a_pg_isready_healthcheck_and_a_volume(compose: dict[str, Any]) -> None:
    pg = services(compose)["postgres"]
    assert re.match(r"postgres:1[56](\b|\.)", pg["image"])
    test = pg["healthcheck"]["test"]
    assert "pg_isready" in (test if isinstance(test, str) else " ".join(test))
    assert any(v.split(":")[1] == "/var/lib/postgresql/data" for v in pg["volumes"])
    assert pg["volumes"][0].split(":")[0] in compose["volumes"]


def test_service_waits_for_a_healthy_postgres(compose: dict[str, Any]) -> None:
    depends = services(compose)["service"]["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"


def test_service_command_port_and_variables_match_the_contract(
    compose: dict[str, Any],
) -> None:
    svc = services(compose)["service"]
    command = svc["command"] if isinstance(svc["command"], list) else svc["command"].split()
    assert command == ["cutover", "serve", "--host", "0.0.0.0", "--port", str(SERVICE_PORT)]
    assert f"{SERVICE_PORT}:{SERVICE_PORT}" in [str(p) for p in svc["ports"]]
    env = environment(svc)
    assert set(env) <= CONTRACT_VARIABLES, set(env) - CONTRACT_VARIABLES
    assert {"READ_PRIMARY", "READ_PRIMARY_FILE", "SQLITE_PATH", "POSTGRES_DSN", "API_TOKEN",
            "ADMIN_TOKEN"} <= set(env)
    assert env["SQLITE_PATH"] == "/data/app.db"
    assert env["READ_PRIMARY_FILE"].startswith("/data/")
    # listening on 0.0.0.0 needs API_TOKEN: compose refuses to start without the secrets
    for secret in ("API_TOKEN", "ADMIN_TOKEN"):
        assert re.fullmatch(rf"\$\{{{secret}:\?[^}}]+\}}", env[secret]), env[secret]
    assert "/data" in [v.split(":")[1] for v in svc["volumes"]]


def test_service_dsn_points_at_the_postgres_service(compose: dict[str, Any]) -> None:
    pg_env = environment(services(compose)["postgres"])
    dsn = environment(services(compose)["service"])["POSTGRES_DSN"]
    assert dsn.startswith("postgresql://")
    # compare the parts around the password, which comes from the environment
    user, rest = dsn.removeprefix("postgresql://").split(":", 1)
    host_part = rest.rsplit("@", 1)[1]
    assert user == pg_env["POSTGRES_USER"]
    assert host_part == f"postgres:5432/{pg_env['POSTGRES_DB']}"
    assert "${POSTGRES_PASSWORD" in rest and "${POSTGRES_PASSWORD" in pg_env["POSTGRES_PASSWORD"]


def test_prometheus_scrapes_the_service_and_loads_the_rules(compose: dict[str, Any]) -> None:
    prom = services(compose)["prometheus"]
    assert prom["image"].startswith("prom/prometheus")
    config_arg = next((a for a in prom.get("command", []) if a.startswith("--config.file=")),
                      "--config.file=/etc/prometheus/prometheus.yml")
    config_in_container = PurePosixPath(config_arg.split("=", 1)[1])
    config_path = host_path(prom, config_in_container)
    assert config_path is not None and config_path.is_file()
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))

    targets = [
        (job.get("metrics_path", "/metrics"), target)
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]
    assert ("/metrics", f"service:{SERVICE_PORT}") in targets
    assert config["rule_files"], "no alert rules loaded"
    for rule_file in config["rule_files"]:
        in_container = config_in_container.parent / rule_file
        source = host_path(prom, in_container)
        assert source is not None and source.is_file(), f"rule file {rule_file} is not mounted"
        assert yaml.safe_load(source.read_text(encoding="utf-8"))["groups"]


def test_prometheus_sends_its_alerts_to_the_alertmanager(compose: dict[str, Any]) -> None:
    am = services(compose)["alertmanager"]
    assert am["image"].startswith("prom/alertmanager")
    args = am.get("command", [])
    config_arg = next((a for a in args if a.startswith("--config.file=")),
                      "--config.file=/etc/alertmanager/alertmanager.yml")
    am_config_path = host_path(am, PurePosixPath(config_arg.split("=", 1)[1]))
    assert am_config_path is not None and am_config_path.is_file()
    am_config = yaml.safe_load(am_config_path.read_text(encoding="utf-8"))
    receivers = {r["name"] for r in am_config["receivers"]}
    assert am_config["route"]["receiver"] in receivers
    listen = next((a for a in args if a.startswith("--web.listen-address=")),
                  "--web.listen-address=:9093")
    port = int(listen.rsplit(":", 1)[1])
    assert f"{port}:{port}" in [str(p) for p in am["ports"]]

    prom = services(compose)["prometheus"]
    assert "alertmanager" in prom["depends_on"]
    config_path = host_path(prom, PurePosixPath("/etc/prometheus/prometheus.yml"))
    assert config_path is not None
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    targets = [
        target
        for manager in config["alerting"]["alertmanagers"]
        for static in manager["static_configs"]
        for target in static["targets"]
    ]
    assert targets == [f"alertmanager:{port}"]


def test_grafana_provisions_the_datasource_and_the_dashboard(compose: dict[str, Any]) -> None:
    grafana = services(compose)["grafana"]
    provisioning = host_path(grafana, PurePosixPath("/etc/grafana/provisioning"))
    assert provisioning is not None
    datasources = [
        ds
        for f in sorted((provisioning / "datasources").glob("*.y*ml"))
        for ds in yaml.safe_load(f.read_text(encoding="utf-8"))["datasources"]
    ]
    prom = next(ds for ds in datasources if ds["type"] == "prometheus")
    url = urlsplit(prom["url"])
    assert url.hostname in services(compose) and url.hostname == "prometheus"
    assert f"{url.port}:{url.port}" in services(compose)["prometheus"]["ports"]

    providers = [
        p
        for f in sorted((provisioning / "dashboards").glob("*.y*ml"))
        for p in yaml.safe_load(f.read_text(encoding="utf-8"))["providers"]
    ]
    assert providers
    for provider in providers:
        folder = host_path(grafana, PurePosixPath(provider["options"]["path"]))
        assert folder is not None and folder.is_dir(), provider["options"]["path"]
        assert list(folder.glob("*.json")), f"no dashboard JSON in {folder}"
    home = environment(grafana).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        home_path = host_path(grafana, PurePosixPath(home))
        assert home_path is not None and home_path.is_file()


def test_secrets_come_from_the_environment_only(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    for name, service in services(compose).items():
        for key, value in environment(service).items():
            if re.search(r"PASSWORD|TOKEN", key):
                assert value.startswith("${") and ":?" in value, f"{name}.{key} is hard-coded"
    assert not re.search(r"postgresql://[^:]+:[^$][^@]*@", text), "a literal password in a DSN"


def test_dockerfile_installs_the_project_and_serves_on_8000() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.1[1-9]", text, re.M)
    assert re.search(r"pip install \.", text)
    for copied in re.findall(r"^COPY (\S+)", text, re.M):
        assert (ROOT / copied).exists(), f"Dockerfile copies missing {copied}"
    assert "EXPOSE 8000" in text
    assert '"cutover", "serve", "--host", "0.0.0.0", "--port", "8000"' in text
    assert re.search(r"^USER (?!root)\S+", text, re.M), "the service should not run as root"
