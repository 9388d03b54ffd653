"""API keys added and revoked at run time (issue 30, 5g): a revoked key, stored or from
``RECSYS_API_KEYS``, is refused by every process within one poll interval, without a restart.
Proved with an injected clock: the refusal follows the clock, never a sleep."""

from __future__ import annotations

import json

import pytest

from recsys.web.auth import key_table
from tests.clocks import ManualClock
from tests.servicekit import ADMIN_TOKEN

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
EVENT = {"user_id": "u1", "item_id": "i1", "type": "view"}
POLL = 5.0  # long, so only the injected clock can make a poll due


def _post(app, key):
    return app.test_client().post("/v1/events", json=EVENT, headers={"X-API-Key": key})


def _next_poll(app, clock: ManualClock) -> None:
    """Move the worker's clock one poll interval on; the next request triggers the
    background re-read, and we wait for it to finish (an event, not a sleep)."""
    table = key_table(app)
    clock.advance(POLL)
    _post(app, "anything")  # the request that finds the table due
    assert table.poller.wait_idle(timeout=60)


@pytest.fixture
def apps(make_app):
    """Two "workers" (one app each: their own key tables) and the clock of the second."""
    admin = make_app(ADMIN_TOKEN=ADMIN_TOKEN, API_KEYS="k-conf=events:write")
    worker = make_app(API_KEYS="k-conf=events:write", CONFIG_POLL_SECONDS=POLL)
    key_table(worker).clock = clock = ManualClock()
    return admin, worker, clock


def test_a_revoked_stored_key_is_refused_within_one_poll_interval(apps):
    admin, worker, clock = apps
    r = admin.test_client().post(
        "/v1/admin/keys", json={"scopes": ["events:write"], "label": "mobile"}, headers=AUTH
    )
    assert r.status_code == 201, r.get_json()
    key, kid = r.get_json()["key"], r.get_json()["id"]
    assert _post(admin, key).status_code == 201  # the writing process sees it at once
    _next_poll(worker, clock)
    assert _post(worker, key).status_code == 201

    r = admin.test_client().delete(f"/v1/admin/keys/{kid}", headers=AUTH)
    assert r.status_code == 200 and r.get_json()["source"] == "stored"
    assert _post(admin, key).status_code == 401
    # Before the worker's next poll it still holds the old table; one interval later: refused.
    assert _post(worker, key).status_code == 201
    _next_poll(worker, clock)
    assert _post(worker, key).status_code == 401
    assert _post(worker, "k-conf").status_code == 201  # the others still work
    listing = admin.test_client().get("/v1/admin/keys", headers=AUTH).get_json()["keys"]
    assert [k["source"] for k in listing] == ["config"]
    assert key not in json.dumps(listing)
    audit = admin.test_client().get("/v1/admin/audit?action=api_key.", headers=AUTH).get_json()
    assert audit["total"] == 2 and key not in json.dumps(audit)


def test_a_configured_key_can_be_revoked_without_a_restart(apps):
    admin, worker, clock = apps
    assert _post(worker, "k-conf").status_code == 201
    r = admin.test_client().delete("/v1/admin/keys/k-conf", headers=AUTH)
    assert r.status_code == 200 and r.get_json()["source"] == "config", r.get_json()
    _next_poll(worker, clock)
    assert _post(worker, "k-conf").status_code == 401


def test_cli_keys_add_list_revoke(apps):
    admin, worker, clock = apps
    runner = admin.test_cli_runner()
    from recsys.cli.main import main

    r = runner.invoke(main, ["keys", "add", "--scope", "events:write", "--label", "etl"])
    assert r.exit_code == 0, r.output
    made = json.loads(r.output)
    _next_poll(worker, clock)
    assert _post(worker, made["key"]).status_code == 201
    r = runner.invoke(main, ["keys", "list"])
    assert r.exit_code == 0 and made["id"] in r.output and made["key"] not in r.output
    r = runner.invoke(main, ["keys", "revoke", made["id"]])
    assert r.exit_code == 0, r.output
    _next_poll(worker, clock)
    assert _post(worker, made["key"]).status_code == 401
    r = runner.invoke(main, ["keys", "revoke", "no-such-key"])
    assert r.exit_code == 1 and "no such key" in r.output


@pytest.mark.parametrize(
    "body",
    [{}, {"scopes": []}, {"scopes": ["delete"]}, {"scopes": ["read"], "label": "x" * 500}],
)
def test_bad_key_requests_are_422(apps, body):
    admin, _, _ = apps
    r = admin.test_client().post("/v1/admin/keys", json=body, headers=AUTH)
    assert r.status_code == 422, r.get_json()
    assert admin.test_client().get("/v1/admin/audit", headers=AUTH).get_json()["total"] == 0


def test_revoking_every_stored_key_keeps_writes_closed(make_app):
    app = make_app(ADMIN_TOKEN=ADMIN_TOKEN)
    client = app.test_client()
    assert client.post("/v1/events", json=EVENT).status_code == 201  # no keys: open
    kid = client.post("/v1/admin/keys", json={"scopes": ["read"]}, headers=AUTH).get_json()["id"]
    assert client.post("/v1/events", json=EVENT).status_code == 401
    assert client.delete(f"/v1/admin/keys/{kid}", headers=AUTH).status_code == 200
    assert client.post("/v1/events", json=EVENT).status_code == 401
