"""Every setting jobrunner reads, in one typed object, read once from the environment.

Each variable has a default that works on a laptop, so `make run` needs no configuration.
docs/configuration.md is generated from this class (services/core/config_page.py): a
field's description is its documentation.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError


class Settings(BaseSettings):
    # An empty variable means unset (compose passes `${VAR:-}` through as "").
    model_config = SettingsConfigDict(
        env_prefix="", case_sensitive=False, extra="ignore", env_ignore_empty=True
    )

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Broker and job store. Unset, `make run` starts a Redis of its own.",
    )
    redis_socket_timeout: float = Field(
        5.0,
        gt=0,
        description="Seconds any Redis reply may take (broker, job store, API) before the "
        "connection is given up and opened again: how soon a cut network is noticed. Above "
        "the broker's 1 s BRPOP wait plus the round trip.",
    )
    redis_connect_timeout: float = Field(
        2.0, gt=0, description="Seconds a connection to Redis may take to open."
    )
    redis_health_check_interval: int = Field(
        10,
        ge=0,
        description="A connection idle this many seconds is checked with a PING before "
        "use, so a connection the network dropped silently fails fast (0: never).",
    )
    redis_tls_ca_file: Path | None = Field(
        None,
        description="With a rediss:// REDIS_URL: the CA that signed Redis's certificate "
        "(unset: the system's CAs). The certificate's name is checked against the URL's host.",
    )
    redis_tls_cert_file: Path | None = Field(
        None,
        description="With rediss://: this client's certificate, for a Redis started with "
        "tls-auth-clients yes (with REDIS_TLS_KEY_FILE).",
    )
    redis_tls_key_file: Path | None = Field(
        None, description="With rediss://: the private key of REDIS_TLS_CERT_FILE."
    )
    redis_sentinel_master: str = Field(
        "mymaster",
        min_length=1,
        description="With a Sentinel REDIS_URL (`sentinel://host:26379;sentinel://host2:26379`, "
        "as Celery spells it): the name of the master the sentinels watch.",
    )
    job_accept_replicas: int = Field(
        0,
        ge=0,
        description="Replicas every accepted job must reach before the API answers 202 "
        "(Redis WAIT, at most 1 s; fewer in time: a 503, the job possibly kept). 0: the "
        "primary's word alone, which a failover can lose (docs/high-availability.md).",
    )
    job_result_ttl: int = Field(
        86_400, ge=60, description="Seconds a job record (and its result) is kept."
    )
    job_max_body_bytes: int = Field(
        65_536, ge=1_024, description="Largest accepted request body; a larger one gets a 413."
    )
    job_max_batch_body_bytes: int = Field(
        1_048_576, ge=1_024, description="Largest body of POST /jobs/batch."
    )
    job_http_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1", "localhost"],
        description="Hosts the http_get workload may reach, comma separated.",
    )
    job_visibility_timeout: int = Field(
        3_600,
        ge=2,
        description="Seconds before a job taken by a worker that vanished is delivered again.",
    )
    jobrunner_auth: Literal["on", "off"] = Field(
        "on", description="'off' lets anyone call every endpoint (logged as a warning)."
    )
    jobrunner_api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="API keys as NAME:SCOPES:SHA256HEX, comma separated; SCOPES joined by "
        "'+'. Empty: `make run` makes one and keeps it in .run/api-key; elsewhere every "
        "protected call is a 401.",
    )
    api_rate_limit: int = Field(
        1_000, ge=0, description="Requests per second per API key; 0 turns the limit off."
    )
    job_max_time_limit: int = Field(
        300,
        ge=1,
        description="Largest time_limit a job may ask for, in seconds; must stay below "
        "JOB_VISIBILITY_TIMEOUT, or a job still running would be delivered twice.",
    )
    job_shutdown_grace: float = Field(
        30.0, ge=0, description="Seconds a stopping worker lets running jobs finish."
    )
    api_host: str = Field(
        "127.0.0.1", description="Address the API binds to (compose sets 0.0.0.0)."
    )
    api_port: int = Field(8000, ge=1, le=65_535, description="Port the API binds to.")
    api_workers: int = Field(2, ge=1, description="gunicorn worker processes of the API.")
    worker_concurrency_threads: int | None = Field(
        None, ge=1, description="Threads of each threads-pool worker (unset: 8)."
    )
    worker_concurrency_prefork: int | None = Field(
        None, ge=1, description="Processes of each prefork worker (unset: the host's cores)."
    )
    worker_concurrency_gevent: int | None = Field(
        None, ge=1, description="Greenlets of each gevent worker (unset: 100)."
    )
    worker_prefork_pipeline: Literal["auto", "on", "off"] = Field(
        "auto",
        description="How a prefork worker hides the round trips to Redis of each job: it "
        "claims jobs as it takes their messages, holds a few more messages than processes "
        "while jobs are short, and writes outcomes behind the runs (docs/cluster.md). "
        "auto: once the worker measures Redis 1 ms or more away; on: always; off: never.",
    )
    worker_memory_limit_prefork: int | None = Field(
        None,
        ge=64,
        description="MiB of data (heap and buffers) each prefork pool process may hold: a "
        "job allocating past it fails with error.type memory_limit, and the pool goes on "
        "(unset: no limit). Threads and gevent share one process: no per-job limit there.",
    )
    worker_max_memory_per_child_prefork: int | None = Field(
        None,
        ge=16,
        description="MiB of resident memory after which a prefork pool process is "
        "replaced, once its job ends (Celery's --max-memory-per-child; unset: never).",
    )
    worker_max_tasks_per_child_prefork: int | None = Field(
        None,
        ge=1,
        description="Jobs after which a prefork pool process is replaced (Celery's "
        "--max-tasks-per-child; unset: never).",
    )
    job_task_events: Literal["on", "off"] = Field(
        "off",
        description="on: workers send Celery task events, so Flower lists each job (task "
        "name and arguments name the workload and the job id); costs some throughput.",
    )
    job_reconciler: Literal["on", "off"] = Field(
        "on",
        description="off: no worker re-sends jobs whose lease ran out. Only for tests that "
        "prove one recovery mechanism alone; in production leave it on.",
    )
    worker_loglevel: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "FATAL"] = Field(
        "INFO",
        description="Log level of `python -m worker`. Celery's two lines for every job "
        "(received, succeeded) only at DEBUG: the job record holds what they say, and at "
        "INFO they cost a short job a quarter of its throughput.",
    )
    jobrunner_workloads: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Python modules whose @workload functions join the catalog, comma "
        "separated (e.g. mypkg.jobs). The API and every worker must name the same ones.",
    )
    jobrunner_run_dir: Path | None = Field(
        None,
        description="Where `make run` keeps logs, Redis's data and the local API key "
        "(unset: .run in the project folder; the CLI looks in ./.run).",
    )
    # The CLI's own two: where the API is and the key it sends. A client setting, but read
    # here like every other variable.
    jobrunner_url: str = Field(
        "http://127.0.0.1:8000",
        description="CLI only: the API the `jobrunner` CLI talks to (--api overrides it).",
    )
    jobrunner_api_key: SecretStr | None = Field(
        None, description="CLI only: the key the `jobrunner` CLI sends (else .run/api-key)."
    )

    @field_validator("job_http_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [host.strip().lower() for host in value.split(",") if host.strip()]
        return value

    @field_validator("jobrunner_api_keys", "jobrunner_workloads", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("worker_loglevel", mode="before")
    @classmethod
    def _upper_loglevel(cls, value: object) -> object:
        # Celery takes `info` as well as `INFO`.
        return value.upper() if isinstance(value, str) else value

    @field_validator("redis_url")
    @classmethod
    def _sentinels_named_whole(cls, value: str) -> str:
        # A sentinel URL is otherwise first read when a client is built, deep in the
        # API's or a worker's start: a traceback instead of this one line.
        from services.core.redis_clients import is_sentinel_url, sentinel_target  # reads us

        if is_sentinel_url(value):
            try:
                sentinel_target(value)
            except ValueError as error:  # names the bad part, never the password
                raise ValueError(str(error).removeprefix("REDIS_URL: ")) from None
        return value

    @model_validator(mode="after")
    def _time_limits_fit_visibility(self) -> Settings:
        # A job still running when its message becomes visible again would run twice.
        if self.job_max_time_limit >= self.job_visibility_timeout:
            raise ValueError(
                f"JOB_MAX_TIME_LIMIT ({self.job_max_time_limit}) must be below "
                f"JOB_VISIBILITY_TIMEOUT ({self.job_visibility_timeout}): set "
                f"JOB_MAX_TIME_LIMIT={self.job_visibility_timeout - 1} or less, or raise "
                f"JOB_VISIBILITY_TIMEOUT above {self.job_max_time_limit}"
            )
        return self

    def worker_concurrency(self, pool: str) -> int | None:
        """The configured concurrency of `pool`'s workers (WORKER_CONCURRENCY_<POOL>), or
        None for the pool's own default (services/catalog/pools.py)."""
        value = getattr(self, f"worker_concurrency_{pool}", None)
        return value if isinstance(value, int) else None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()


