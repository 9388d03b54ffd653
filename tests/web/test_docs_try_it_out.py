"""/docs "Try it out" in headless Chromium: from 127.0.0.1, from localhost and behind a reverse
proxy that mounts the service under a path prefix, a call is executed and answers 200 (the
document's server is relative to where it is served; nothing is built from a request's Host).

Chromium as in ``test_browser.py`` (skipped locally without it, failed with ``CI=true``).
"""

from __future__ import annotations

import http.client
import os

import pytest
from werkzeug.serving import make_server

from tests.web.test_browser import _serve_app, _Server, _wait, browser, shots  # noqa: F401

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

PREFIX = "/shop/recs"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade"}


def prefix_proxy(port: int, prefix: str = PREFIX):
    """A reverse proxy (WSGI) that serves the service on 127.0.0.1:``port`` under ``prefix``,
    as nginx's ``location /shop/recs/ { proxy_pass http://api/; }`` would, saying so in
    ``X-Forwarded-Prefix``."""

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if not path.startswith(prefix + "/"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not under the prefix"]
        target = path[len(prefix) :]
        if environ.get("QUERY_STRING"):
            target += "?" + environ["QUERY_STRING"]
        headers = {
            key[5:].replace("_", "-").title(): value
            for key, value in environ.items()
            if key.startswith("HTTP_") and key not in ("HTTP_HOST", "HTTP_CONNECTION")
        }
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        headers.update(
            {
                "X-Forwarded-Prefix": prefix,
                "X-Forwarded-Host": environ.get("HTTP_HOST", ""),
                "X-Forwarded-Proto": "http",
                "X-Forwarded-For": environ.get("REMOTE_ADDR", ""),
            }
        )
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else None
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request(environ["REQUEST_METHOD"], target, body, headers)
            resp = conn.getresponse()
            data = resp.read()
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
        finally:
            conn.close()
        start_response(f"{resp.status} {resp.reason}", out)
        return [data]

    return _Server(make_server("127.0.0.1", 0, app, threaded=True))


def try_it_out(driver, docs_url: str) -> tuple[str, str]:
    """Open ``docs_url``, run ``GET /v1/popular`` with "Try it out" -> Execute; ``(status shown,
    request URL shown)``."""
    from selenium.webdriver.common.by import By

    driver.get(docs_url)
    op_id = "operations-Recommendations-getPopularItems"
    block = _wait(driver, lambda d: d.find_elements(By.ID, op_id), 60)[0]
    block.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    _wait(driver, lambda d: block.find_elements(By.CSS_SELECTOR, ".try-out__btn"))[0].click()
    _wait(driver, lambda d: block.find_elements(By.CSS_SELECTOR, ".execute"))[0].click()
    cell = ".live-responses-table .response .response-col_status"
    shown = _wait(driver, lambda d: block.find_elements(By.CSS_SELECTOR, cell), 60)[0]
    status = shown.text
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", shown)
    url = block.find_element(By.CSS_SELECTOR, ".request-url pre").text
    return status.strip(), url.strip()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_try_it_out_from_either_host(browser, served_app, shots, host):  # noqa: F811
    api = _serve_app(served_app)
    try:
        # Another client asks first with a Host of its choosing: nobody else may see it.
        conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
        conn.request("GET", "/openapi.json", headers={"Host": "recs.shop.example"})
        assert b"recs.shop.example" not in conn.getresponse().read()
        conn.close()
        base = f"http://{host}:{api.port}"
        status, url = try_it_out(browser, f"{base}/docs")
        assert status == "200", (status, url)
        assert url.startswith(f"{base}/v1/popular"), url
        browser.save_screenshot(os.path.join(shots, f"docs-try-it-out-{host}.png"))
    finally:
        api.close()


@pytest.mark.parametrize("trusted", [0, 1])
def test_try_it_out_behind_a_prefix_proxy(browser, make_app, served_app, shots, trusted):  # noqa: F811
    cfg = {k: served_app.config[k] for k in ("REDIS_URL", "REDIS_PREFIX", "MODEL_DIR")}
    # With TRUSTED_PROXIES=1 the prefix reaches SCRIPT_NAME (ProxyFix); without, the relative
    # URLs of /docs and of the document are enough.
    app = make_app(**cfg, TRUSTED_PROXIES=trusted, DEADLINE_MS=5000)
    api = _serve_app(app)
    proxy = prefix_proxy(api.port)
    try:
        base = f"http://127.0.0.1:{proxy.port}{PREFIX}"
        status, url = try_it_out(browser, f"{base}/docs")
        assert status == "200", (status, url)
        assert url.startswith(f"{base}/v1/popular"), url
        loaded = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert loaded and all(u.startswith(base + "/") for u in loaded), loaded
        if trusted:
            browser.save_screenshot(os.path.join(shots, "docs-try-it-out-prefix.png"))
    finally:
        proxy.close()
        api.close()
