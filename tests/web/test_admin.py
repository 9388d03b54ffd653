"""Admin settings endpoints: auth, validation, audit, config version, cross-worker effect."""

from __future__ import annotations

import pytest

from tests.servicekit import ADMIN_TOKEN

pytestmark = [pytest.mark.postgres]
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def app(make_app):
    return make_app(ADMIN_TOKEN=ADMIN_TOKEN, CONFIG_POLL_SECONDS=0.05)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.mark.parametrize(
    "method, url",
    [
        ("get", "/v1/admin/strategies"),
        ("patch", "/v1/admin/strategies"),
        ("get", "/v1/admin/routing"),
        ("patch", "/v1/admin/routing"),
        ("get", "/v1/admin/audit"),
    ],
)
def test_auth_required(client, method, url):
    r = getattr(client, method)(url, json={})
    assert r.status_code == 401 and r.get_json()["code"] == 401
    r = getattr(client, method)(url, json={}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = getattr(client, method)(url, json={}, headers={"Authorization": ADMIN_TOKEN})
    assert r.status_code == 401  # not a bearer credential


def test_admin_disabled_without_token(make_app):
    client = make_app(ADMIN_TOKEN=None).test_client()
    r = client.get("/v1/admin/strategies", headers=AUTH)
    assert r.status_code == 403 and "disabled" in r.get_json()["description"]


def test_get_defaults(client):
    body = client.get("/v1/admin/strategies", headers=AUTH).get_json()
    assert body["strategies"]["als"] == {"enabled": True, "weight": 1.0, "overridden": []}
    body = client.get("/v1/admin/routing", headers=AUTH).get_json()
    assert body["routing"]["cold_threshold"] == 5 and body["overridden"] == []


def test_patch_strategies_audited_and_versioned(app, client):
    v0 = client.get("/v1/admin/strategies", headers=AUTH).get_json()["config_version"]
    r = client.patch(
        "/v1/admin/strategies",
        json={"als": {"enabled": False}, "ease": {"weight": 0.25}},
        headers={**AUTH, "X-Actor": "alice"},
    )
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["before"] == {
        "als": {"enabled": True, "weight": 1.0},
        "ease": {"enabled": True, "weight": 1.0},
    }
    assert body["after"]["als"]["enabled"] is False and body["after"]["ease"]["weight"] == 0.25
    assert body["config_version"] == v0 + 1
    assert body["strategies"]["ease"]["overridden"] == ["weight"]
    # The weight override survives a later enabled toggle; untouched fields keep defaults.
    client.patch("/v1/admin/strategies", json={"ease": {"enabled": False}}, headers=AUTH)
    s = client.get("/v1/admin/strategies", headers=AUTH).get_json()["strategies"]
    assert s["ease"] == {"enabled": False, "weight": 0.25, "overridden": ["enabled", "weight"]}
    audit = client.get("/v1/admin/audit?limit=1", headers=AUTH).get_json()
    assert audit["total"] == 2 and len(audit["entries"]) == 1
    first = client.get("/v1/admin/audit?offset=1", headers=AUTH).get_json()["entries"][0]
    assert first["actor"] == "alice" and first["action"] == "strategies.update"
    assert first["before"]["als"]["enabled"] is True and first["after"]["als"]["enabled"] is False
    assert first["at"].endswith("Z")


def test_runtime_rows_do_not_override_weights(app, client):
    """A strategy_settings row created by the model runtime (load_mode only) keeps defaults."""
    from recsys.store import StrategySetting, session_scope

    with session_scope(app) as s:
        s.add(StrategySetting(name="popular", load_mode="lazy"))
    app.extensions["recsys.settings"].bump_version("test")
    body = client.get("/v1/admin/strategies", headers=AUTH).get_json()
    assert body["strategies"]["popular"]["weight"] == 0.3


@pytest.mark.parametrize(
    "payload",
    [
        {},
        [],
        {"nope": {"enabled": False}},
        {"als": {"enabled": "no"}},
        {"als": {"weight": -1}},
        {"als": {"weight": "heavy"}},
        {"als": {"colour": "red"}},
        {"als": {}},
        {"als": 3},
    ],
)
def test_patch_strategies_rejects_bad_input(app, client, payload):
    r = client.patch("/v1/admin/strategies", json=payload, headers=AUTH)
    assert r.status_code == 422 and r.get_json()["description"]
    assert client.get("/v1/admin/audit", headers=AUTH).get_json()["total"] == 0


def test_patch_routing(client):
    r = client.patch("/v1/admin/routing", json={"cold_threshold": 2, "blend": "rrf"}, headers=AUTH)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["before"] == {"blend": "weighted", "cold_threshold": 5}
    assert body["routing"]["cold_threshold"] == 2 and body["overridden"] == [
        "blend",
        "cold_threshold",
    ]
    entry = client.get("/v1/admin/audit?action=routing.update", headers=AUTH).get_json()
    assert entry["total"] == 1


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"cold_threshold": -1},
        {"blend": "max"},
        {"warm_strategies": ["als", "magic"]},
        {"max_per_category": 0},
        {"unknown": 1},
        {"seen_types": ["bought"]},
    ],
)
def test_patch_routing_rejects_bad_input(client, payload):
    r = client.patch("/v1/admin/routing", json=payload, headers=AUTH)
    assert r.status_code == 422 and r.get_json()["description"]


