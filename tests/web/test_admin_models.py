"""Admin model endpoints added with the operator console: unknown names leave no trace,
per-model stats, and the metrics that go with models, events and degraded answers."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import REGISTRY

from recsys.config import update_config
from tests.servicekit import ADMIN_TOKEN

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _metric_labels(client, name: str) -> set[str]:
    text = client.get("/metrics").get_data(as_text=True)
    return {line for line in text.splitlines() if line.startswith(name + "{")}


@pytest.mark.parametrize("action", ["activate", "rollback", "load", "unload"])
def test_unknown_strategy_is_404_and_leaves_no_phantom(served_app, action):
    from recsys.models.runtime import get_runtime

    client = served_app.test_client()
    r = client.post(f"/v1/admin/models/ghost/{action}", json={"version": "v1"}, headers=AUTH)
    assert r.status_code == 404, r.get_json()
    assert "ghost" not in {row["strategy"] for row in get_runtime(served_app).status()}
    body = client.get("/v1/admin/models", headers=AUTH).get_json()
    assert "ghost" not in {row["strategy"] for row in body["runtime"]}
    assert not [x for x in _metric_labels(client, "recsys_model_load") if "ghost" in x]
    assert "unknown strategy 'ghost'" in r.get_json()["description"]
    assert client.get("/v1/admin/models/ghost", headers=AUTH).status_code == 404


def test_unknown_version_is_404_and_counts_no_load_failure(served_app):
    from recsys.models.runtime import get_runtime

    client = served_app.test_client()
    before = REGISTRY.get_sample_value("recsys_model_load_failures_total", {"strategy": "ease"})
    r = client.post("/v1/admin/models/ease/activate", json={"version": "v999"}, headers=AUTH)
    assert r.status_code == 404 and "unknown version" in r.get_json()["description"]
    after = REGISTRY.get_sample_value("recsys_model_load_failures_total", {"strategy": "ease"})
    assert after == before
    row = next(x for x in get_runtime(served_app).status() if x["strategy"] == "ease")
    assert row["error"] is None and row["state"] == "loaded"


def test_strategy_view_has_versions_and_stats(served_app):
    client = served_app.test_client()
    for _ in range(3):
        client.get("/v1/users/u6/recommendations?n=3&exclude=i0")
    version = served_app.extensions["recsys.model_versions"]["ease"]
    body = client.get("/v1/admin/models/ease", headers=AUTH).get_json()
    assert body["active_version"] == version and body["rollback_target"] is None
    assert [v["version"] for v in body["versions"]] == [version]
    assert body["runtime"]["state"] == "loaded"
    stats = body["stats"]
    assert stats["loads"] >= 1 and stats["scored"] >= 1
    assert stats["latency_ms"]["p50"] is not None and stats["latency_ms"]["p50"] > 0
    assert stats["load_seconds_mean"] > 0 and stats["load_failures"] >= 0


def test_degraded_answers_counted_by_reason(served_app):
    from recsys.serving.gate import scoring_gate

    client = served_app.test_client()
    update_config(served_app, SCORING_SLOTS=1, DEADLINE_MS=60)
    labels = {"reason": "scoring_timeout"}
    before = REGISTRY.get_sample_value("recsys_degraded_answers_total", labels) or 0
    gate = scoring_gate(1)
    assert gate.acquire()
    try:
        body = client.get("/v1/users/u6/recommendations?n=3").get_json()
    finally:
        gate.release()
    assert body["degraded"] is True
    assert REGISTRY.get_sample_value("recsys_degraded_answers_total", labels) == before + 1
    body = client.get("/v1/users/u6/recommendations?n=3").get_json()
    assert body["degraded"] is False
    assert REGISTRY.get_sample_value("recsys_degraded_answers_total", labels) == before + 1


def test_events_ingested_by_type_count_stored_events_only(served_app):
    client = served_app.test_client()

    def count(t):
        return REGISTRY.get_sample_value("recsys_events_ingested_total", {"type": t}) or 0

    before = {t: count(t) for t in ("view", "cart")}
    events = [
        {"id": "m-1", "user_id": "u1", "item_id": "i1", "type": "view"},
        {"id": "m-2", "user_id": "u1", "item_id": "i2", "type": "view"},
        {"id": "m-3", "user_id": "u1", "item_id": "i2", "type": "cart"},
    ]
    assert client.post("/v1/events", json=events).status_code == 201
    assert client.post("/v1/events", json=events).status_code == 200  # duplicates
    assert count("view") == before["view"] + 2 and count("cart") == before["cart"] + 1


def test_every_admin_change_reaches_the_application_log(served_app, caplog):
    from tests.servicekit import train_and_register

    client = served_app.test_client()
    train_and_register(served_app)  # a second ease version to roll back from
    caplog.set_level(logging.INFO, logger="recsys.ops.audit")
    headers = {**AUTH, "X-Actor": "erin"}
    assert client.post("/v1/admin/models/ease/rollback", headers=headers).status_code == 200
    assert client.post("/v1/admin/models/ease/unload", headers=headers).status_code == 200
    assert client.delete("/v1/admin/routing/blend", headers=headers).status_code == 200
    got = [(r.action, r.target, r.actor) for r in caplog.records if r.name == "recsys.ops.audit"]
    assert ("model.rollback", "ease", "erin") in got
    assert ("model.unload", "ease", "erin") in got
    assert ("routing.reset", "blend", "erin") in got
    # A refused change is not logged as made.
    caplog.clear()
    assert client.post("/v1/admin/models/ghost/rollback", headers=headers).status_code == 404
    assert not [r for r in caplog.records if r.name == "recsys.ops.audit"]
