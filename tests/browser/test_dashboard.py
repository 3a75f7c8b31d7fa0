"""The dashboard in a real browser (headless Chromium) against a real stack: signing in,
jobs appearing and finishing live, cancelling from a job's page, what a read-only key is
offered, an experiment started from the form down to its chart, and two compared.

One stack for the module, small on purpose (the suite shares 2 cores): a prefork worker
with one slot, so one long job keeps the next one queued.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from services.devstack.processes import ManagedProcess
from services.devstack.redis_server import free_port
from tests.browser.pages import screenshot, wait_until
from tests.stack import TEST_KEYS, Stack, bearer

CONCURRENCY = {"threads": 4, "prefork": 1, "gevent": 20}
REFUSED_URL = "http://127.0.0.1:9/"  # nothing listens on the discard port


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("dashboard")).running(
        [*CONCURRENCY.items(), ("experiments", None)]
    ) as stack:
        yield stack


# -- helpers --------------------------------------------------------------------------------


def by_css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def shown(driver: Any, selector: str) -> bool:
    return any(element.is_displayed() for element in by_css(driver, selector))


def attributes(driver: Any, selector: str, name: str) -> list[str | None]:
    """`name` of every element matching `selector`, read at one instant in the page: the
    live tables are redrawn under a test's feet, so an element found earlier may be gone."""
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])]"
        ".map(e => e.getAttribute(arguments[1]))",
        selector,
        name,
    )


def text(driver: Any, selector: str) -> str | None:
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : null", selector
    )


def click(driver: Any, selector: str) -> None:
    """A real click on the element, found again if a redraw replaced it meanwhile."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(10):
        try:
            by_css(driver, selector)[0].click()
            return
        except StaleElementReferenceException:
            continue
    raise AssertionError(f"{selector} kept being redrawn")


def open_page(driver: Any, url: str, page: str) -> None:
    """Load `url` and wait until the script has drawn `page` from the API's answers."""
    driver.get(url)
    wait_until(
        driver,
        lambda d: d.execute_script(
            "return document.body.dataset.page === arguments[0] && "
            "document.body.dataset.ready === 'true'",
            page,
        ),
        f"the {page} page drawn at {url}",
    )


def sign_in(driver: Any, stack: Stack, key_name: str) -> None:
    open_page(driver, f"{stack.url}/ui/signin", "signin")
    driver.execute_script("sessionStorage.clear()")
    field = by_css(driver, "#api-key")[0]
    field.clear()
    field.send_keys(TEST_KEYS[key_name][1])
    by_css(driver, "#signin-submit")[0].click()
    wait_until(
        driver,
        lambda d: d.execute_script(
            "return document.body.dataset.page === 'jobs' && document.body.dataset.ready"
        ),
        f"the jobs page after signing in as {key_name}",
    )


def state_on_page(driver: Any) -> str | None:
    found = attributes(driver, "#job-state [data-state]", "data-state")
    return found[0] if found else None


def row_state(driver: Any, job_id: str) -> str | None:
    found = attributes(driver, f'tr[data-job-id="{job_id}"] [data-state]', "data-state")
    return found[0] if found else None


def run_experiment(stack: Stack, body: dict) -> str:
    response = stack.http.post(f"{stack.url}/experiments", json=body, timeout=10)
    assert response.status_code == 202, response.text
    experiment_id = response.json()["id"]
    deadline = time.monotonic() + 120
    while (state := stack.http.get(f"{response.url}/{experiment_id}").json()["state"]) not in (
        "succeeded",
        "failed",
    ):
        assert time.monotonic() < deadline, f"experiment {experiment_id} still {state}"
        time.sleep(0.3)
    assert state == "succeeded"
    return experiment_id


def chart_loaded(driver: Any, selector: str) -> int:
    """How many images matching `selector` have loaded a real picture."""
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])]"
        ".filter(i => i.complete && i.naturalWidth > 0).length",
        selector,
    )


# -- the API side of the dashboard ---------------------------------------------------------


def test_me_tells_each_key_its_scopes(stack: Stack) -> None:
    for name, (scopes, _) in TEST_KEYS.items():
        answer = requests.get(f"{stack.url}/me", headers=bearer(name), timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"name": name, "scopes": scopes.split("+"), "auth": "on"}
    assert requests.get(f"{stack.url}/me", timeout=10).status_code == 401


