"""The operator console in a real browser (headless Chromium through Selenium, as
tests/web/test_browser.py): sign in, toggle a strategy and watch a user's list change in the
preview, roll a model back and activate it again, find all of it in the audit view, and see
the Live charts draw from the service's own /metrics.

Only condition waits (WebDriverWait), no sleeps. Screenshots go to RECSYS_SCREENSHOT_DIR or the
test's temporary folder (scripts/console_screenshots.py takes the documented ones against a
server with the bundled data).
"""

from __future__ import annotations

import json
import os

import pytest

from tests.servicekit import ADMIN_TOKEN, train_and_register
from tests.web.test_browser import _serve_app, _wait, browser, shots  # noqa: F401 - fixtures

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


def _by():
    from selenium.webdriver.common.by import By

    return By


@pytest.fixture(autouse=True)
def no_csp_refusals(browser):  # noqa: F811
    """Each test's pages ran under the console's Content-Security-Policy and it refused nothing
    (Chromium logs every refusal: an inline script or style, eval, a fetch elsewhere)."""
    browser.get_log("browser")  # drop what earlier tests logged
    yield
    refused = [
        e["message"]
        for e in browser.get_log("browser")
        if "Content Security Policy" in e["message"] or "Content-Security-Policy" in e["message"]
    ]
    assert not refused, refused


def _login(driver, base: str, actor: str = "ops-browser") -> None:
    By = _by()
    driver.get(f"{base}/admin/")
    _wait(driver, lambda d: d.find_element(By.ID, "login-form").is_displayed())
    driver.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
    driver.find_element(By.ID, "actor").send_keys(actor)
    driver.find_element(By.ID, "login-submit").click()
    _wait(driver, lambda d: d.find_elements(By.ID, "strategies-table"))
    assert f"signed in as {actor}" in driver.find_element(By.ID, "who").text


def _list(driver, box: str) -> list[str]:
    By = _by()
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, f"#{box} ol.reclist li code")]


def _accept_confirm(driver) -> None:
    from selenium.webdriver.support import expected_conditions as EC

    _wait(driver, EC.alert_is_present()).accept()


def test_wrong_token_is_refused_and_the_form_stays(browser, served_app):  # noqa: F811
    By = _by()
    api = _serve_app(served_app)
    try:
        browser.get(f"http://127.0.0.1:{api.port}/admin/models")
        _wait(browser, lambda d: d.find_element(By.ID, "login-form").is_displayed())
        browser.find_element(By.ID, "token").send_keys("not-the-token")
        browser.find_element(By.ID, "login-submit").click()
        _wait(browser, lambda d: d.find_element(By.ID, "login-error").is_displayed())
        assert "invalid admin token" in browser.find_element(By.ID, "login-error").text
        assert not browser.find_element(By.ID, "screen").is_displayed()
    finally:
        api.close()


