"""The operator console (recsys.web.console): pages, token, fragments and actions over HTTP.

The browser-level checks (login, toggling with the preview, activate/rollback, live charts)
are in tests/web/test_browser.py; these cover the server side of every screen.
"""

from __future__ import annotations

import os

import pytest

from tests.servicekit import ADMIN_TOKEN

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def client(served_app):
    return served_app.test_client()


def test_pages_are_served_with_vendored_assets(client):
    for path in ("/admin/", "/admin/models", "/admin/live", "/admin/users", "/admin/audit"):
        r = client.get(path)
        assert r.status_code == 200 and b'id="login-form"' in r.data, path
    page = client.get("/admin/").get_data(as_text=True)
    for asset in ("htmx-2.0.11.min.js", "uPlot-1.6.32.iife.min.js", "console.js", "console.css"):
        assert f"/admin/static/{asset}" in page or f"/admin/static/vendor/{asset}" in page
    assert "https://" not in page and "http://" not in page  # nothing from another host
    for asset in ("vendor/htmx-2.0.11.min.js", "vendor/uPlot-1.6.32.iife.min.js", "console.js"):
        r = client.get(f"/admin/static/{asset}")
        assert r.status_code == 200 and len(r.data) > 1000, asset
    assert client.get("/admin/nope").status_code == 404


def test_page_says_admin_disabled_without_token(make_app):
    client = make_app(ADMIN_TOKEN=None).test_client()
    r = client.get("/admin/")
    assert r.status_code == 200 and b"Admin is disabled" in r.data and b"login-form" not in r.data
    assert client.get("/admin/ui/strategies", headers=AUTH).status_code == 403