def test_pages_are_public_shells_outside_the_openapi_document(stack: Stack) -> None:
    page = requests.get(f"{stack.url}/ui/", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert "script-src" not in page.headers["Content-Security-Policy"]  # default-src 'self'
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    front = requests.get(f"{stack.url}/", timeout=10, allow_redirects=False)
    assert front.status_code == 302 and front.headers["Location"].endswith("/ui/")
    paths = requests.get(f"{stack.url}/openapi.json", timeout=10).json()["paths"]
    assert "/me" in paths
    assert not [p for p in paths if p == "/" or p.startswith(("/ui", "/static"))], paths


# -- in the browser -------------------------------------------------------------------------


def test_sign_in_with_a_key(browser: Any, stack: Stack) -> None:
    browser.get(f"{stack.url}/")
    wait_until(browser, lambda d: "/ui/signin" in d.current_url, "sent to sign in")
    open_page(browser, browser.current_url, "signin")
    screenshot(browser, "signin")
    by_css(browser, "#api-key")[0].send_keys("not-a-key")
    by_css(browser, "#signin-submit")[0].click()
    wait_until(browser, lambda d: shown(d, "#signin-error"), "a refused key said so")
    assert "does not know" in by_css(browser, "#signin-error")[0].text
    assert browser.execute_script("return sessionStorage.length") == 0

    sign_in(browser, stack, "admin")
    assert by_css(browser, "#identity-name")[0].text == "admin"
    assert "admin" in by_css(browser, "#identity-scopes")[0].text
    # Kept for the tab only, never in a cookie the browser would send by itself.
    assert browser.get_cookies() == []
    assert browser.execute_script("return sessionStorage.length") == 1


def test_a_job_submitted_through_the_api_appears_and_finishes_without_reload(
    browser: Any, stack: Stack
) -> None:
    sign_in(browser, stack, "admin")
    browser.execute_script("window.sameDocument = true")
    job = stack.submit("sleep", {"seconds": 1.5}, pool="threads")
    others = [
        stack.submit("cpu_hash", {"rounds": 20_000}, pool="prefork"),
        stack.submit("noop", {"value": {"hello": "dashboard"}}, pool="gevent"),
        stack.submit("http_get", {"url": f"{stack.url}/lab/delay?ms=100"}, pool="threads"),
    ]
    wait_until(browser, lambda d: row_state(d, job["id"]) is not None, "the new job listed")
    wait_until(browser, lambda d: row_state(d, job["id"]) == "succeeded", "the job finished")
    stack.wait_for([o["id"] for o in others])
    wait_until(
        browser,
        lambda d: all(row_state(d, o["id"]) == "succeeded" for o in others),
        "every job finished",
    )
    assert browser.execute_script("return window.sameDocument") is True, "the page reloaded"
    screenshot(browser, "jobs")

    click(browser, f'tr[data-job-id="{job["id"]}"] a')
    wait_until(browser, lambda d: state_on_page(d) == "succeeded", "the job's page")
    steps = ["submitted", "received", "started", "succeeded"]
    assert attributes(browser, "#timeline li", "data-step") == steps
    assert attributes(browser, "#timeline li", "class") == ["done"] * 4
    assert text(browser, "#job-outcome") == "1.5"
    assert "threads-1@" in (text(browser, "#job-details") or "")
    screenshot(browser, "job")


def test_cancel_a_queued_job_from_its_page_and_see_the_pools(browser: Any, stack: Stack) -> None:
    sign_in(browser, stack, "admin")
    # prefork has one slot: a long job holds it, the next one waits.
    blocker = stack.submit("sleep", {"seconds": 60}, pool="prefork")
    stack.wait_for([blocker["id"]], states={"running"})
    queued = stack.submit("noop", {"value": "never"}, pool="prefork")
    try:
        open_page(browser, f"{stack.url}/ui/pools", "pools")
        prefork_busy = '[data-pool="prefork"] tr[data-node^="prefork-1@"] [data-busy]'
        wait_until(
            browser,
            lambda d: attributes(d, prefork_busy, "data-busy") == ["1"],
            "prefork's one slot shown busy",
        )
        for pool, concurrency in CONCURRENCY.items():
            shown_concurrency = attributes(
                browser, f'[data-pool="{pool}"] [data-concurrency]', "data-concurrency"
            )
            assert shown_concurrency == [str(concurrency)]
        # The queue depth counts the job waiting behind the long one.
        wait_until(
            browser,
            lambda d: attributes(d, '[data-pool="prefork"] [data-queued]', "data-queued") == ["1"],
            "prefork's queued job counted",
        )
        # What each pool can do: prefork can kill, stop and isolate a job; threads none.
        yes = " .capabilities .yes"
        assert len(by_css(browser, f'[data-pool="prefork"]{yes}')) == 3
        assert len(by_css(browser, f'[data-pool="threads"]{yes}')) == 0
        screenshot(browser, "pools")

        open_page(browser, f"{stack.url}/ui/jobs/{queued['id']}", "job")
        assert state_on_page(browser) == "queued"
        wait_until(browser, lambda d: shown(d, "#cancel-job"), "the Cancel button")
        by_css(browser, "#cancel-job")[0].click()
        wait_until(browser, lambda d: state_on_page(d) == "cancelled", "the job cancelled")
        assert stack.job(queued["id"])["state"] == "cancelled"
        assert not shown(browser, "#cancel-job")
        assert shown(browser, "#retry-job")  # admin holds submit too
    finally:
        stack.http.delete(f"{stack.url}/jobs/{blocker['id']}", timeout=10)
    (record,) = stack.wait_for([queued["id"]])
    assert record["started_at"] is None


def test_filter_the_list_by_state_and_retry_a_failed_job_from_its_page(
    browser: Any, stack: Stack
) -> None:
    from selenium.webdriver.support.ui import Select

    sign_in(browser, stack, "admin")
    failed = stack.submit("http_get", {"url": REFUSED_URL, "timeout": 2}, pool="threads")
    succeeded = stack.submit("noop", {"value": "kept out"}, pool="threads")
    stack.wait_for([failed["id"], succeeded["id"]])
    assert stack.job(failed["id"])["state"] == "failed"

    Select(by_css(browser, "#job-filters [name=state]")[0]).select_by_value("failed")
    wait_until(browser, lambda d: row_state(d, failed["id"]) == "failed", "the failed job listed")
    assert row_state(browser, succeeded["id"]) is None  # filtered out
    assert set(attributes(browser, "#jobs-body [data-state]", "data-state")) == {"failed"}
    assert "state=failed" in browser.current_url  # the filter is in the address, to share

    click(browser, f'tr[data-job-id="{failed["id"]}"] a')
    wait_until(browser, lambda d: state_on_page(d) == "failed", "the failed job's page")
    wait_until(browser, lambda d: shown(d, "#retry-job"), "the Retry button")
    click(browser, "#retry-job")
    # Queued again under the same id: a second attempt runs, and fails the same way.
    wait_until(browser, lambda d: stack.job(failed["id"])["attempts"] == 2, "a second attempt")
    (again,) = stack.wait_for([failed["id"]])
    assert again["state"] == "failed" and again["attempts"] == 2


def test_a_read_only_key_is_offered_no_cancel(browser: Any, stack: Stack) -> None:
    running = stack.submit("sleep", {"seconds": 60}, pool="prefork")
    stack.wait_for([running["id"]], states={"running"})
    page = f"{stack.url}/ui/jobs/{running['id']}"
    try:
        sign_in(browser, stack, "reader")
        assert not shown(browser, "#new-job")  # no submit scope: no form to submit with
        open_page(browser, page, "job")
        assert state_on_page(browser) == "running"
        assert by_css(browser, "#cancel-job") and not shown(browser, "#cancel-job")
        assert not shown(browser, "#retry-job")
        open_page(browser, f"{stack.url}/ui/lab", "lab")
        assert shown(browser, "#lab-needs-admin")
        assert not by_css(browser, "#exp-submit")[0].is_enabled()

        # The same page with the admin key offers it, and it stops the running job.
        sign_in(browser, stack, "admin")
        open_page(browser, page, "job")
        wait_until(browser, lambda d: shown(d, "#cancel-job"), "Cancel for an admin")
        by_css(browser, "#cancel-job")[0].click()
        wait_until(browser, lambda d: state_on_page(d) == "cancelled", "the job cancelled")
    finally:
        stack.http.delete(f"{stack.url}/jobs/{running['id']}", timeout=10)


def test_an_experiment_from_the_form_to_its_chart_and_a_comparison(
    browser: Any, stack: Stack
) -> None:
    from selenium.webdriver.support.ui import Select

    sign_in(browser, stack, "admin")
    open_page(browser, f"{stack.url}/ui/lab", "lab")
    Select(by_css(browser, "#exp-workload")[0]).select_by_value("sleep")
    seconds = by_css(browser, "#param-seconds")[0]
    seconds.clear()
    seconds.send_keys("0.05")
    by_css(browser, "#local-threadpool")[0].click()
    count = by_css(browser, "#exp-count")[0]
    count.clear()
    count.send_keys("10")
    screenshot(browser, "lab")
    by_css(browser, "#exp-submit")[0].click()

    wait_until(
        browser,
        lambda d: d.execute_script(
            "return document.body.dataset.page === 'experiment' && document.body.dataset.ready"
        ),
        "the experiment's page",
    )
    targets = ["threads", "prefork", "gevent", "threadpool"]
    assert attributes(browser, "#progress [data-target]", "data-target") == targets
    wait_until(browser, lambda d: chart_loaded(d, "#chart") == 1, "the chart", timeout=120)
    assert attributes(browser, "#progress [data-target]", "data-done") == ["10"] * 4
    assert attributes(browser, "#experiment-state [data-state]", "data-state") == ["succeeded"]
    assert len(by_css(browser, "#verdict li")) >= 1
    assert attributes(browser, "#report-table tbody tr", "data-target") == targets
    screenshot(browser, "experiment")
    first = browser.current_url.rstrip("/").rsplit("/", 1)[1]

    # The same workload again, the local executor with fewer workers: side by side.
    second = run_experiment(
        stack,
        {"workload": "sleep", "params": {"seconds": 0.05}, "count": 10,
         "pools": ["threads", "gevent"], "local": ["threadpool"], "concurrency": 2},
    )  # fmt: skip
    open_page(browser, f"{stack.url}/ui/lab", "lab")
    for experiment_id in (first, second):
        wait_until(
            browser,
            lambda d, i=experiment_id: by_css(d, f'tr[data-experiment-id="{i}"] input'),
            "the experiment listed",
        )
        click(browser, f'tr[data-experiment-id="{experiment_id}"] input')
    click(browser, "#compare-selected")
    wait_until(
        browser, lambda d: chart_loaded(d, "#compare-charts img") == 2, "both charts side by side"
    )
    assert browser.current_url.endswith(f"/ui/lab/compare?ids={first},{second}")
    compared = attributes(browser, "#rows-table tbody tr", "data-target")
    assert set(compared) == set(targets)
    (ratio,) = attributes(
        browser, '#rows-table tr[data-target="threadpool"] [data-ratio]', "data-ratio"
    )
    assert float(ratio or 0) > 0
    screenshot(browser, "compare")


def test_with_auth_off_there_is_nothing_to_sign_in_with(browser: Any, stack: Stack) -> None:
    """A second API on the same Redis, started with JOBRUNNER_AUTH=off."""
    port = free_port()
    planned = stack.api_process("127.0.0.1", port)
    stack.start(
        ManagedProcess(
            "api-auth-off",
            planned.argv,
            {**planned.env, "JOBRUNNER_AUTH": "off", "API_WORKERS": "1"},
            stack.workdir / "api-auth-off.log",
        )
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"{url}/healthz", timeout=1).ok:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "the API with auth off did not start"
        time.sleep(0.2)
    open_page(browser, f"{url}/ui/", "jobs")
    assert "/ui/signin" not in browser.current_url
    assert by_css(browser, "#identity-name")[0].text == "auth is off"
    assert not shown(browser, "#sign-out")
    assert browser.execute_script("return sessionStorage.length") == 0
