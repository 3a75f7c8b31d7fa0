"""Waiting for the dashboard and photographing it, for tests/browser/."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

# The screenshots docs/dashboard.md shows: every run of the tests takes them anew.
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "img" / "dashboard"
WIDTH = 1280


def wait_until(driver: Any, condition: Callable[[Any], Any], what: str, timeout: float = 60) -> Any:
    """Until `condition(driver)` is truthy (an explicit wait: the machine is shared and
    slow at times); its value. TimeoutException names `what`."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, what)


def screenshot(driver: Any, name: str) -> Path:
    """The whole page as docs/img/dashboard/<name>.png: the window grown to the page (twice:
    a wider viewport can make the page shorter), then set back."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        height, chrome = driver.execute_script(
            "return [document.documentElement.scrollHeight, "
            "window.outerHeight - window.innerHeight]"
        )
        driver.set_window_size(WIDTH, max(700, min(int(height) + int(chrome), 4000)))
    path = SCREENSHOTS / f"{name}.png"
    try:
        driver.save_screenshot(str(path))
    finally:
        driver.set_window_size(WIDTH, 900)
    return path