def test_toggle_preview_models_and_audit(browser, served_app, shots):  # noqa: F811
    By = _by()
    first = served_app.extensions["recsys.model_versions"]["ease"]
    second = train_and_register(served_app)["ease"]  # active now; rollback goes to `first`
    api = _serve_app(served_app)
    base = f"http://127.0.0.1:{api.port}"
    try:
        _login(browser, base)
        row = browser.find_element(By.ID, "strategy-ease")
        assert row.get_attribute("data-enabled") == "yes"

        # Toggle ease off with u6 (a warm user) in the preview: the list changes.
        browser.find_element(By.ID, "preview-user").send_keys("u6")
        browser.find_element(By.ID, "toggle-ease").click()
        _wait(browser, lambda d: d.find_elements(By.ID, "preview"))
        heading = browser.find_element(By.CSS_SELECTOR, "#preview h2").text
        before, after = _list(browser, "preview-before"), _list(browser, "preview-after")
        assert "list changed" in heading and before and after and before != after
        assert browser.find_element(By.ID, "strategy-ease").get_attribute("data-enabled") == "no"
        # The preview is the public answer: the API now serves the "after" list.
        public = served_app.test_client().get("/v1/users/u6/recommendations?n=10").get_json()
        assert [it["item_id"] for it in public["items"]] == after
        browser.save_screenshot(os.path.join(shots, "console-strategies.png"))

        # Models: roll ease back (confirm dialog), then activate the newer version again.
        browser.find_element(By.ID, "nav-models").click()
        _wait(browser, lambda d: d.find_elements(By.ID, "rollback-ease"))
        browser.find_element(By.ID, "rollback-ease").click()
        _accept_confirm(browser)
        _wait(browser, lambda d: d.find_elements(By.ID, "action-done"))
        assert "rolled back" in browser.find_element(By.ID, "action-done").text
        active = browser.find_element(By.CSS_SELECTOR, "#model-ease tr.active")
        assert active.get_attribute("id") == f"version-ease-{first}"
        browser.find_element(By.ID, f"activate-ease-{second}").click()
        _wait(
            browser,
            lambda d: (
                "activated" in d.find_element(By.ID, "action-done").text
                if d.find_elements(By.ID, "action-done")
                else False
            ),
        )
        active = browser.find_element(By.CSS_SELECTOR, "#model-ease tr.active")
        assert active.get_attribute("id") == f"version-ease-{second}"
        browser.save_screenshot(os.path.join(shots, "console-models.png"))

        # Audit: all three changes, by the name given at sign-in; then filtered to models.
        browser.find_element(By.ID, "nav-audit").click()
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "tr.audit-row"))
        rows = browser.find_elements(By.CSS_SELECTOR, "tr.audit-row")
        mine = [r.get_attribute("data-action") for r in rows if "ops-browser" in r.text]
        assert mine[:3] == ["model.activate", "model.rollback", "strategies.update"], mine
        browser.find_element(By.ID, "audit-action").send_keys("model.")
        browser.find_element(By.CSS_SELECTOR, "#audit-filters button").click()
        js = "return [...document.querySelectorAll('tr.audit-row')].map(r => r.dataset.action)"

        def filtered(d):
            actions = d.execute_script(js)
            return actions and all(a.startswith("model.") for a in actions)

        _wait(browser, filtered)
        browser.save_screenshot(os.path.join(shots, "console-audit.png"))
    finally:
        api.close()


def test_live_charts_draw_from_real_metrics(browser, served_app, shots):  # noqa: F811
    By = _by()
    api = _serve_app(served_app)
    base = f"http://127.0.0.1:{api.port}"
    try:
        _login(browser, base)
        browser.find_element(By.ID, "nav-live").click()
        _wait(
            browser,
            lambda d: int(d.find_element(By.ID, "charts").get_attribute("data-samples") or 0) >= 1,
        )
        # Real traffic between two samples, through the served HTTP stack.
        import urllib.request

        for k in range(12):
            with urllib.request.urlopen(f"{base}/v1/users/u{k % 7}/recommendations?n=3") as r:
                assert r.status == 200

        def drawn(d):
            last = d.find_element(By.ID, "chart-rate").get_attribute("data-last")
            return last and json.loads(last)[0] > 0

        _wait(browser, drawn, 60)
        rate = json.loads(browser.find_element(By.ID, "chart-rate").get_attribute("data-last"))
        assert rate[0] > 0 and rate[1] == 0  # requests/s, and no 5xx
        p50, p95, p99 = json.loads(
            browser.find_element(By.ID, "chart-latency").get_attribute("data-last")
        )
        assert 0 < p50 <= p95 <= p99
        (hit_ratio,) = json.loads(
            browser.find_element(By.ID, "chart-cache").get_attribute("data-last")
        )
        assert 0 < hit_ratio < 1  # 12 requests over 7 users: misses and hits
        for chart in ("rate", "latency", "cache", "degraded", "misses", "strategy"):
            canvas = browser.find_elements(By.CSS_SELECTOR, f"#chart-{chart} canvas")
            assert canvas and canvas[0].size["width"] > 100, chart
        browser.save_screenshot(os.path.join(shots, "console-live.png"))

        # Reloaded, the page starts from the service's short history: its first sample already
        # draws (without it, n samples draw n - 1 points).
        browser.refresh()
        js = (
            "const c = document.getElementById('charts');"
            "const r = document.getElementById('chart-rate');"
            "return c && r ? [Number(c.dataset.samples || 0), Number(r.dataset.points || 0),"
            " Number(c.dataset.history || 0)] : [0, 0, 0]"
        )
        samples, points, history = _wait(
            browser, lambda d: (v := d.execute_script(js))[0] >= 1 and v, 60
        )
        assert history >= 1 and points >= samples, (samples, points, history)
    finally:
        api.close()