def test_audit_query_validation(client):
    assert client.get("/v1/admin/audit?limit=0", headers=AUTH).status_code == 422
    assert client.get("/v1/admin/audit?limit=x", headers=AUTH).status_code == 422


def test_change_reaches_another_worker_within_one_poll_interval(make_app):
    """Two apps on one database stand for two workers/servers sharing the SQL store; the
    other's clock is moved by hand (one poll interval), not waited for."""
    a = make_app(ADMIN_TOKEN=ADMIN_TOKEN, CONFIG_POLL_SECONDS=0.5)
    b = make_app(ADMIN_TOKEN=ADMIN_TOKEN, CONFIG_POLL_SECONDS=0.5)
    from recsys.serving.settings_store import get_settings
    from tests.clocks import ManualClock

    sb = get_settings(b)
    sb.clock = clock = ManualClock()
    assert sb.config().cold_threshold == 5
    r = a.test_client().patch("/v1/admin/routing", json={"cold_threshold": 1}, headers=AUTH)
    assert r.status_code == 200
    assert sb.config().cold_threshold == 5  # within the interval: the view it polled
    clock.advance(0.5)  # one poll interval later: the next request starts a poll
    sb.config()
    assert sb.poller.wait_idle(30)
    assert sb.config().cold_threshold == 1


def test_reset_strategy_override_to_default(app, client):
    r = client.patch(
        "/v1/admin/strategies", json={"als": {"weight": 0.25, "enabled": False}}, headers=AUTH
    )
    assert r.status_code == 200
    r = client.delete("/v1/admin/strategies/als?field=weight", headers=AUTH)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["before"] == {"als": {"weight": 0.25}} and body["after"] == {"als": {"weight": 1.0}}
    assert body["strategies"]["als"] == {"enabled": False, "weight": 1.0, "overridden": ["enabled"]}
    r = client.delete("/v1/admin/strategies/als", headers=AUTH)
    assert r.get_json()["strategies"]["als"] == {"enabled": True, "weight": 1.0, "overridden": []}
    entries = client.get("/v1/admin/audit?action=strategies.reset", headers=AUTH).get_json()
    assert [e["target"] for e in entries["entries"]] == ["als:enabled,weight", "als:weight"]


def test_reset_rejects_bad_names(client):
    r = client.delete("/v1/admin/strategies/nope", headers=AUTH)
    assert r.status_code == 404 and "unknown strategy" in r.get_json()["description"]
    r = client.delete("/v1/admin/strategies/als?field=colour", headers=AUTH)
    assert r.status_code == 422
    r = client.delete("/v1/admin/routing/nope", headers=AUTH)
    assert r.status_code == 422
    assert client.delete("/v1/admin/strategies/als").status_code == 401


def test_reset_routing_key(client):
    client.patch("/v1/admin/routing", json={"cold_threshold": 2, "blend": "rrf"}, headers=AUTH)
    r = client.delete("/v1/admin/routing/blend", headers=AUTH)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["before"] == {"blend": "rrf"} and body["after"] == {"blend": "weighted"}
    assert body["routing"]["cold_threshold"] == 2 and body["overridden"] == ["cold_threshold"]


def test_audit_filters(client):
    client.patch("/v1/admin/strategies", json={"bpr": {"weight": 0.2}}, headers=AUTH)
    client.patch(
        "/v1/admin/routing", json={"cold_threshold": 3}, headers={**AUTH, "X-Actor": "alice"}
    )
    got = client.get("/v1/admin/audit?actor=alice", headers=AUTH).get_json()
    assert [e["action"] for e in got["entries"]] == ["routing.update"] and got["total"] == 1
    got = client.get("/v1/admin/audit?target=bp", headers=AUTH).get_json()
    assert [e["target"] for e in got["entries"]] == ["bpr"]
    got = client.get("/v1/admin/audit?action=strategies.", headers=AUTH).get_json()
    assert [e["action"] for e in got["entries"]] == ["strategies.update"]
