#!/usr/bin/env python3
"""Screenshots of every operator-console screen (docs/screenshots/console-*.png), taken with
headless Chromium against a running server.

    RECSYS_ADMIN_TOKEN=secret make run          # in one terminal (the bundled data)
    .venv/bin/python scripts/console_screenshots.py --url http://127.0.0.1:8000 \\
        --token secret --demo-changes            # in another

It first sends some recommendation traffic (so Live has something to draw). With
``--demo-changes`` it also makes visible changes on that server, all audited: it sets a
strategy weight (then resets it to its default), rolls a model back and activates its version
again, starts a retrain of ``popular`` from the Jobs screen (screenshots while it runs and once
it is done), creates two experiments (``console-demo-*``,
with click events sent for some of the lists its users were shown, so the report has numbers,
and ``console-next-*``, starting tomorrow, so it has none) and stops both at the end. Use it on
a development server, not in production. Needs Debian's chromium and chromium-driver
(scripts/ensure_browser.sh) and selenium (in the dev extras).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import sys
import threading
import urllib.error
import urllib.request

SCREENS = (
    "overview",
    "strategies",
    "models",
    "live",
    "users",
    "items",
    "jobs",
    "experiments",
    "audit",
)


def _http(method: str, url: str, token: str | None = None, body: object = None) -> object:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
        req.add_header("X-Actor", "screenshots")
    with urllib.request.urlopen(req, timeout=30) as r:
        raw = r.read()
    return json.loads(raw) if raw else None


def _users(base: str, token: str, n: int) -> tuple[list[str], str]:
    """``n`` users from the catalogue API, and one with a middling history (a warm user)."""
    out = _http("GET", f"{base}/v1/users?limit={n}", token)["users"]
    warm = sorted((u for u in out if u["events"] >= 10), key=lambda u: u["events"])
    return [u["user_id"] for u in out], (warm[len(warm) // 2] if warm else out[0])["user_id"]


class Traffic:
    """Recommendation requests in a background thread until stopped."""

    def __init__(self, base: str, users: list[str]):
        self.base, self.users = base, users
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        rng = random.Random(7)
        while not self.stop.is_set():
            user = rng.choice(self.users)
            try:
                _http("GET", f"{self.base}/v1/users/{user}/recommendations?n=10")
            except urllib.error.URLError:
                pass
            self.stop.wait(0.05)


def _driver(width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    if not (chromium and driver_bin):
        sys.exit("needs chromium and chromedriver (scripts/ensure_browser.sh)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
        "--hide-scrollbars",
    ):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver_bin), options=opts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--token", default=os.environ.get("RECSYS_ADMIN_TOKEN"))
    ap.add_argument("--out", default=os.path.join("docs", "screenshots"))
    ap.add_argument("--user", help="user for the preview and the inspector (default: one)")
    ap.add_argument("--demo-changes", action="store_true", help="see the module docstring")
    ap.add_argument("--item-query", default="heart", help="what the Items shot searches for")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=1000)
    args = ap.parse_args()
    if not args.token:
        sys.exit("give --token (or RECSYS_ADMIN_TOKEN)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base = args.url.rstrip("/")
    users, warm_user = _users(base, args.token, 200)
    user = args.user or warm_user
    os.makedirs(args.out, exist_ok=True)
    traffic = Traffic(base, users)
    traffic.thread.start()
    driver = _driver(args.width, args.height)

    def wait(cond, timeout=120):
        return WebDriverWait(driver, timeout).until(cond)

    def shot(name: str) -> None:
        path = os.path.join(args.out, f"console-{name}.png")
        driver.save_screenshot(path)
        print("wrote", path)

    def click(element_id: str) -> None:
        driver.find_element(By.ID, element_id).click()

    created: list[str] = []
    try:
        driver.get(f"{base}/admin/")
        wait(lambda d: d.find_element(By.ID, "login-form").is_displayed())
        driver.find_element(By.ID, "token").send_keys(args.token)
        driver.find_element(By.ID, "actor").send_keys("screenshots")
        click("login-submit")
        wait(lambda d: d.find_elements(By.ID, "strategies-table"))
        driver.find_element(By.ID, "preview-user").send_keys(user)
        if args.demo_changes:
            weight = driver.find_element(By.ID, "weight-popular")
            weight.clear()
            weight.send_keys("0.9")
            weight.submit()
        else:
            driver.find_element(By.CSS_SELECTOR, ".preview-bar button").click()
        wait(lambda d: d.find_elements(By.ID, "preview"))
        shot("strategies")
        if args.demo_changes:
            _http("DELETE", f"{base}/v1/admin/strategies/popular?field=weight", args.token)

        driver.get(f"{base}/admin/models")
        wait(lambda d: d.find_elements(By.CSS_SELECTOR, "section.model"))
        shot("models")

        driver.get(f"{base}/admin/live")
        wait(
            lambda d: int(d.find_element(By.ID, "charts").get_attribute("data-samples") or 0) >= 12
        )
        shot("live")

        driver.get(f"{base}/admin/users")
        wait(lambda d: d.find_element(By.ID, "user-id").is_displayed())
        driver.find_element(By.ID, "user-id").send_keys(user)
        driver.find_element(By.CSS_SELECTOR, "#user-form button").click()
        wait(lambda d: d.find_elements(By.ID, "user-view"))
        shot("users")

        if args.demo_changes:
            created = _demo_experiment(base, args.token, users)
        driver.get(f"{base}/admin/items")
        wait(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.item-row"))
        driver.find_element(By.ID, "items-q").send_keys(args.item_query)
        click("items-search")
        wait(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.item-row a.item-link"))
        driver.find_element(By.CSS_SELECTOR, "tr.item-row a.item-link").click()
        wait(lambda d: d.find_elements(By.ID, "item-view"))
        shot("items")

        driver.get(f"{base}/admin/jobs")
        wait(lambda d: d.find_elements(By.ID, "start-train"))
        if args.demo_changes:
            _retrain_from_console(driver, wait, click)
            shot("jobs-running")
            wait(
                lambda d: (
                    d.find_element(By.CSS_SELECTOR, "tr.job").get_attribute("data-outcome")
                    in ("succeeded", "failed")
                ),
                600,
            )
        shot("jobs")

        driver.get(f"{base}/admin/overview")
        wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-events canvas"))
        shot("overview")

        driver.get(f"{base}/admin/experiments")
        wait(lambda d: d.find_elements(By.ID, "experiment-form"))
        shot("experiments")

        if args.demo_changes:
            _demo_rollback(base, args.token)
        driver.get(f"{base}/admin/audit")
        wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#audit-table tbody tr"))
        shot("audit")
    finally:
        traffic.stop.set()
        driver.quit()
        for name in created:
            _http("POST", f"{base}/v1/admin/experiments/{name}/stop", args.token)


def _retrain_from_console(driver, wait, click) -> None:
    """Tick ``popular`` on the Jobs screen, start the retrain, accept the confirmation, and
    wait until the list shows it running with some progress."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    click("train-popular")
    click("start-train")
    wait(EC.alert_is_present()).accept()
    wait(
        lambda d: (
            (row := d.find_elements(By.CSS_SELECTOR, "tr.job"))
            and row[0].get_attribute("data-outcome") != "queued"
        )
    )


