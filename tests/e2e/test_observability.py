"""Observability end to end, on one real stack: GET /metrics (its scope, the jobs every
worker counted in Redis, queues, workers, the API's requests across its gunicorn
processes), a real Prometheus scraping it with the shipped configuration, rules and
dashboard queries, and a real Flower listing each job with its workload and id."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from services.core.api_keys import hash_key
from services.devstack.processes import ManagedProcess
from services.devstack.redis_server import free_port
from tests.stack import Stack, api_keys_setting

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "jobrunner.json"
CONCURRENCY = {"threads": 4, "prefork": 1, "gevent": 10}
METRICS_KEY = "test-metrics-key"
REFUSED_URL = "http://127.0.0.1:9/"  # nothing listens on the discard port
VISIBILITY_TIMEOUT = 4
# One stack for the module: under make test's xdist, its tests stay on one worker.
pytestmark = pytest.mark.xdist_group("observability")
# How Grafana fills the dashboard's variables, for a query sent to Prometheus directly.
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$pool": ".*"}


def needed(tool: str) -> str:
    """The path of `tool`; under CI=1 its absence fails (.ci/run installs it)."""
    found = shutil.which(tool)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the observability checks: install {tool} (apt: prometheus)")
        pytest.skip(f"{tool} is not installed (Debian: apt-get install prometheus)")
    return found


@pytest.fixture(scope="module")
def obs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack whose workers send task events (for Flower), with a key of the metrics
    scope beside the test keys, and a visibility timeout of a few seconds (a lost
    worker's job comes back soon)."""
    keys = f"{api_keys_setting()},prometheus:metrics:{hash_key(METRICS_KEY)}"
    with Stack(
        tmp_path_factory.mktemp("observability"),
        {
            "JOBRUNNER_API_KEYS": keys, "JOB_TASK_EVENTS": "on",
            "JOB_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
            "JOB_MAX_TIME_LIMIT": str(VISIBILITY_TIMEOUT - 1),
        },
    ).running([*CONCURRENCY.items()]) as stack:  # fmt: skip
        yield stack


@pytest.fixture(scope="module")
def flower(obs: Stack) -> str:
    """A real Flower on the stack's broker, started before any job of this module's
    tests runs (it lists the tasks whose events it saw); its URL."""
    port = free_port()
    argv = [
        sys.executable, "-m", "celery", "-A", "worker.app", "flower",
        "--address=127.0.0.1", f"--port={port}",
        # Flower would otherwise turn every worker's events on itself (Celery's
        # enable_events, every few seconds): the workers' own setting is under test.
        "--enable_events=False",
    ]  # fmt: skip
    # Flower 2 serves its API only with authentication, or when told it may without.
    env = {**obs.env, "FLOWER_UNAUTHENTICATED_API": "true"}
    process = obs.start(ManagedProcess("flower", argv, env, obs.workdir / "flower.log"))
    url = f"http://127.0.0.1:{port}"
    # Ready once it sees events: a task event sent before Flower bound its queue is lost
    # to it, so a job it saw received, from a probe sent after, says it is listening.

    def sees_events() -> bool:
        probe = obs.submit("noop", {}, pool="threads")["id"]
        time.sleep(0.5)
        task = requests.get(f"{url}/api/task/info/{probe}", timeout=2)
        return task.ok and task.json().get("received") is not None

    obs.wait_until(sees_events, 60, "flower saw no task event", [process], every=0.5)
    return url


