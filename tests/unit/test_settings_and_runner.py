"""Settings from the environment and their generated page, and the local runner's reading of
the compose file."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from services.catalog.pools import POOLS
from services.core.config_page import configuration_page
from services.core.settings import Settings
from services.core.vocabulary import POOL_NAMES
from services.devstack.compose import COMPOSE_FILE, compose_commands
from services.devstack.launcher import Launcher
from services.devstack.run import parse_scale, plan

ROOT = Path(__file__).resolve().parents[2]


def test_settings_defaults_work_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "JOB_RESULT_TTL", "JOB_HTTP_ALLOWED_HOSTS", "API_PORT"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.redis_url.startswith("redis://127.0.0.1")
    assert settings.job_result_ttl == 86_400
    assert settings.job_max_body_bytes == 65_536
    assert settings.api_port == 8000


def test_allowed_hosts_are_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOB_HTTP_ALLOWED_HOSTS", "api, Example.org ,")
    assert Settings().job_http_allowed_hosts == ["api", "example.org"]


def test_the_configuration_page_is_generated_from_settings() -> None:
    """docs/configuration.md is what `python -m services.core.config_page` writes from the
    Settings class: a setting added, renamed or redescribed without regenerating it fails
    here."""
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == configuration_page(), (
        "docs/configuration.md is stale: run `python -m services.core.config_page`"
    )
    for name in Settings.model_fields:
        assert f"| `{name.upper()}` |" in committed, name


def test_worker_loglevel_takes_celery_spelling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_LOGLEVEL", "warning")
    assert Settings().worker_loglevel == "WARNING"
    monkeypatch.setenv("WORKER_LOGLEVEL", "chatty")
    with pytest.raises(ValidationError):
        Settings()


def test_scale_parsing(tmp_path: Path) -> None:
    assert parse_scale("") == {"threads": 1, "prefork": 1, "gevent": 1}
    assert parse_scale("gevent=3,threads=2") == {"threads": 2, "prefork": 1, "gevent": 3}
    # A scale sweep of some pools leaves the others out.
    left_out = plan(Launcher(tmp_path), parse_scale("threads=2,prefork=0,gevent=0"))
    assert [p.name for p in left_out] == ["api", "experiments-1", "threads-1", "threads-2"]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_scale("fibers=2")


def test_local_runner_starts_what_compose_starts(tmp_path: Path) -> None:
    commands = compose_commands()
    assert set(commands) == {"api", "worker-experiments"} | {f"worker-{p}" for p in POOLS}
    processes = plan(Launcher(tmp_path), parse_scale("gevent=2"))
    names = [p.name for p in processes]
    assert names == ["api", "experiments-1", "threads-1", "prefork-1", "gevent-1", "gevent-2"]
    for managed in processes:
        service = "api" if managed.name == "api" else f"worker-{managed.pool}"
        assert managed.argv[: len(commands[service])] == commands[service], managed.name
    # Scaled workers get distinct Celery node names, as separate containers would.
    here = socket.gethostname()
    gevent_nodes = [p.argv[p.argv.index("--name") + 1] for p in processes if p.pool == "gevent"]
    assert gevent_nodes == [f"gevent-1@{here}", f"gevent-2@{here}"]


def test_every_compose_command_exists_in_the_project() -> None:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    for name, service in services.items():
        if name == "redis" or "profiles" in service:  # not an app service
            continue
        argv = service["command"].split()
        assert argv[:2] == ["python", "-m"], name
        assert importlib.util.find_spec(f"{argv[2]}.__main__") is not None, name
        if argv[2] == "worker" and name == "worker-experiments":
            assert argv[3:] == ["--experiments"]
        elif argv[2] == "worker":
            assert argv[3:] == ["--pool", name.removeprefix("worker-")]
            assert argv[4] in POOLS
        # Scaling needs no fixed names or host ports on workers.
        if name.startswith("worker-"):
            assert "container_name" not in service and "ports" not in service
        assert "healthcheck" in service, name
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY"):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source


# Settings the containers are not given, and why.
NOT_IN_COMPOSE_ENV = {
    "api_host": "the api service's own: only it binds a port",
    "api_port": "the api service's own: only it binds a port",
    "jobrunner_run_dir": "make run's folder; containers keep nothing on local disk",
    "jobrunner_url": "read by the CLI, on the user's machine",
    "jobrunner_api_key": "read by the CLI, on the user's machine",
    "job_reconciler": "off only in tests that prove one recovery mechanism alone",
}
# Compose defaults that differ from the local ones on purpose.
COMPOSE_OWN_DEFAULTS = {
    "REDIS_URL": "Redis is the `redis` service, with a password",
    "JOB_HTTP_ALLOWED_HOSTS": "adds `api`, the API's name on the compose network",
}


def compose_app_env() -> dict[str, str]:
    return yaml.safe_load(COMPOSE_FILE.read_text())["x-app-env"]


def test_every_setting_reaches_the_containers() -> None:
    env = compose_app_env()
    for name in Settings.model_fields:
        if name in NOT_IN_COMPOSE_ENV:
            assert name.upper() not in env, f"{name} is in x-app-env after all"
        else:
            assert name.upper() in env, f"{name.upper()} is missing from x-app-env"
    assert not {k.lower() for k in env} - set(Settings.model_fields), "unknown variables"


def test_compose_defaults_are_the_local_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable, value in compose_app_env().items():
        match = re.fullmatch(r"\$\{(\w+):-(.*)\}", str(value))
        if variable in COMPOSE_OWN_DEFAULTS or match is None:
            continue
        assert match.group(1) == variable
        field = variable.lower()
        # As a container reads it: from its environment (where "" means unset).
        with monkeypatch.context() as env:
            env.setenv(variable, match.group(2))
            from_compose = getattr(Settings(), field)
        default = Settings.model_fields[field].get_default(call_default_factory=True)
        assert from_compose == default, variable


# Compose refuses to start without a Redis password; the tests give it this one unless
# they say otherwise (a variable given as None is taken out of the environment).
TEST_REDIS_PASSWORD = "test-only-redis-password"


def compose(
    *args: str,
    env: dict[str, str | None] | None = None,
    file: Path = COMPOSE_FILE,
    env_file: Path | None = None,
) -> subprocess.CompletedProcess:
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("CI must validate the compose file: install docker-compose")
        pytest.skip("docker-compose is not installed (.ci/run installs it)")
    chosen = {**os.environ, "REDIS_PASSWORD": TEST_REDIS_PASSWORD, **(env or {})}
    environment = {name: value for name, value in chosen.items() if value is not None}
    # Instead of the .env beside the compose file, which a developer may have filled.
    options = ["--env-file", str(env_file)] if env_file else []
    return subprocess.run(
        [binary, *options, "-f", str(file), *args],
        capture_output=True, text=True, env=environment,
    )  # fmt: skip


def test_compose_file_is_valid() -> None:
    result = compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_start_without_a_redis_password(tmp_path: Path) -> None:
    """A default Redis password is one everybody knows: without REDIS_PASSWORD (unset or
    empty) compose stops before starting anything, and says how to make one."""
    no_env_file = tmp_path / ".env"
    no_env_file.write_text("")
    for missing in (None, ""):
        result = compose("config", "-q", env={"REDIS_PASSWORD": missing}, env_file=no_env_file)
        assert result.returncode != 0, f"compose started with REDIS_PASSWORD={missing!r}"
        assert "REDIS_PASSWORD" in result.stderr, result.stderr
        assert "secrets.token_urlsafe" in result.stderr, "the message says how to make one"
    # Every use of the password on compose's side requires it: none falls back to a default
    # (`$${...}` is the redis container's own shell reading its environment).
    uses = re.findall(r"(?<!\$)\$\{REDIS_PASSWORD(..)", COMPOSE_FILE.read_text())
    assert len(uses) >= 3 and set(uses) == {":?"}, uses


def test_a_shorter_visibility_timeout_reaches_every_container() -> None:
    """Lowering JOB_VISIBILITY_TIMEOUT below the default time limit, with a time limit
    to match, gives every container settings it accepts."""
    chosen = {"JOB_VISIBILITY_TIMEOUT": "120", "JOB_MAX_TIME_LIMIT": "60"}
    result = compose("config", env=chosen)
    assert result.returncode == 0, result.stderr
    for name, service in yaml.safe_load(result.stdout)["services"].items():
        if name == "redis" or "profiles" in service:  # not an app service
            continue
        # An empty value is unset, as Settings reads a container's environment.
        environment = {k.lower(): v for k, v in service["environment"].items() if v != ""}
        settings = Settings(**environment)  # raises where a container would fail
        assert (settings.job_visibility_timeout, settings.job_max_time_limit) == (120, 60)


def test_compose_redis_is_durable_private_and_password_protected() -> None:
    """What the docs' Guarantees and Security pages promise of compose's Redis."""
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    redis_service = services["redis"]
    command = redis_service["command"].split()
    assert command[command.index("--appendonly") :][:2] == ["--appendonly", "yes"]
    assert command[command.index("--appendfsync") :][:2] == ["--appendfsync", "everysec"]
    assert "--requirepass" in command
    assert "ports" not in redis_service  # only the compose network reaches it
    assert any(volume.endswith(":/data") for volume in redis_service["volumes"])
    # The password the user sets is the one Redis requires, the one its healthcheck reads
    # (from the redis container's environment) and the one every app service connects with.
    rendered = compose("config")
    assert rendered.returncode == 0, rendered.stderr
    password = TEST_REDIS_PASSWORD
    rendered_services = yaml.safe_load(rendered.stdout)["services"]
    rendered_redis = rendered_services["redis"]
    assert f"--requirepass {password}" in " ".join(str(rendered_redis["command"]).split())
    assert rendered_redis["environment"]["REDIS_PASSWORD"] == password
    assert '"$${REDIS_PASSWORD}"' in " ".join(redis_service["healthcheck"]["test"])
    for name, service in services.items():
        if name != "redis" and "profiles" not in service:
            # Every app service reaches Redis with the password, and comes back if it dies.
            url = rendered_services[name]["environment"]["REDIS_URL"]
            assert url == f"redis://:{password}@redis:6379/0", name
            assert service["restart"] == "unless-stopped", name
            assert "healthcheck" in service, name


def test_no_debug_mode_anywhere() -> None:
    """The API runs under gunicorn without reload or debug, Flask's debug is off, and
    neither compose nor the Dockerfile turns either on."""
    from api.__main__ import gunicorn_command
    from api.app import create_app

    argv = gunicorn_command()
    assert not {"--reload", "--debug", "--log-level=debug"} & set(argv)
    assert create_app(Settings(jobrunner_auth="off")).debug is False
    for text in (COMPOSE_FILE.read_text(), (ROOT / "Dockerfile").read_text()):
        assert "FLASK_DEBUG" not in text and "--reload" not in text


WORKER_COMPOSE_FILE = COMPOSE_FILE.with_name("docker-compose.worker.yml")


def test_the_worker_only_compose_file_runs_compose_workers_against_a_remote_redis() -> None:
    """docker-compose.worker.yml (a worker-only machine) starts the very worker commands of
    docker-compose.yml, reads only settings jobrunner knows, and refuses to start without
    the shared Redis's URL rather than looking for one on the machine itself."""
    without = compose("config", "-q", file=WORKER_COMPOSE_FILE, env={"REDIS_URL": ""})
    assert without.returncode != 0 and "REDIS_URL" in without.stderr
    remote = "redis://:secret@10.0.0.5:6379/0"
    rendered = compose("config", file=WORKER_COMPOSE_FILE, env={"REDIS_URL": remote})
    assert rendered.returncode == 0, rendered.stderr
    services = yaml.safe_load(rendered.stdout)["services"]
    main_services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    assert set(services) == {f"worker-{pool}" for pool in POOL_NAMES}
    for name, service in services.items():
        command = service["command"]
        command = " ".join(command) if isinstance(command, list) else command
        assert command == main_services[name]["command"], name
        environment = {k.lower(): v for k, v in service["environment"].items() if v != ""}
        assert set(environment) <= set(Settings.model_fields), name
        assert Settings(**environment).redis_url == remote