def _demo_experiment(base: str, token: str, users: list[str]) -> list[str]:
    """A running experiment with exposures and some clicks on what its users were shown, and
    one that starts tomorrow; returns their names (stopped at the end)."""
    stamp = dt.datetime.now(dt.UTC).strftime("%m%d-%H%M%S")
    demo, later = f"console-demo-{stamp}", f"console-next-{stamp}"
    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    definitions = [
        {
            "name": demo,
            "variants": [
                {"name": "control", "weight": 0.45, "config": {}},
                {"name": "rrf", "weight": 0.45, "config": {"routing": {"blend": "rrf"}}},
                {"name": "idle", "weight": 0.1, "config": {}},
            ],
        },
        {  # starts tomorrow: no exposures yet, so its rows say "not enough data"
            "name": later,
            "start_at": tomorrow,
            "variants": [
                {"name": "control", "weight": 0.5, "config": {}},
                {
                    "name": "no-bpr",
                    "weight": 0.5,
                    "config": {"strategies": {"bpr": {"enabled": False}}},
                },
            ],
        },
    ]
    for definition in definitions:
        _http("POST", f"{base}/v1/admin/experiments", token, definition)
    rng = random.Random(11)
    events = []
    for user in users[:120]:
        shown = _http("GET", f"{base}/v1/users/{user}/recommendations?n=10")
        variant = (shown.get("experiment") or {}).get("variant")
        if variant == "idle":
            continue  # left without clicks: its row shows how few numbers look
        if shown["items"] and rng.random() < (0.35 if variant == "rrf" else 0.25):
            item = rng.choice(shown["items"])["item_id"]
            events.append({"user_id": user, "item_id": item, "type": "click"})
    if events:
        _http("POST", f"{base}/v1/events", None, events)
    return [demo, later]


def _demo_rollback(base: str, token: str) -> None:
    """Roll one strategy that has a rollback target back, then re-activate its version."""
    for v in _http("GET", f"{base}/v1/admin/models", token)["versions"]:
        if not v["active"] or v["strategy"] == "profile":
            continue
        strategy, version = v["strategy"], v["version"]
        if _http("GET", f"{base}/v1/admin/models/{strategy}", token)["rollback_target"]:
            _http("POST", f"{base}/v1/admin/models/{strategy}/rollback", token)
            body = {"version": version}
            _http("POST", f"{base}/v1/admin/models/{strategy}/activate", token, body)
            return


if __name__ == "__main__":
    main()
