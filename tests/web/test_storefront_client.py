"""The TypeScript client's storefront page (clients/typescript/storefront: the generated client,
bundled by esbuild) in headless Chromium against a live service on the bundled data
(tests/retailkit.py), from another origin (CORS): recommended for you, paging, ETag
revalidation, popular, a click posted, similar items.

The page is the committed bundle; scripts/ci_client.sh rebuilds it from the sources and fails
on any difference, so this test runs what the sources say. Needs Debian's chromium and
chromium-driver (``scripts/ensure_browser.sh``): skipped locally without them, failed with
``CI=true``. The screenshot goes to ``RECSYS_SCREENSHOT_DIR`` (docs/screenshots holds the
committed one, storefront-client.png) or the test's temporary folder.
"""

from __future__ import annotations

import functools
import os
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.retailkit import LiveServer, retail_app
from tests.web.test_browser import _wait, browser, shots  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

PAGE_DIR = Path(__file__).resolve().parents[2] / "clients" / "typescript" / "storefront"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def page_server():
    """The storefront folder, served as static files on a free port."""
    httpd = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(PAGE_DIR))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_port
    httpd.shutdown()
    thread.join(10)


def _texts(driver, css):
    from selenium.webdriver.common.by import By

    return [e.get_attribute("data-item-id") for e in driver.find_elements(By.CSS_SELECTOR, css)]


def test_storefront_page_through_the_typescript_client(
    browser,  # noqa: F811
    shots,  # noqa: F811
    page_server,
    make_app,
    redis_url,
    redis_prefix,
    tmp_path,
):
    from selenium.webdriver.common.by import By

    assert (PAGE_DIR / "storefront.js").exists(), "run scripts/ci_client.sh to build the page"
    # The page on "localhost", the API on 127.0.0.1: another origin, allowed by CORS only.
    origin = f"http://localhost:{page_server}"
    app = retail_app(make_app, redis_url, redis_prefix, tmp_path, CORS_ORIGINS=[origin])
    api = LiveServer(app)
    text = lambda css: browser.find_element(By.CSS_SELECTOR, css).text  # noqa: E731
    ready = lambda d: text("#status") != "loading"  # noqa: E731
    try:
        browser.get(f"{origin}/index.html?api=http://127.0.0.1:{api.port}&user=17850")
        _wait(browser, ready)
        assert text("#status") == "ready"
        first = _texts(browser, "#recs-list li")
        assert len(first) == 5 and all(first)
        assert text("#recs-route").startswith("route h")  # the profile's learned route
        assert text("#recs-http") == "200"
        assert len(_texts(browser, "#popular-list li")) == 5

        browser.find_element(By.ID, "recs-next").click()  # paging: offset=5
        _wait(browser, lambda d: text("#recs-page") == "page 2" and ready(d))
        second = _texts(browser, "#recs-list li")
        assert len(second) == 5 and not set(first) & set(second), (first, second)

        browser.find_element(By.ID, "recs-revalidate").click()  # If-None-Match -> 304
        _wait(browser, lambda d: "304" in text("#recs-http"))
        assert _texts(browser, "#recs-list li") == second  # kept the list it had

        item = second[0]
        css = f'#recs-list li[data-item-id="{item}"] button'
        browser.find_element(By.CSS_SELECTOR, css).click()
        _wait(browser, lambda d: "recorded" in text("#click-status"))
        assert text("#click-status") == f"click on {item} recorded (201)"
        _wait(browser, lambda d: text("#similar-of") == f"like {item}")
        similar = _texts(browser, "#similar-list li")
        assert similar and item not in similar
        _wait(browser, ready)
        assert text("#status") == "ready"
        browser.set_window_size(1280, 820)
        browser.save_screenshot(os.path.join(shots, "storefront-client.png"))
    finally:
        api.close()
