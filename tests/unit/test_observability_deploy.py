"""deploy/prometheus and deploy/grafana, offline: promtool checks the rules and runs their
unit tests, both Prometheus configurations are valid and scrape the API with a key, the
dashboard is well formed, and compose's `observability` profile wires them together.
(tests/e2e/test_observability.py runs them against a live stack.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.unit.test_settings_and_runner import compose

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "jobrunner.json"


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("CI must check the alert rules: install promtool (apt: prometheus)")
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return subprocess.run([binary, *args], capture_output=True, text=True, cwd=cwd)


def test_promtool_accepts_the_alert_rules() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_fire_when_and_only_when_their_unit_tests_say() -> None:
    """alerts_test.yml: a pool losing its workers, a failure ratio, a growing queue and
    redeliveries, with two API instances reporting the same counts."""
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus.local.yml"])
def test_each_prometheus_configuration_scrapes_the_api_with_a_metrics_key(name: str) -> None:
    # --syntax-only: the key files exist only where Prometheus runs.
    result = promtool("check", "config", "--syntax-only", name)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((PROMETHEUS_DIR / name).read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    # The alerts and the dashboard select job="jobrunner".
    assert job["job_name"] == "jobrunner" and job["metrics_path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer"
    assert "credentials_file" in job["authorization"]


def test_the_local_configuration_reads_the_key_make_run_keeps() -> None:
    """prometheus.local.yml scrapes the API `make run` starts, on its default address,
    with the key it saves in .run/api-key (which has the metrics scope)."""
    from services.core.settings import Settings
    from services.devstack.run import run_dir

    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.local.yml").read_text())
    (job,) = config["scrape_configs"]
    defaults = Settings.model_fields
    address = f"{defaults['api_host'].default}:{defaults['api_port'].default}"
    assert job["static_configs"] == [{"targets": [address]}]
    key_file = (PROMETHEUS_DIR / job["authorization"]["credentials_file"]).resolve()
    assert key_file == run_dir(Settings(jobrunner_run_dir=None)) / "api-key"
    source = (ROOT / "services" / "devstack" / "run.py").read_text()
    assert '"api-key"' in source and "read+submit+admin+metrics" in source


def test_the_dashboard_is_well_formed() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "jobrunner" and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    # The Prometheus to ask is a variable: the dashboard imports into any Grafana.
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    graphs = [panel for panel in board["panels"] if panel["type"] != "row"]
    assert len(graphs) >= 8
    for panel in graphs:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        box = panel["gridPos"]
        assert box["x"] >= 0 and box["x"] + box["w"] <= 24, panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"] == panel["datasource"]
    titles = " ".join(panel["title"].lower() for panel in graphs)
    for topic in ("throughput", "failure", "run time", "queue wait", "queue depth", "workers"):
        assert topic in titles, topic


def test_the_observability_profile_runs_prometheus_and_grafana_provisioned_from_deploy() -> None:
    result = compose("--profile", "observability", "config")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    for service in (prometheus, grafana):
        assert service["profiles"] == ["observability"]
        # Their UIs answer on this machine only.
        for port in service["ports"]:
            # docker-compose 1 renders the short syntax, 2 the long one.
            host_ip = port["host_ip"] if isinstance(port, dict) else port.split(":")[0]
            assert host_ip == "127.0.0.1", port

    def mounts(service: dict) -> dict[str, Path]:
        """Bind mounts, target to source."""
        found = {}
        for volume in service["volumes"]:
            if isinstance(volume, str):
                source, target = volume.split(":")[:2]
                volume = {"type": "bind" if source.startswith("/") else "volume",
                          "source": source, "target": target}  # fmt: skip
            if volume["type"] == "bind":
                found[volume["target"]] = Path(volume["source"])
        return found

    # Prometheus: deploy/prometheus as its configuration, scraping the api service with
    # the key its entrypoint writes from METRICS_API_KEY.
    assert mounts(prometheus)["/etc/prometheus"] == PROMETHEUS_DIR
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["static_configs"] == [{"targets": ["api:8000"]}]
    assert "8000" in str(services["api"]["environment"]["API_PORT"])
    command = " ".join(prometheus["command"])
    key_file = job["authorization"]["credentials_file"]
    assert re.search(rf'"\$\$?METRICS_API_KEY" > {re.escape(key_file)} ', command), command
    assert "--config.file=/etc/prometheus/prometheus.yml" in command
    assert "METRICS_API_KEY" in prometheus["environment"]
    # Grafana: its provisioning, whose datasource is that Prometheus and whose dashboards
    # are deploy/grafana/dashboards, where they are mounted.
    grafana_mounts = mounts(grafana)
    assert grafana_mounts["/etc/grafana/provisioning"] == GRAFANA_DIR / "provisioning"
    datasources = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    assert [d["url"] for d in datasources] == ["http://prometheus:9090"]
    provider = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "jobrunner.yml").read_text()
    )["providers"][0]
    dashboards_at = provider["options"]["path"]
    assert grafana_mounts[dashboards_at] == DASHBOARD.parent
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_at}/{DASHBOARD.name}"