@pytest.mark.parametrize(
    "method, path",
    [
        ("get", "/admin/ui/strategies"),
        ("get", "/admin/ui/models"),
        ("get", "/admin/ui/live.json"),
        ("get", "/admin/ui/user?user_id=u1"),
        ("get", "/admin/ui/experiments"),
        ("get", "/admin/ui/audit"),
        ("post", "/admin/ui/strategies/ease/enabled"),
        ("post", "/admin/ui/models/ease/rollback"),
        ("post", "/admin/ui/experiments"),
    ],
)
def test_fragments_need_the_admin_token(client, method, path):
    r = getattr(client, method)(path)
    assert r.status_code == 401 and r.get_json()["code"] == 401
    r = getattr(client, method)(path, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401


def test_toggle_previews_the_users_list_and_is_audited(client):
    r = client.get("/admin/ui/strategies", headers=AUTH)
    assert r.status_code == 200 and 'id="strategy-ease" data-enabled="yes"' in r.text
    r = client.post(
        "/admin/ui/strategies/ease/enabled",
        data={"enabled": "0", "preview_user": "u6"},
        headers={**AUTH, "X-Actor": "carol"},
    )
    assert r.status_code == 200
    html = r.get_data(as_text=True)
    assert 'id="strategy-ease" data-enabled="no"' in html
    assert 'id="preview"' in html and "list changed" in html, html
    audit = client.get("/v1/admin/audit?actor=carol", headers=AUTH).get_json()["entries"]
    assert audit[0]["action"] == "strategies.update" and audit[0]["after"] == {
        "ease": {"enabled": False, "weight": 1.0}
    }
    # Back to the default through the reset button: an audited strategies.reset.
    r = client.post(
        "/admin/ui/strategies/ease/reset",
        data={"field": "enabled", "preview_user": "u6"},
        headers=AUTH,
    )
    assert 'id="strategy-ease" data-enabled="yes"' in r.text and "list changed" in r.text
    got = client.get("/v1/admin/audit?action=strategies.reset", headers=AUTH).get_json()
    assert got["total"] == 1


def test_bad_settings_are_shown_not_raised(client):
    r = client.post("/admin/ui/strategies/ease/weight", data={"weight": "heavy"}, headers=AUTH)
    assert r.status_code == 200 and 'id="action-error"' in r.text and "must be a number" in r.text
    r = client.post("/admin/ui/strategies/ease/weight", data={"weight": "-3"}, headers=AUTH)
    assert r.status_code == 200 and 'id="action-error"' in r.text
    r = client.post("/admin/ui/routing", data={"blend": "median"}, headers=AUTH)
    assert r.status_code == 200 and 'id="action-error"' in r.text
    for action in ("strategies.", "routing."):
        got = client.get(f"/v1/admin/audit?action={action}", headers=AUTH).get_json()
        assert got["total"] == 0


def test_routing_change_and_reset(client):
    r = client.post("/admin/ui/routing", data={"blend": "rrf", "preview_user": "u6"}, headers=AUTH)
    assert r.status_code == 200 and 'id="action-done"' in r.text
    assert 'id="reset-routing-blend"' in r.text
    r = client.post("/admin/ui/routing/blend/reset", headers=AUTH)
    assert 'id="reset-routing-blend"' not in r.text
    got = client.get("/v1/admin/audit?action=routing.", headers=AUTH).get_json()
    assert [e["action"] for e in got["entries"]] == ["routing.reset", "routing.update"]


def test_models_screen_activate_rollback_and_errors(served_app, client):
    from recsys.models.repository import get_repository
    from tests.servicekit import train_and_register

    first = served_app.extensions["recsys.model_versions"]["ease"]
    second = train_and_register(served_app)["ease"]  # a newer version, now active
    r = client.get("/admin/ui/models", headers=AUTH)
    assert r.status_code == 200 and f'id="version-ease-{first}"' in r.text
    assert 'id="rollback-ease"' in r.text and f"Roll back to {first}" in r.text
    r = client.post("/admin/ui/models/ease/rollback", headers=AUTH)
    assert (
        'id="action-done"' in r.text and get_repository(served_app).active_version("ease") == first
    )
    r = client.post("/admin/ui/models/ease/activate", data={"version": second}, headers=AUTH)
    assert (
        'id="action-done"' in r.text and get_repository(served_app).active_version("ease") == second
    )
    # A corrupt version: refused, shown plainly, nothing changes.
    path = get_repository(served_app).get_version("ease", first)["path"]
    victim = next(f for f in sorted(os.listdir(path)) if f.endswith(".npz"))
    with open(os.path.join(path, victim), "r+b") as fh:
        fh.seek(40)
        fh.write(b"\x00corrupt\x00")
    r = client.post("/admin/ui/models/ease/activate", data={"version": first}, headers=AUTH)
    assert r.status_code == 200 and 'id="action-error"' in r.text and "checksum" in r.text.lower()
    assert get_repository(served_app).active_version("ease") == second
    r = client.post("/admin/ui/models/nope/load", headers=AUTH)
    assert 'id="action-error"' in r.text and "unknown strategy" in r.text
    actions = [
        e["action"]
        for e in client.get("/v1/admin/audit?action=model.", headers=AUTH).get_json()["entries"]
    ]
    assert actions[:2] == ["model.activate", "model.rollback"]


def test_user_inspector(client):
    client.get("/v1/users/u6/recommendations")  # so the route has been served once
    r = client.get("/admin/ui/user?user_id=u6", headers=AUTH)
    assert r.status_code == 200
    html = r.get_data(as_text=True)
    assert 'id="user-history"' in html and "purchase" in html
    assert 'id="user-route"' in html and html.count('class="rec"') > 0
    assert "ease" in html  # the explanation names the strategies behind each item
    r = client.get("/admin/ui/user?user_id=stranger", headers=AUTH)
    assert "Unknown user" in r.text and 'id="user-route">cold' in r.text


def test_experiments_screen_create_report_stop(client):
    form = {
        "name": "t1",
        "v0_name": "a",
        "v0_traffic": "50",
        "v1_name": "b",
        "v1_traffic": "40",
        "v1_blend": "rrf",
        "v1_off": ["bpr", "als"],
        "v1_w_ease": "0.5",
        "v2_name": "",  # an unused row
        "v2_traffic": "10",
    }
    r = client.post("/admin/ui/experiments", data=form, headers=AUTH)
    assert r.status_code == 200 and 'id="action-done"' in r.text and 'id="experiment-t1"' in r.text
    assert "not enough data" in r.text and "nan" not in r.text.lower()
    exp = client.get("/v1/admin/experiments/t1", headers=AUTH).get_json()
    a, b = exp["variants"]
    assert (a["name"], a["weight"], a["config"]) == ("a", 0.5, {})
    assert b["weight"] == 0.4 and b["config"] == {
        "strategies": {
            "als": {"enabled": False},
            "bpr": {"enabled": False},
            "ease": {"weight": 0.5},
        },
        "routing": {"blend": "rrf"},
    }
    # Refusals are shown above the form, which keeps what was typed.
    r = client.post(
        "/admin/ui/experiments", data={**form, "name": "t2", "v1_traffic": "60"}, headers=AUTH
    )
    assert 'id="action-error"' in r.text and "sum to" in r.text and 'value="t2"' in r.text
    assert "checked" in r.text  # the switched-off boxes stay ticked
    r = client.post(
        "/admin/ui/experiments", data={**form, "name": "t3", "v0_traffic": "x"}, headers=AUTH
    )
    assert 'id="action-error"' in r.text and "percentage" in r.text
    r = client.post("/admin/ui/experiments", data={"name": "t4", "v0_name": "a"}, headers=AUTH)
    assert 'id="action-error"' in r.text
    r = client.post("/admin/ui/experiments/t1/stop", headers=AUTH)
    assert 'id="action-done"' in r.text and "state-stopped" in r.text
    r = client.post("/admin/ui/experiments/missing/stop", headers=AUTH)
    assert 'id="action-error"' in r.text


def test_audit_screen_filters(client):
    client.patch("/v1/admin/strategies", json={"bpr": {"weight": 0.2}}, headers=AUTH)
    client.patch(
        "/v1/admin/routing", json={"cold_threshold": 3}, headers={**AUTH, "X-Actor": "dan"}
    )
    r = client.get("/admin/ui/audit?target=bpr", headers=AUTH)
    assert r.text.count('class="audit-row"') == 1
    r = client.get("/admin/ui/audit?actor=dan", headers=AUTH)
    assert r.text.count('class="audit-row"') == 1 and "routing.update" in r.text


def test_live_snapshot_reads_the_services_metrics(client):
    from recsys.web.console.live import quantile

    for _ in range(3):
        assert client.get("/v1/users/u6/recommendations").status_code == 200
    snap = client.get("/admin/ui/live.json", headers=AUTH).get_json()
    assert snap["requests"] >= 3 and snap["cache_hits"] >= 2
    lat = snap["latency"]
    assert lat["count"] >= 3 and lat["le"][-1] is None and lat["counts"][-1] == lat["count"]
    assert 0 < quantile(lat["le"], lat["counts"], 0.5) < 2.5
    assert "ease" in snap["strategy_latency"]


def test_quantile_matches_prometheus_interpolation():
    from recsys.web.console.live import quantile, snapshot

    assert quantile([0.1, 0.2, None], [0, 0, 0], 0.5) is None
    assert quantile([0.1, 0.2, None], [10, 20, 20], 0.5) == pytest.approx(0.1)
    assert quantile([0.1, 0.2, None], [10, 20, 20], 0.75) == pytest.approx(0.15)
    assert quantile([0.1, 0.2, None], [0, 0, 4], 0.5) == 0.2  # in +Inf: the last finite bound
    text = (
        "# TYPE recsys_requests_total counter\n"
        'recsys_requests_total{endpoint="recommend.user",status="200"} 7\n'
        'recsys_requests_total{endpoint="recommend.user",status="503"} 1\n'
        'recsys_requests_total{endpoint="console_ui.live_json",status="200"} 50\n'
        "# TYPE recsys_degraded_answers_total counter\n"
        'recsys_degraded_answers_total{reason="shed"} 2\n'
    )
    snap = snapshot(text, now=5.0)
    assert snap["requests"] == 8 and snap["errors"] == 1 and snap["degraded"] == {"shed": 2}


def test_previews_are_not_experiment_exposures(client):
    from recsys.serving import admission
    from recsys.serving.experiments import get_experiments

    form = {"name": "all-in", "v0_name": "a", "v0_traffic": "50"}
    form.update(v1_name="b", v1_traffic="50")
    r = client.post("/admin/ui/experiments", data=form, headers=AUTH)
    assert 'id="action-done"' in r.text
    get_experiments(client.application).invalidate()
    r = client.get("/admin/ui/user?user_id=u6", headers=AUTH)
    assert "all-in" in r.text  # the inspector shows the assignment ...
    r = client.post("/admin/ui/preview", data={"preview_user": "u6"}, headers=AUTH)
    assert 'id="preview"' in r.text
    report = client.get("/v1/admin/experiments/all-in/report", headers=AUTH).get_json()
    exposures = sum(v["exposures"] for v in report["variants"].values())
    assert exposures == 0  # ... but neither view was an exposure
    # The preview's inner request (served by the Flask view for an enrolled user) had its own
    # request state: both finished, nothing is left counted in flight.
    assert admission.in_flight() == 0
    assert client.get("/v1/users/u6/recommendations").get_json()["experiment"]["name"] == "all-in"
    report = client.get("/v1/admin/experiments/all-in/report", headers=AUTH).get_json()
    assert sum(v["exposures"] for v in report["variants"].values()) == 1  # the user's own is


def test_models_screen_switches_serving_profiles(served_app, client):
    from recsys.models.repository import PROFILE_KIND, get_repository
    from tests.offline.test_tuning import _store_profile, single_routes

    first = _store_profile(served_app, single_routes("popular"))
    second = _store_profile(served_app, single_routes("ease"))
    r = client.post("/admin/ui/models/profile/activate", data={"version": first}, headers=AUTH)
    assert 'id="action-done"' in r.text and 'id="model-profile"' in r.text
    assert 'id="load-profile"' not in r.text  # profiles are not loaded like models
    r = client.post("/admin/ui/models/profile/activate", data={"version": second}, headers=AUTH)
    assert get_repository(served_app).active_version(PROFILE_KIND) == second
    r = client.post("/admin/ui/models/profile/rollback", headers=AUTH)
    assert 'id="action-done"' in r.text
    assert get_repository(served_app).active_version(PROFILE_KIND) == first
    r = client.get("/admin/ui/strategies", headers=AUTH)
    assert f'id="profile-version">{first}<' in r.text  # the Strategies screen shows it


def test_preview_needs_no_api_key_when_reads_need_one(make_app, served_app):
    cfg = {k: served_app.config[k] for k in ("REDIS_URL", "REDIS_PREFIX", "MODEL_DIR")}
    app = make_app(
        **cfg,
        ADMIN_TOKEN=ADMIN_TOKEN,
        API_KEYS="reader=read",
        API_KEYS_FOR_READS=True,
        DEADLINE_MS=5000,
    )
    client = app.test_client()
    assert client.get("/v1/users/u6/recommendations").status_code == 401
    # Not through a header either: only the service itself sets the internal marker.
    headers = {"recsys.internal_read": "true", "X-Recsys-Internal-Read": "true"}
    assert client.get("/v1/users/u6/recommendations", headers=headers).status_code == 401
    r = client.post("/admin/ui/preview", data={"preview_user": "u6"}, headers=AUTH)
    assert 'id="preview"' in r.text and "route <b" in r.text and "error" not in r.text


@pytest.mark.parametrize(
    "path, auth",
    [
        ("/admin/", False),
        ("/admin/live", False),
        ("/admin/static/console.js", False),
        ("/admin/static/vendor/htmx-2.0.11.min.js", False),
        ("/admin/ui/strategies", True),
        ("/admin/ui/strategies", False),  # the 401 too
    ],
)
def test_console_answers_carry_a_strict_csp_and_no_framing(client, path, auth):
    r = client.get(path, headers=AUTH if auth else {})
    assert r.status_code in (200, 401), (path, r.status_code)
    csp = {
        d.split()[0]: d.split()[1:]
        for d in (x.strip() for x in r.headers["Content-Security-Policy"].split(";"))
        if d
    }
    assert csp["default-src"] == ["'none'"]
    assert csp["script-src"] == ["'self'"] and csp["style-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"] and csp["base-uri"] == ["'none'"]
    assert not any("unsafe" in v for vs in csp.values() for v in vs)
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_console_pages_need_nothing_the_csp_refuses(client):
    # No inline script, style or event handler: under "script-src 'self'; style-src 'self'"
    # a browser would refuse them (the browser tests run the pages under the policy).
    import re

    page = client.get("/admin/").get_data(as_text=True)
    assert not re.search(r"<script(?![^>]*\bsrc=)", page), "inline script"
    assert "<style" not in page and " style=" not in page
    assert not re.search(r"\son[a-z]+\s*=", page), "inline event handler"
    assert '"includeIndicatorStyles": false' in page  # htmx injects no <style>


def test_the_api_is_left_alone(client):
    r = client.get("/healthz")
    assert "Content-Security-Policy" not in r.headers


def test_admin_redirects_to_a_relative_location(client):
    # Not one built from the Host header, which the client chooses.
    for path, query in (("/admin", ""), ("/admin", "?x=1")):
        r = client.get(path + query, headers={"Host": "evil.example"})
        assert r.status_code in (301, 308), (path, r.status_code)
        location = r.headers["Location"]
        assert location == "/admin/" + query, location
        assert "evil" not in location and not location.startswith("//")
    r = client.get("/admin", headers={"Host": "evil.example"}, follow_redirects=True)
    assert r.status_code == 200 and b'id="login-form"' in r.data


def test_relative_location_never_names_a_host():
    from recsys.app import relative_location

    assert relative_location("http://evil.example/admin/?a=1") == "/admin/?a=1"
    assert relative_location("http://evil.example//evil.example/x/") == "/evil.example/x/"
    assert relative_location("https://h") == "/"
