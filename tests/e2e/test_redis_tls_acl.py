"""Redis over TLS with client certificates, as an ACL user with only what jobrunner uses:
every pool, the lab and GET /pools work through it; a client without a certificate, a
plain connection and a dangerous command are refused.

The certificates come from deploy/redis/make-certs.sh (a CA, Redis's certificate for
127.0.0.1, a client certificate) and the user's rules from deploy/redis/users.acl: the
files users take are the ones tested.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.devstack.redis_server import RedisServer, TlsFiles
from tests.stack import Stack

ROOT = Path(__file__).resolve().parents[2]
ACL_FILE = ROOT / "deploy" / "redis" / "users.acl"
CERT_SCRIPT = ROOT / "deploy" / "redis" / "make-certs.sh"

# .ci/run installs openssl: there, a missing one fails the test instead.
pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None and not os.environ.get("CI"), reason="needs openssl"
)


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, and certificates it signed for Redis (valid for 127.0.0.1) and a client, made
    by the script the docs give users."""
    subprocess.run(["bash", str(CERT_SCRIPT), str(folder), "127.0.0.1"], check=True,
                   capture_output=True, env={**os.environ, "CERT_DAYS": "2"})  # fmt: skip
    names = ("ca.crt", "redis.crt", "redis.key", "client.crt", "client.key")
    return {name: folder / name for name in names}


def acl_users(password: str) -> dict[str, str]:
    """deploy/redis/users.acl's users as `name: rules`, with PASSWORD filled in."""
    users = {}
    for line in ACL_FILE.read_text().splitlines():
        if line.startswith("user "):
            _, name, rules = line.split(" ", 2)
            users[name] = rules.replace(">PASSWORD", f">{password}")
    return users


class TlsRedis:
    def __init__(self, folder: Path) -> None:
        self.files = make_certificates(folder / "certs")
        self.password = secrets.token_urlsafe(16)
        self.client_tls = {
            "ssl_ca_certs": str(self.files["ca.crt"]),
            "ssl_certfile": str(self.files["client.crt"]),
            "ssl_keyfile": str(self.files["client.key"]),
        }
        self.server = RedisServer(
            folder / "redis",
            tls=TlsFiles(self.files["ca.crt"], self.files["redis.crt"], self.files["redis.key"]),
            users=acl_users(self.password),
            username="jobrunner",
            password=self.password,
            client_tls=self.client_tls,
        )

    def client(self, **options: object) -> redis.Redis:
        return redis.Redis.from_url(
            self.server.url, **{**self.client_tls, "socket_timeout": 5, **options}
        )


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    tls = TlsRedis(tmp_path_factory.mktemp("tls"))
    tls.server.start()
    try:
        yield tls
    finally:
        tls.server.stop()


