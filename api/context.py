"""What a request needs from the app: settings, the job store, the Celery sender."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import current_app

from services.core.settings import Settings
from services.jobs.store import JobStore


@dataclass(frozen=True)
class ApiContext:
    settings: Settings
    store: JobStore
    celery: Celery


def api_context() -> ApiContext:
    return current_app.extensions["jobrunner"]
