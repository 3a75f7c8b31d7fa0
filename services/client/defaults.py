"""Where the API is and which key to send when the caller does not say: JOBRUNNER_URL and
JOBRUNNER_API_KEY, else the key file `make run` writes (.run/api-key)."""

from __future__ import annotations

from pathlib import Path


def api_url() -> str:
    """JOBRUNNER_URL, else http://127.0.0.1:8000 (where `make run` listens)."""
    # Read here, not at import: settings are parsed only by a client that needs them.
    from services.core.settings import get_settings

    return get_settings().jobrunner_url


def api_key() -> str | None:
    """JOBRUNNER_API_KEY, else the key `make run` wrote into its run folder
    (JOBRUNNER_RUN_DIR, else ./.run), else None (the API will answer 401)."""
    from services.core.settings import get_settings

    settings = get_settings()
    if settings.jobrunner_api_key and settings.jobrunner_api_key.get_secret_value():
        return settings.jobrunner_api_key.get_secret_value()
    key_file = (settings.jobrunner_run_dir or Path(".run")) / "api-key"
    return key_file.read_text().strip() if key_file.exists() else None
