"""Every setting jobrunner reads, in one typed object, read once from the environment.

Each variable has a default that works on a laptop, so `make run` needs no configuration.
The README lists them all; keep that table and this class in step.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Broker and job store.")
    job_result_ttl: int = Field(86_400, ge=60, description="Seconds a job record is kept.")
    job_max_body_bytes: int = Field(65_536, ge=1_024, description="Largest accepted request body.")
    job_http_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1", "localhost"],
        description="Hosts the http_get workload may reach (comma separated).",
    )
    job_visibility_timeout: int = Field(
        3_600,
        ge=2,
        description="Seconds before a job taken by a worker that vanished is delivered again.",
    )
    api_host: str = Field("127.0.0.1", description="Address the API binds to.")
    api_port: int = Field(8000, ge=1, le=65_535, description="Port the API binds to.")
    api_workers: int = Field(2, ge=1, description="gunicorn worker processes of the API.")

    @field_validator("job_http_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [host.strip().lower() for host in value.split(",") if host.strip()]
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
