"""Online experiments: hashing assignment, admin API, variant serving, exposures, attribution."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.serving import experiments as ex

AUTH = {"Authorization": "Bearer test-admin-token"}
POPULAR_ONLY = {"routing": {"cold_strategies": ["popular"], "warm_strategies": ["popular"]}}


# -- assignment (pure) ---------------------------------------------------------------------------
def test_assignment_is_stable_uniform_and_respects_weights():
    variants = [{"name": "A", "weight": 0.2}, {"name": "B", "weight": 0.5}]
    users = [f"user-{i}" for i in range(20000)]
    first = [ex.assign("exp1", variants, u) for u in users]
    assert first == [ex.assign("exp1", variants, u) for u in users]  # deterministic
    counts = {v: first.count(v) for v in ("A", "B", None)}
    assert abs(counts["A"] / len(users) - 0.2) < 0.015
    assert abs(counts["B"] / len(users) - 0.5) < 0.015
    assert abs(counts[None] / len(users) - 0.3) < 0.015  # the rest is not enrolled


def test_assignments_are_independent_across_experiments():
    users = [f"u{i}" for i in range(20000)]
    a = np.array([ex.bucket("exp-one", u) < 0.5 for u in users])
    b = np.array([ex.bucket("exp-two", u) < 0.5 for u in users])
    # Under independence each of the four cells holds about a quarter of the users.
    for x in (True, False):
        for y in (True, False):
            assert abs(np.mean((a == x) & (b == y)) - 0.25) < 0.015


@pytest.mark.parametrize(
    "body, needle",
    [
        ({"name": "x y", "variants": []}, "name"),
        ({"name": "e", "variants": [{"name": "A", "weight": 1.0}]}, "2 to 20"),
        (
            {"name": "e", "variants": [{"name": "A", "weight": 0.7}, {"name": "B", "weight": 0.7}]},
            "sum",
        ),
        (
            {"name": "e", "variants": [{"name": "A", "weight": 0.5}, {"name": "A", "weight": 0.5}]},
            "repeated",
        ),
        (
            {
                "name": "e",
                "variants": [
                    {"name": "A", "weight": 0.5},
                    {"name": "B", "weight": 0.5, "config": {"routing": {"blend": "magic"}}},
                ],
            },
            "blend",
        ),
        (
            {
                "name": "e",
                "variants": [{"name": "A", "weight": 0.5}, {"name": "B", "weight": 0.5}],
                "start_at": "2026-01-02",
                "stop_at": "2026-01-01",
            },
            "stop_at",
        ),
    ],
)
def test_invalid_definitions_are_refused(body, needle):
    with pytest.raises(ex.ExperimentError, match=needle):
        ex.validate_definition(body)


# -- over HTTP with real PostgreSQL, Redis and trained models -------------------------------------
pg = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def client(served_app):
    return served_app.test_client()


def _create(client, name="ab1", weights=(0.5, 0.5)):
    body = {
        "name": name,
        "variants": [
            {"name": "control", "weight": weights[0], "config": {}},
            {"name": "popular", "weight": weights[1], "config": POPULAR_ONLY},
        ],
    }
    return client.post("/v1/admin/experiments", json=body, headers=AUTH)


@pytest.mark.postgres
@pytest.mark.redis
def test_admin_endpoints_need_the_token_and_validate(client):
    assert client.post("/v1/admin/experiments", json={}).status_code == 401
    r = client.post("/v1/admin/experiments", json={}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = client.post("/v1/admin/experiments", json={"name": "bad name!"}, headers=AUTH)
    assert r.status_code == 422 and "name" in r.get_json()["description"]
    assert _create(client).status_code == 201
    r = _create(client)
    assert r.status_code == 409
    listed = client.get("/v1/admin/experiments", headers=AUTH).get_json()["experiments"]
    assert [e["name"] for e in listed] == ["ab1"]
    assert client.get("/v1/admin/experiments/nope", headers=AUTH).status_code == 404
    audit = client.get("/v1/admin/audit", headers=AUTH).get_json()
    assert any(e["action"] == "experiment.create" for e in audit["entries"])


@pytest.mark.postgres
@pytest.mark.redis
def test_variants_serve_their_config_and_exposures_are_attributed(client, served_app):
    from sqlalchemy import func, select

    from recsys.store import session_scope
    from recsys.store.models import Exposure

    assert _create(client).status_code == 201
    users = [f"u{i}" for i in range(7)] + [f"new{i}" for i in range(13)]
    served = {}
    for u in users:
        body = client.get(f"/v1/users/{u}/recommendations?n=3&explain=true").get_json()
        assigned = client.get(f"/v1/users/{u}/experiments").get_json()
        # The response says which variant served it, and agrees with the assignment listing.
        assert body["experiment"] == {
            "name": "ab1",
            "variant": ex.assign(
                "ab1", [{"name": "control", "weight": 0.5}, {"name": "popular", "weight": 0.5}], u
            ),
        }
        assert assigned["serving"] == body["experiment"]
        assert assigned["assignments"] == [body["experiment"]]
        if body["experiment"]["variant"] == "popular":
            for item in body["items"]:
                assert set(item["sources"]) == {"popular"}
        served[u] = body
    assert {b["experiment"]["variant"] for b in served.values()} == {"control", "popular"}

    # A second request is a cache hit, of the same variant, and is still an exposure.
    again = client.get("/v1/users/u0/recommendations?n=3&explain=true").get_json()
    assert again["cached"] and again["experiment"] == served["u0"]["experiment"]
    with session_scope(served_app) as s:
        n_exp = s.scalar(select(func.count()).select_from(Exposure))
    assert n_exp == len([b for b in served.values() if b["items"]]) + 1

    # Clicks on shown items are attributed; a click on an item never shown is not.
    warm = [u for u in users if u.startswith("u") and served[u]["items"]]
    u_click, u_buy = warm[0], warm[1]
    shown = [i["item_id"] for i in served[u_click]["items"]]
    never = next(i for i in (f"i{k}" for k in range(10)) if i not in shown)
    events = [
        {"user_id": u_click, "item_id": shown[0], "type": "click"},
        {"user_id": u_click, "item_id": never, "type": "click"},
        {"user_id": u_buy, "item_id": served[u_buy]["items"][0]["item_id"], "type": "purchase"},
    ]
    assert client.post("/v1/events", json=events).status_code == 201
    rep = client.get("/v1/admin/experiments/ab1/report", headers=AUTH).get_json()
    v_click = served[u_click]["experiment"]["variant"]
    v_buy = served[u_buy]["experiment"]["variant"]
    assert rep["variants"][v_click]["exposures_clicked"] >= 1
    assert rep["variants"][v_buy]["exposures_converted"] >= 1
    assert rep["events"]["stored"] == {"click": 2, "purchase": 1}
    assert rep["events"]["attributed"] == {"click": 1, "purchase": 1}
    assert rep["events"]["unattributed"] == {"click": 1}
    total_exposures = sum(v["exposures"] for v in rep["variants"].values())
    assert total_exposures == n_exp
    for v in rep["variants"].values():
        lo, hi = v["click_through_ci"]
        assert lo <= v["click_through"] <= hi

    # The CLI prints the same report.
    from recsys.cli.main import main

    result = served_app.test_cli_runner().invoke(main, ["experiments", "report", "ab1"])
    assert result.exit_code == 0, result.output
    assert "| control |" in result.output and "| popular |" in result.output

    # Stopping: users go back to the normal configuration, no experiment field.
    assert client.post("/v1/admin/experiments/ab1/stop", headers=AUTH).status_code == 200
    body = client.get("/v1/users/u0/recommendations?n=3").get_json()
    assert "experiment" not in body or body["experiment"] is None
    assert client.get("/v1/users/u0/experiments").get_json()["assignments"] == []