# Values never repeated back in an error: they may hold a password or a key.
SECRET_FIELDS = frozenset({"redis_url", "jobrunner_api_keys", "jobrunner_api_key"})


def setting_problems(error: ValidationError) -> list[str]:
    """One line per problem of `error`, naming the variable to change as a user sets it
    (JOB_VISIBILITY_TIMEOUT, not job_visibility_timeout), with the value given unless it
    may be a secret."""
    lines = []
    for problem in error.errors(include_url=False):
        if problem["type"] == "value_error":
            # Raised by a validator of ours: its message already names the variables.
            message = str(problem.get("ctx", {}).get("error", problem["msg"]))
        else:
            message = problem["msg"][:1].lower() + problem["msg"][1:]
        if not problem["loc"]:
            lines.append(message)
            continue
        field = str(problem["loc"][0])
        variable = field.upper()
        if field in SECRET_FIELDS or not isinstance(problem.get("input"), str | int | float):
            lines.append(f"{variable}: {message}")
        else:
            shown = " ".join(str(problem["input"]).split())[:60]
            lines.append(f"{variable}={shown}: {message}")
    return lines


def load_settings() -> Settings:
    """get_settings() for a program a user starts (make run, `python -m api`, `python -m
    worker`): a bad variable ends it with one line per problem, naming the variable, and
    exit status 1, rather than with pydantic's report."""
    try:
        return get_settings()
    except ValidationError as error:
        problems = setting_problems(error)
    except SettingsError as error:  # a value pydantic-settings could not even parse
        problems = [str(error)]
    raise SystemExit("\n".join(f"invalid setting: {line}" for line in problems))