def scrape(stack: Stack, key: str = METRICS_KEY) -> requests.Response:
    return requests.get(
        f"{stack.url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def samples(stack: Stack) -> dict[tuple[str, frozenset], float]:
    """Every sample of a scrape, by name and labels; the text must parse as Prometheus's."""
    response = scrape(stack)
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(scraped: dict, name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def eventually(check: Callable[[], Any], timeout: float = 30.0, every: float = 0.3) -> Any:
    """check()'s first truthy answer within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        answer = check()
        if answer or time.monotonic() > deadline:
            return answer
        time.sleep(every)


# -- GET /metrics ---------------------------------------------------------------------


def test_metrics_need_the_metrics_scope(obs: Stack) -> None:
    assert requests.get(f"{obs.url}/metrics", timeout=10).status_code == 401
    # An admin key can do anything but this: Prometheus's key is of a scope of its own.
    refused = scrape(obs, key="test-admin-key")
    assert refused.status_code == 403
    assert refused.headers["Content-Type"] == "application/problem+json"
    answered = scrape(obs)
    assert answered.status_code == 200
    assert answered.headers["Content-Type"].startswith("text/plain")
    # And a metrics key reads no job.
    listing = requests.get(
        f"{obs.url}/jobs", headers={"Authorization": f"Bearer {METRICS_KEY}"}, timeout=10
    )
    assert listing.status_code == 403


def test_every_outcome_is_counted_by_pool_workload_and_state(obs: Stack) -> None:
    before = samples(obs)
    done = [
        obs.submit("noop", {"value": i}, pool=pool)["id"] for pool in CONCURRENCY for i in (1, 2)
    ]
    # A retryable failure: retried once, then failed.
    failing = obs.submit(
        "http_get", {"url": REFUSED_URL, "timeout": 2}, pool="threads", max_retries=1,
        backoff=0.1,
    )["id"]  # fmt: skip
    # A job cancelled while it waits behind a long one on prefork's only slot.
    blocker = obs.submit("sleep", {"seconds": 3}, pool="prefork")["id"]
    waiting = obs.submit("noop", {}, pool="prefork")["id"]
    cancel = obs.http.delete(f"{obs.url}/jobs/{waiting}", timeout=10)
    assert cancel.status_code == 200 and cancel.json()["state"] == "cancelled", cancel.text
    obs.wait_for([*done, failing, blocker], timeout=90)
    after = samples(obs)

    for pool in CONCURRENCY:
        labels = {"pool": pool, "workload": "noop"}
        assert delta(before, after, "jobrunner_jobs_total", state="succeeded", **labels) == 2
        # Each run timed once, each first claim's wait once.
        assert delta(before, after, "jobrunner_job_run_seconds_count", **labels) == 2
        assert delta(before, after, "jobrunner_job_queue_wait_seconds_count", **labels) == 2
        assert delta(before, after, "jobrunner_job_run_seconds_bucket", le="+Inf", **labels) == 2
    http_get = {"pool": "threads", "workload": "http_get"}
    assert delta(before, after, "jobrunner_jobs_total", state="failed", **http_get) == 1
    assert delta(before, after, "jobrunner_job_retries_total", **http_get) == 1
    # Its wait counted once (its first claim), its run time once (the run that failed it).
    assert delta(before, after, "jobrunner_job_queue_wait_seconds_count", **http_get) == 1
    assert delta(before, after, "jobrunner_job_run_seconds_count", **http_get) == 1
    prefork = {"pool": "prefork", "workload": "noop"}
    assert delta(before, after, "jobrunner_jobs_total", state="cancelled", **prefork) == 1
    sleep = {"pool": "prefork", "workload": "sleep"}
    assert delta(before, after, "jobrunner_jobs_total", state="succeeded", **sleep) == 1
    # The sleep's three seconds are in its run time, and in no faster bucket.
    assert value(after, "jobrunner_job_run_seconds_sum", **sleep) >= 3
    assert value(after, "jobrunner_job_run_seconds_bucket", le="2.5", **sleep) == 0
    # Nothing was redelivered or fenced: reported as 0, not missing (rate() needs it).
    assert ("jobrunner_job_redeliveries_total", frozenset(http_get.items())) in after
    assert value(after, "jobrunner_job_redeliveries_total", **http_get) == 0
    assert value(after, "jobrunner_job_fenced_writes_total", **http_get) == 0


def test_queue_depth_counts_taken_messages_and_busy_slots(obs: Stack) -> None:
    """Jobs running on a full pool are taken, not queued: the depth counts both, and the
    pool's busy slots are its running jobs."""
    slots = CONCURRENCY["threads"]
    ids = [obs.submit("sleep", {"seconds": 2}, pool="threads")["id"] for _ in range(slots + 2)]

    def busy() -> dict | None:
        scraped = samples(obs)
        taken = value(scraped, "jobrunner_queue_messages", pool="threads", status="taken")
        running = value(scraped, "jobrunner_worker_busy_slots", pool="threads")
        return scraped if taken >= 1 and running >= 1 else None

    scraped = eventually(busy)
    assert scraped, "no job of the threads pool was seen taken and running"
    queued = value(scraped, "jobrunner_queue_messages", pool="threads", status="queued")
    taken = value(scraped, "jobrunner_queue_messages", pool="threads", status="taken")
    assert value(scraped, "jobrunner_queue_depth", pool="threads") == queued + taken > queued
    assert 1 <= value(scraped, "jobrunner_worker_busy_slots", pool="threads") <= slots
    obs.wait_for(ids, timeout=60)
    assert eventually(lambda: value(samples(obs), "jobrunner_queue_depth", pool="threads") == 0)


def test_workers_and_their_slots_per_pool(obs: Stack) -> None:
    scraped = samples(obs)
    assert value(scraped, "jobrunner_redis_up") == 1
    for pool, concurrency in CONCURRENCY.items():
        assert value(scraped, "jobrunner_workers", pool=pool) == 1
        assert value(scraped, "jobrunner_worker_slots", pool=pool) == concurrency


def test_requests_are_counted_across_every_api_process(obs: Stack) -> None:
    """Whichever gunicorn process answers a request or the scrape, the count is the sum of
    all of them (prometheus_client's multiprocess mode)."""
    ok = {"route": "/healthz", "method": "GET", "status": "200"}
    refused = {"route": "/jobs", "method": "GET", "status": "401"}
    before = samples(obs)
    for _ in range(30):  # a connection each, so both API processes answer some
        assert requests.get(f"{obs.url}/healthz", timeout=10).status_code == 200
    assert requests.get(f"{obs.url}/jobs", timeout=10).status_code == 401
    for _ in range(3):  # every scrape, whichever process answers it, says the same
        after = samples(obs)
        assert delta(before, after, "jobrunner_http_requests_total", **ok) == 30
        assert delta(before, after, "jobrunner_http_requests_total", **refused) == 1
        timed = delta(
            before, after, "jobrunner_http_request_duration_seconds_count",
            route="/healthz", method="GET",
        )  # fmt: skip
        assert timed == 30


# -- Prometheus with the shipped configuration, rules and dashboard -----------------------


def dashboard_queries() -> list[str]:
    """Every PromQL query of the Grafana dashboard: its panels' and its variables'."""
    board = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def alert_queries() -> list[str]:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def as_sent(query: str) -> str:
    """A dashboard query as Grafana sends it, variables filled in; label_values() is
    Grafana's, asked of Prometheus as a series selector."""
    for variable, filled in GRAFANA_VARIABLES.items():
        query = query.replace(variable, filled)
    match = re.fullmatch(r"label_values\((\w+), *\w+\)", query)
    return match.group(1) if match else query


def test_the_dashboard_and_alerts_name_only_metrics_metrics_exports(obs: Stack) -> None:
    # The job series appear with the first job counted: one, whatever ran before.
    obs.wait_for([obs.submit("noop", {}, pool="threads")["id"]], timeout=60)
    exported = {name for name, _ in samples(obs)}
    named = {
        name
        for query in dashboard_queries() + alert_queries()
        for name in re.findall(r"\bjobrunner_[a-z_]+", query)
    }
    assert named, "no jobrunner metric in the dashboard or the alerts"
    assert named <= exported, f"named but not exported: {sorted(named - exported)}"


@pytest.fixture(scope="module")
def prometheus(obs: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real Prometheus with deploy/prometheus/prometheus.local.yml (the one to run beside
    `make run`), its target, key file and intervals changed for this stack; its URL."""
    binary = needed("prometheus")
    folder = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.local.yml").read_text())
    # A few seconds between scrapes: rate() needs two samples, and a scrape waits ~1 s
    # for the workers' inspection.
    config["global"] = {"scrape_interval": "3s", "evaluation_interval": "3s"}
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job["scrape_timeout"] = "3s"
    job["static_configs"] = [{"targets": [obs.url.removeprefix("http://")]}]
    # Written as make run writes .run/api-key: the key and a newline.
    (folder / "api-key").write_text(METRICS_KEY + "\n")
    job["authorization"]["credentials_file"] = str(folder / "api-key")
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = obs.start_program(
        "prometheus",
        [
            binary, f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
        ],
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    obs.wait_until(
        lambda: requests.get(f"{url}/-/ready", timeout=2).ok, 60, "prometheus not ready",
        [process],
    )  # fmt: skip
    return url


def query(prometheus: str, promql: str) -> list[dict]:
    response = requests.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10)
    body = response.json()
    assert body["status"] == "success", f"{promql}: {body}"
    return body["data"]["result"]


def test_prometheus_scrapes_the_stack_and_every_query_and_alert_works(
    obs: Stack, prometheus: str
) -> None:
    """The shipped configuration scrapes every process's metrics through the one target;
    every dashboard query returns data, and every alert rule evaluates without error."""
    ids = [obs.submit("noop", {}, pool=pool)["id"] for pool in CONCURRENCY for _ in range(3)]
    obs.wait_for(ids)
    up = eventually(lambda: query(prometheus, 'up{job="jobrunner"} == 1'), timeout=60)
    assert up, requests.get(f"{prometheus}/api/v1/targets", timeout=10).text
    # Every pool's workers, prefork's child processes included, reach Prometheus.
    for pool in CONCURRENCY:
        assert eventually(
            lambda pool=pool: query(prometheus, f'jobrunner_jobs_total{{pool="{pool}"}} > 0')
        ), pool
    # Long enough for rate() over the dashboard's window to have two samples of the jobs.
    for promql in dashboard_queries():
        sent = as_sent(promql)
        assert eventually(lambda sent=sent: query(prometheus, sent), timeout=30), promql

    def rules_evaluated() -> list[dict] | None:
        groups = requests.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return (
            rules
            if rules and all(rule.get("lastEvaluation", "0001")[:4] != "0001" for rule in rules)
            else None
        )

    rules = eventually(rules_evaluated, timeout=30)
    assert rules and {rule["name"] for rule in rules} >= {
        "JobrunnerPoolHasNoWorkers", "JobrunnerQueueGrowing", "JobrunnerHighFailureRatio",
        "JobrunnerRedeliveries",
    }  # fmt: skip
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    # Nothing is wrong with this stack: no alert fires.
    alerts = requests.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    assert alerts == []


# -- Flower ---------------------------------------------------------------------------


def test_flower_lists_each_job_with_its_workload_and_id(obs: Stack, flower: str) -> None:
    """With JOB_TASK_EVENTS=on Flower's task view has every job: its id as the task's
    argument, its workload among the keyword arguments shown."""
    jobs = {obs.submit(workload, params, pool=pool)["id"]: workload for workload, params, pool in (
        ("noop", {"value": 1}, "threads"), ("sleep", {"seconds": 0.01}, "gevent"),
        ("cpu_hash", {"rounds": 10}, "prefork"),
    )}  # fmt: skip
    obs.wait_for(list(jobs))

    def listed() -> dict[str, dict] | None:
        tasks = requests.get(f"{flower}/api/tasks", timeout=10).json()
        found = {}
        for task in tasks.values():
            for job_id in jobs:
                if job_id in (task.get("args") or "") and task.get("state") == "SUCCESS":
                    found[job_id] = task
        return found if len(found) == len(jobs) else None

    found = eventually(listed, timeout=30)
    assert found, requests.get(f"{flower}/api/tasks", timeout=10).text[:2000]
    for job_id, task in found.items():
        assert task["name"] == "jobrunner.run_job"
        assert f"'workload': '{jobs[job_id]}'" in task["kwargs"], task


# -- last: it kills a worker ---------------------------------------------------------------


def test_a_run_from_a_redelivered_message_is_counted(obs: Stack) -> None:
    """A worker killed mid-job: its message comes back after the visibility timeout, and
    the run it starts (attempt 2) counts as a redelivery; the job's wait was counted at
    its first claim only, its outcome once."""
    labels = {"pool": "threads", "workload": "sleep"}
    before = samples(obs)
    record = obs.submit("sleep", {"seconds": 2}, pool="threads")
    (running,) = obs.wait_for([record["id"]], states={"running"})
    victim = next(w for w in obs.workers if w.node == running["worker_node"])
    assert victim.process is not None
    os.kill(victim.pid, signal.SIGKILL)
    victim.process.wait(timeout=10)
    obs.stop_worker(victim)
    obs.start_worker("threads", CONCURRENCY["threads"])
    (done,) = obs.wait_for([record["id"]], timeout=12 * VISIBILITY_TIMEOUT)
    assert (done["state"], done["attempts"]) == ("succeeded", 2), done
    after = samples(obs)
    assert delta(before, after, "jobrunner_job_redeliveries_total", **labels) == 1
    assert delta(before, after, "jobrunner_jobs_total", state="succeeded", **labels) == 1
    assert delta(before, after, "jobrunner_job_queue_wait_seconds_count", **labels) == 1