def test_the_tls_compose_file_runs_redis_as_users_acl_says_and_every_app_with_tls() -> None:
    """deploy/redis/docker-compose.tls.yml: Redis on TLS only, with the rules of
    deploy/redis/users.acl (the file tests/e2e/test_redis_tls_acl.py runs the stack under),
    and every app service pointed at it as that user, with the client certificate."""
    tls_file = ROOT / "deploy" / "redis" / "docker-compose.tls.yml"
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("CI must validate the compose file: install docker-compose")
        pytest.skip("docker-compose is not installed (.ci/run installs it)")
    env = {**os.environ, "REDIS_PASSWORD": TEST_REDIS_PASSWORD}
    rendered = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "-f", str(tls_file), "config"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    services = yaml.safe_load(rendered.stdout)["services"]
    rules = {
        line.split(" ", 2)[1]: line.split(" ", 2)[2].replace("PASSWORD", TEST_REDIS_PASSWORD)
        for line in (ROOT / "deploy" / "redis" / "users.acl").read_text().splitlines()
        if line.startswith("user ")
    }
    command = services["redis"]["command"]
    command = " ".join(command) if isinstance(command, list) else command
    assert "--port 0 --tls-port 6379 --tls-auth-clients yes" in command
    for name, user_rules in rules.items():
        assert f"--user {name} {user_rules}" in command, name
    for name, service in services.items():
        if name == "redis" or "profiles" in service:  # not an app service
            continue
        environment = service["environment"]
        assert environment["REDIS_URL"].startswith("rediss://jobrunner:"), name
        assert Settings(
            **{k.lower(): v for k, v in environment.items() if v != ""}
        ).redis_tls_key_file