@pytest.fixture(scope="module")
def tls_stack(tls_redis: TlsRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    files = tls_redis.files
    stack = Stack(
        tmp_path_factory.mktemp("tls-stack"),
        env_overrides={
            "REDIS_TLS_CA_FILE": str(files["ca.crt"]),
            "REDIS_TLS_CERT_FILE": str(files["client.crt"]),
            "REDIS_TLS_KEY_FILE": str(files["client.key"]),
        },
    )
    try:
        stack.use_redis(tls_redis.server.url)
        stack.start_api()
        for pool in ("threads", "prefork", "gevent", "experiments"):
            stack.start_worker(pool, 2 if pool != "experiments" else None)
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


def test_the_url_is_tls_and_names_the_acl_user(tls_redis: TlsRedis) -> None:
    assert tls_redis.server.url.startswith("rediss://jobrunner:")
    assert tls_redis.client().acl_whoami() == "jobrunner"


def test_every_pool_runs_jobs_through_tls_as_the_acl_user(tls_stack: Stack) -> None:
    jobs = [
        tls_stack.submit("noop", {"value": pool}, pool=pool)
        for pool in ("threads", "prefork", "gevent")
    ]
    for job in jobs:
        [record] = tls_stack.wait_for([job["id"]], timeout=60)
        assert record["state"] == "succeeded", record
        assert record["result"] == record["pool"]


def test_pools_and_the_lab_work_through_tls_as_the_acl_user(tls_stack: Stack) -> None:
    """Remote control (broadcast on a channel, replies on reply queues) and the lab's
    experiment worker need more than the job path: both are inside the user's rules."""
    answer = tls_stack.http.get(f"{tls_stack.url}/pools", timeout=30).json()
    pools = {pool["name"]: pool for pool in answer["pools"]}
    assert all(pools[name]["workers"] for name in ("threads", "prefork", "gevent")), pools
    answer = tls_stack.http.post(
        f"{tls_stack.url}/experiments",
        json={"workload": "sleep", "params": {"seconds": 0.01}, "count": 4,
              "pools": ["threads"]},
        timeout=30,
    )  # fmt: skip
    assert answer.status_code == 202, answer.text
    url = f"{tls_stack.url}/experiments/{answer.json()['id']}"
    deadline = time.monotonic() + 120
    while (experiment := tls_stack.http.get(url, timeout=30).json())["state"] not in (
        "succeeded", "failed",
    ):  # fmt: skip
        assert time.monotonic() < deadline, experiment
        time.sleep(0.2)
    assert experiment["state"] == "succeeded", experiment["error"]


def test_what_is_outside_the_rules_and_the_certificates_is_refused(tls_redis: TlsRedis) -> None:
    with pytest.raises(redis.exceptions.NoPermissionError):
        tls_redis.client().flushall()
    with pytest.raises(redis.exceptions.NoPermissionError):
        tls_redis.client().config_get("*")
    with pytest.raises(redis.exceptions.NoPermissionError):  # a key outside the patterns
        tls_redis.client().set("someone-else:key", "1")
    # No client certificate: the TLS handshake is refused.
    no_cert = {"ssl_certfile": None, "ssl_keyfile": None}
    with pytest.raises(redis.exceptions.ConnectionError):
        tls_redis.client(**no_cert).ping()
    # Plain TCP on the TLS port: no answer a client could use.
    plain = tls_redis.server.url.replace("rediss://", "redis://")
    with pytest.raises(redis.exceptions.ConnectionError):
        redis.Redis.from_url(plain, socket_timeout=2).ping()
    # The default user is off: no password alone opens it.
    anonymous = tls_redis.server.url.replace(f"jobrunner:{tls_redis.password}@", "")
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(anonymous, **tls_redis.client_tls).ping()


def test_the_rest_of_the_api_works_as_the_acl_user(tls_stack: Stack) -> None:
    """Batch, idempotency, listing, cancel and the scaling figures touch keys the job
    path does not."""
    http, url = tls_stack.http, tls_stack.url
    batch = http.post(f"{url}/jobs/batch", timeout=30,
                      json={"jobs": [{"workload": "noop", "pool": "threads"}] * 3})  # fmt: skip
    assert batch.status_code == 202, batch.text
    key = {"Idempotency-Key": secrets.token_hex(8)}
    first = http.post(f"{url}/jobs", json={"workload": "noop"}, headers=key, timeout=30)
    again = http.post(f"{url}/jobs", json={"workload": "noop"}, headers=key, timeout=30)
    assert first.json()["id"] == again.json()["id"]
    listing = http.get(f"{url}/jobs", params={"pool": "threads", "limit": 2}, timeout=30)
    assert listing.status_code == 200 and listing.json()["jobs"], listing.text
    assert http.get(f"{url}/scaling", timeout=30).status_code == 200
    slow = tls_stack.submit("sleep", {"seconds": 30}, pool="prefork")
    cancel = http.delete(f"{url}/jobs/{slow['id']}", timeout=30)
    assert cancel.status_code in (200, 202), cancel.text


def test_no_process_was_refused_a_command(tls_stack: Stack) -> None:
    """Whatever the user's rules lack shows as NOPERM in some process's log."""
    refused = [
        f"{log.name}: {line}"
        for log in tls_stack.workdir.glob("*.log")
        for line in log.read_text(errors="replace").splitlines()
        if "no permissions" in line or "NoPermissionError" in line
    ]
    assert refused == []