def test_overview_draws_the_store_and_the_runs(browser, served_app, shots):  # noqa: F811
    By = _by()
    api = _serve_app(served_app)
    try:
        _login(browser, f"http://127.0.0.1:{api.port}")
        browser.find_element(By.ID, "nav-overview").click()
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-events canvas"))
        chart = browser.find_element(By.ID, "chart-events")
        assert chart.get_attribute("data-points") == "30"
        assert chart.get_attribute("data-total") == "24"
        assert browser.find_element(By.CSS_SELECTOR, "#tile-events b").text == "24"
        assert browser.find_element(By.ID, "overview-model-ease").is_displayed()
        assert "never recorded" in browser.find_element(By.ID, "last-train").text
        browser.save_screenshot(os.path.join(shots, "console-overview.png"))
    finally:
        api.close()


def test_a_retrain_started_from_the_console(browser, served_app, shots):  # noqa: F811
    """Jobs: tick one strategy, start, see it queued with a progress bar, then (the list polls
    itself) succeeded at 100 % with its new version, which the Models screen shows active."""
    By = _by()
    before = served_app.extensions["recsys.model_versions"]["popular"]
    api = _serve_app(served_app)
    try:
        _login(browser, f"http://127.0.0.1:{api.port}", actor="ops-carol")
        browser.find_element(By.ID, "nav-jobs").click()
        _wait(browser, lambda d: d.find_elements(By.ID, "train-popular"))
        browser.find_element(By.ID, "train-popular").click()
        browser.find_element(By.ID, "start-train").click()
        _accept_confirm(browser)
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "tr.job"))
        row = browser.find_element(By.CSS_SELECTOR, "tr.job")
        job_id = row.get_attribute("id")
        assert "started" in browser.find_element(By.ID, "action-done").text
        assert row.find_elements(By.TAG_NAME, "progress") and "ops-carol" in row.text

        def outcome(d):
            r = d.find_element(By.ID, job_id)
            return r.get_attribute("data-outcome") in ("succeeded", "failed") and r

        row = _wait(browser, outcome, 180)  # a child process: a hang guard, not a window
        assert row.get_attribute("data-outcome") == "succeeded", row.text
        assert row.get_attribute("data-progress") == "1.0" and "100%" in row.text
        made = row.find_element(By.CSS_SELECTOR, ".job-version")
        version = made.get_attribute("data-version")
        assert made.get_attribute("data-strategy") == "popular" and version != before
        assert "active" in made.text
        assert browser.find_element(By.ID, "jobs-list").get_attribute("data-running") == "no"
        browser.save_screenshot(os.path.join(shots, "console-jobs.png"))

        browser.find_element(By.ID, "nav-models").click()
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#model-popular tr.active"))
        active = browser.find_element(By.CSS_SELECTOR, "#model-popular tr.active")
        assert active.get_attribute("id") == f"version-popular-{version}"
    finally:
        api.close()


def test_item_browser_finds_an_item_and_its_neighbours(browser, served_app, shots):  # noqa: F811
    By = _by()
    api = _serve_app(served_app)
    try:
        _login(browser, f"http://127.0.0.1:{api.port}")
        browser.find_element(By.ID, "nav-items").click()
        _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.item-row")) == 10)
        browser.find_element(By.ID, "items-q").send_keys("Item 2")
        browser.find_element(By.ID, "items-search").click()
        _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.item-row")) == 1)
        browser.find_element(By.CSS_SELECTOR, "tr.item-row a.item-link").click()
        _wait(browser, lambda d: d.find_elements(By.ID, "item-view"))
        view = browser.find_element(By.ID, "item-view")
        assert view.get_attribute("data-item") == "i2" and "available" in view.text
        neighbours = browser.find_elements(By.CSS_SELECTOR, "#neighbours-ease ol.reclist li")
        assert neighbours and "Item " in neighbours[0].text  # with titles
        assert browser.find_elements(By.CSS_SELECTOR, "#item-events tbody tr")
        browser.save_screenshot(os.path.join(shots, "console-items.png"))
        # A neighbour opens its own view.
        first = browser.find_element(By.CSS_SELECTOR, "#neighbours-ease ol.reclist li a")
        target = first.text
        first.click()
        _wait(
            browser,
            lambda d: d.find_element(By.ID, "item-view").get_attribute("data-item") == target,
        )
    finally:
        api.close()
