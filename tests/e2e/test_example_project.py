"""The example project (examples/textjobs/) and its tutorial (docs/workloads.md), run the
way a user runs them, so that neither drifts from the other or from jobrunner.

Markers in docs/workloads.md, each on the line before a fenced block:

- `<!-- example-test: NAME -->` before a ```bash or ```python block: a test here runs it
  as pasted; bash with `bash -euo pipefail` in the project folder, python by this test's
  interpreter from standard input, also in the project folder. Every NAME is run by
  exactly one test (test_every_marked_block_is_run_by_a_test).
- `<!-- example-excerpt: PATH -->`: the block is a verbatim part of PATH, so the code the
  page shows is the code that runs.

The stack is the page's own `make run` line, started in the background with two changes a
user does not need: the API on a free port with a run folder of its own (API_PORT,
JOBRUNNER_RUN_DIR; JOBRUNNER_URL and JOBRUNNER_API_KEY then point the CLI and the client
at it), and `make -o .venv/.installed-stamp run`, so that a test never reinstalls the
shared .venv (`make test` has just installed it).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from services.devstack.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "workloads.md"
EXAMPLE = ROOT / "examples" / "textjobs"
WORKLOADS = {"word_count", "compress", "slow_echo"}

BLOCK = re.compile(r"<!-- example-test: ([\w-]+) -->\s*```(bash|python)\n(.*?)```", re.S)
EXCERPT = re.compile(r"<!-- example-excerpt: ([\w./-]+) -->\s*```\w*\n(.*?)```", re.S)
# The blocks the tests below run, by name.
RUN_BY_TESTS = {"unit-tests", "make-run", "cli", "client", "compare", "compare-client"}

# A compare runs 20 jobs on each of several targets, one target at a time, on a shared
# machine; starting the stack is part of the first test that uses it.
pytestmark = pytest.mark.timeout(600)


def marked_blocks() -> dict[str, tuple[str, str]]:
    """NAME -> (language, code) of every block marked `example-test` on the page."""
    blocks: dict[str, tuple[str, str]] = {}
    for name, language, code in BLOCK.findall(PAGE.read_text()):
        assert name not in blocks, f"two blocks marked example-test: {name}"
        blocks[name] = (language, code)
    return blocks


def block(name: str, language: str) -> str:
    found_language, code = marked_blocks()[name]
    assert found_language == language, f"{name} is a {found_language} block"
    return code


def test_every_marked_block_is_run_by_a_test() -> None:
    """A block marked for testing that no test runs would be a promise nobody checks."""
    assert set(marked_blocks()) == RUN_BY_TESTS


def test_code_shown_on_the_page_is_the_example_code() -> None:
    excerpts = EXCERPT.findall(PAGE.read_text())
    assert excerpts, "the page shows the example's code"
    for path, code in excerpts:
        assert code in (ROOT / path).read_text(), f"docs/workloads.md's excerpt of {path}"


def user_env(**extra: str) -> dict[str, str]:
    """This environment less what would point a pasted block at another stack or
    catalog (a developer's REDIS_URL, keys, modules); the block sets its own."""
    leave_out = {"REDIS_URL", "JOBRUNNER_API_KEYS", "JOBRUNNER_WORKLOADS", "PYTHONPATH"}
    env = {k: v for k, v in os.environ.items() if k not in leave_out}
    # Wide enough that rich's tables keep each record's fields on one line.
    return {**env, "COLUMNS": "200", "PYTHONUNBUFFERED": "1", **extra}


def run_bash(code: str, env: dict[str, str], timeout: float) -> str:
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def run_python(code: str, env: dict[str, str], timeout: float) -> str:
    result = subprocess.run(
        [sys.executable, "-"],
        input=code, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


# -- the example on its own ----------------------------------------------------------------


def test_the_examples_unit_tests_pass_as_the_page_runs_them() -> None:
    out = run_bash(block("unit-tests", "bash"), user_env(), timeout=120)
    assert re.search(r"\b\d+ passed\b", out) and "failed" not in out, out


def catalog_names(env: dict[str, str]) -> dict[str, str]:
    """name -> ref of the catalog a jobrunner process loads in `env`."""
    code = (
        "from services.catalog.workloads import CATALOG\n"
        "for name, w in CATALOG.items(): print(name, w.ref)\n"
    )
    out = run_python(code, env, timeout=60)
    return dict(line.split() for line in out.splitlines())


def test_installed_the_entry_point_registers_the_workloads(tmp_path: Path) -> None:
    """pip installs the package (as the Dockerfile does, here into a folder of its own,
    not the shared .venv); its entry point alone, with no JOBRUNNER_WORKLOADS, puts the
    workloads in the catalog of a process that has the folder on its path."""
    target = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
         str(target), str(EXAMPLE)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    assert not catalog_names(user_env()).keys() & WORKLOADS  # not there by another way
    catalog = catalog_names(user_env(PYTHONPATH=str(target)))
    assert {name: catalog.get(name) for name in WORKLOADS} == {
        name: f"textjobs.jobs:{name}" for name in WORKLOADS
    }


# -- shipping it with docker compose -------------------------------------------------------

REDIS_PASSWORD = "test-only-redis-password"


def compose_config(*files: Path, tmp_path: Path) -> dict:
    """`docker-compose -f … config`, rendered and parsed (with a Redis password, and an
    empty .env instead of the one a developer may have filled)."""
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("CI must validate the compose files: install docker-compose")
        pytest.skip("docker-compose is not installed (.ci/run installs it)")
    env_file = tmp_path / ".env"
    env_file.write_text("")
    options = [arg for file in files for arg in ("-f", str(file))]
    result = subprocess.run(
        [binary, "--env-file", str(env_file), *options, "config"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "REDIS_PASSWORD": REDIS_PASSWORD},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # Services of a profile (`observability`: Prometheus, Grafana) start only when asked
    # for; the example leaves them as they are.
    return {
        name: service
        for name, service in yaml.safe_load(result.stdout)["services"].items()
        if "profiles" not in service
    }


def app_services() -> dict[str, dict]:
    """The services of the project's docker-compose.yml that run jobrunner's image: all
    of them must have the workloads."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return {name: s for name, s in services.items() if s.get("image", "").startswith("jobrunner")}


def test_the_project_image_holds_every_package_the_example_imports() -> None:
    """The example's image is the project's plus the example: `from jobrunner import
    workload` works there only if the project's Dockerfile copies every package its wheel
    ships (a package left out is silently missing from the wheel, not an error)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert "jobrunner" in packages
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\w+) \./\1\s*$", dockerfile, re.M))
    assert set(packages) <= copied, f"the Dockerfile does not COPY {set(packages) - copied}"


def test_compose_override_runs_every_app_service_on_the_example_image(tmp_path: Path) -> None:
    base = app_services()
    assert {"api", "worker-experiments"} < set(base)
    [base_image] = {service["image"] for service in base.values()}
    dockerfile = (EXAMPLE / "Dockerfile").read_text()
    # The example's image starts from the image compose builds from the project.
    assert f"ARG JOBRUNNER_IMAGE={base_image}\n" in dockerfile
    services = compose_config(
        ROOT / "docker-compose.yml", EXAMPLE / "docker-compose.override.yml", tmp_path=tmp_path
    )
    assert set(services) == {*base, "redis"}
    for name, service in base.items():
        rendered = services[name]
        assert rendered["image"] == "jobrunner-textjobs:latest", name
        assert Path(rendered["build"]["context"]) == EXAMPLE, name
        assert rendered["build"]["args"]["JOBRUNNER_IMAGE"] == base_image, name
        # Only the image changes: the same command, Redis and settings.
        command = rendered["command"]
        assert (" ".join(command) if isinstance(command, list) else command) == service["command"]
        assert rendered["environment"]["REDIS_URL"].startswith(f"redis://:{REDIS_PASSWORD}@")


def test_compose_mount_gives_every_app_service_the_folder(tmp_path: Path) -> None:
    base = app_services()
    services = compose_config(
        ROOT / "docker-compose.yml", EXAMPLE / "docker-compose.mount.yml", tmp_path=tmp_path
    )
    assert set(services) == {*base, "redis"}
    for name in base:
        rendered = services[name]
        assert rendered["image"] == base[name]["image"], name
        volumes = [
            v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in rendered["volumes"]
        ]
        assert any(v.startswith(f"{EXAMPLE}:/opt/textjobs") for v in volumes), (name, volumes)
        environment = rendered["environment"]
        assert environment["PYTHONPATH"] == "/opt/textjobs", name
        assert environment["JOBRUNNER_WORKLOADS"] == "textjobs.jobs", name
        assert environment["REDIS_URL"].startswith(f"redis://:{REDIS_PASSWORD}@"), name


# -- the page's commands against its own `make run` ----------------------------------------


@dataclass
class PageStack:
    process: subprocess.Popen[str]
    url: str
    run_dir: Path
    output: Path

    def printed(self) -> str:
        return self.output.read_text()

    def env(self) -> dict[str, str]:
        """What the CLI and the client of a pasted block need to find this stack."""
        key = (self.run_dir / "api-key").read_text().strip()
        return user_env(JOBRUNNER_URL=self.url, JOBRUNNER_API_KEY=key)

    def jobs(self, workload: str) -> list[dict]:
        answer = requests.get(
            f"{self.url}/jobs", params={"workload": workload},
            headers={"Authorization": f"Bearer {self.env()['JOBRUNNER_API_KEY']}"}, timeout=10,
        )  # fmt: skip
        assert answer.status_code == 200, answer.text
        return answer.json()["jobs"]


@pytest.fixture(scope="module")
def page_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PageStack]:
    line = block("make-run", "bash").strip()
    assert line.endswith(" make run"), line
    code = line.removesuffix("make run") + "make -o .venv/.installed-stamp run"
    workdir = tmp_path_factory.mktemp("page-stack")
    port = free_port()
    env = user_env(API_PORT=str(port), JOBRUNNER_RUN_DIR=str(workdir / "run"))
    output = workdir / "make-run.out"
    # A process group of its own, as a terminal's foreground job: the interrupt below
    # reaches make and the runner, as Ctrl-C does.
    process = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", code],
        cwd=ROOT, env=env, stdout=output.open("w"), stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    stack = PageStack(process, f"http://127.0.0.1:{port}", workdir / "run", output)
    try:
        deadline = time.monotonic() + 180
        while "jobrunner is up at" not in stack.printed():
            assert process.poll() is None, stack.printed()
            assert time.monotonic() < deadline, stack.printed()
            time.sleep(0.2)
        yield stack
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def test_cli_block_runs_each_workload_on_its_pool(page_stack: PageStack) -> None:
    out = run_bash(block("cli", "bash"), page_stack.env(), timeout=240)
    assert all(name in out for name in WORKLOADS), out
    assert out.count("succeeded") == 4, out
    assert '"the": 3' in out and '"message": "hello"' in out, out
    pools = {name: sorted(job["pool"] for job in page_stack.jobs(name)) for name in WORKLOADS}
    # Each where its @workload sends it, and where --pool says when it does.
    assert pools == {
        "word_count": ["prefork"],
        "compress": ["prefork", "threads"],
        "slow_echo": ["threads"],
    }


def test_bad_params_are_refused_as_the_page_says(page_stack: PageStack) -> None:
    """The page quotes a refused submission and its message in its text."""
    page = " ".join(PAGE.read_text().split())
    [(command, message, code)] = re.findall(
        r"\(`(jobrunner submit [^`]+)` says `([^`]+)`, exit (\d)\)", page
    )
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", *shlex.split(command.removeprefix("jobrunner "))],
        cwd=ROOT, env=page_stack.env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == int(code), result.stderr + result.stdout
    assert message in " ".join(result.stderr.split()), result.stderr


def test_client_block_prints_what_its_comments_say(page_stack: PageStack) -> None:
    out = run_python(block("client", "python"), page_stack.env(), timeout=240)
    assert out.splitlines() == [
        "{'words': 7, 'distinct': 5, 'top': {'the': 3, 'cat': 1, 'and': 1}}",
        "prefork",
        "422 ['params.level']",
        "['hello 0', 'hello 1', 'hello 2']",
    ]
    echoes = page_stack.jobs("slow_echo")
    assert len(echoes) >= 20 and {job["state"] for job in echoes} == {"succeeded"}


def test_compare_block_compares_the_pools(page_stack: PageStack) -> None:
    out = run_bash(block("compare", "bash"), page_stack.env(), timeout=420)
    assert "compress x20: fastest is" in out, out
    for target in ("threads", "prefork", "gevent", "threadpool", "processpool"):
        assert re.search(rf"^\W*{target}\s", out, re.M), (target, out)


def test_compare_client_block_prints_the_verdict_and_figures(page_stack: PageStack) -> None:
    out = run_python(block("compare-client", "python"), page_stack.env(), timeout=420)
    assert "word_count x20: fastest is" in out, out
    figures = [line.split() for line in out.splitlines() if line.endswith(" jobs/s")]
    assert sorted(line[0] for line in figures) == ["prefork", "sequential", "threads"], out
    assert all(float(line[1]) > 0 for line in figures), out
