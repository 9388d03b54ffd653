"""Admin input bounds (issue 30, item 4): every admin-settable value is checked against what
serving can do (recsys.core.config's bounds); a bad value is a 422 naming the key and the rule,
and changes nothing: the config version, the audit log and the served lists stay as they were.
"""

from __future__ import annotations

import pytest

from recsys.core.config import (
    MAX_CANDIDATES,
    MAX_COLD_THRESHOLD,
    MAX_PER_CATEGORY,
    MAX_ROUTE_HISTORY,
    MAX_RRF_K,
    MAX_WEIGHT,
    bounds,
)
from strategies import STRATEGY_NAMES
from tests.servicekit import ADMIN_TOKEN

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ROUTE = {"name": "all", "max_history": None, "weights": {"ease": 1.0}}

# (key named in the error, routing patch): one family of bounds per group.
BAD_ROUTING = {
    "strategy lists: repeated": ("warm_strategies", {"warm_strategies": ["ease"] * 10_000}),
    "strategy lists: a duplicate": ("cold_strategies", {"cold_strategies": ["popular", "popular"]}),
    "strategy lists: unknown": ("warm_strategies", {"warm_strategies": ["ease", "magic"]}),
    "strategy lists: empty": ("warm_strategies", {"warm_strategies": []}),
    "strategy lists: too long": (
        "warm_strategies",
        {"warm_strategies": [*STRATEGY_NAMES, "ease"]},
    ),
    "thresholds: negative": ("cold_threshold", {"cold_threshold": -1}),
    "thresholds: too high": ("cold_threshold", {"cold_threshold": MAX_COLD_THRESHOLD + 1}),
    "rrf_k: zero": ("rrf_k", {"rrf_k": 0}),
    "rrf_k: too high": ("rrf_k", {"rrf_k": MAX_RRF_K + 1}),
    "max_per_category: zero": ("max_per_category", {"max_per_category": 0}),
    "max_per_category: too high": ("max_per_category", {"max_per_category": MAX_PER_CATEGORY + 1}),
    "candidates: zero": ("candidates_per_strategy", {"candidates_per_strategy": 0}),
    "candidates: too many": (
        "candidates_per_strategy",
        {"candidates_per_strategy": MAX_CANDIDATES + 1},
    ),
    "seen_types: repeated": ("seen_types", {"seen_types": ["purchase"] * 100}),
    "routes: too many": ("routes", {"routes": [ROUTE] * 9}),
    "routes: weight too high": (
        "weights",
        {"routes": [{**ROUTE, "weights": {"ease": MAX_WEIGHT * 2}}]},
    ),
    "routes: unknown strategy": ("weights", {"routes": [{**ROUTE, "weights": {"magic": 1}}]}),
    "routes: history too long": (
        "max_history",
        {"routes": [{**ROUTE, "name": "a", "max_history": MAX_ROUTE_HISTORY + 1}, ROUTE]},
    ),
}

BAD_STRATEGIES = {
    "weights: negative": ("weight", {"ease": {"weight": -0.1}}),
    "weights: too high": ("weight", {"ease": {"weight": MAX_WEIGHT + 1}}),
    "weights: not a number": ("weight", {"ease": {"weight": "1e999"}}),
    "enabled: not a boolean": ("enabled", {"ease": {"enabled": "yes"}}),
    "names: unknown": ("magic", {"magic": {"weight": 1}}),
}


def _state(client) -> tuple:
    """What a rejected change must leave alone: the config version, the settings, the audit
    log and the lists served to a warm and a cold user."""
    strategies = client.get("/v1/admin/strategies", headers=AUTH).get_json()
    routing = client.get("/v1/admin/routing", headers=AUTH).get_json()
    audit = client.get("/v1/admin/audit", headers=AUTH).get_json()["total"]
    lists = []
    for user in ("u1", "nobody"):
        r = client.get(f"/v1/users/{user}/recommendations?n=5")
        assert r.status_code == 200, r.get_json()
        body = r.get_json()
        lists.append(([x["item_id"] for x in body["items"]], body.get("degraded")))
    return strategies, routing, audit, lists


@pytest.fixture
def client(served_app):
    return served_app.test_client()


@pytest.mark.fault
@pytest.mark.parametrize("case", sorted(BAD_ROUTING))
def test_bad_routing_is_422_and_changes_nothing(client, case):
    key, patch = BAD_ROUTING[case]
    before = _state(client)
    assert before[3][0][0], "the warm user gets a list"
    r = client.patch("/v1/admin/routing", json=patch, headers=AUTH)
    assert r.status_code == 422, r.get_json()
    assert key in str(r.get_json()), r.get_json()  # names the key (and the rule)
    assert _state(client) == before


@pytest.mark.fault
@pytest.mark.parametrize("case", sorted(BAD_STRATEGIES))
def test_bad_strategy_settings_are_422_and_change_nothing(client, case):
    key, patch = BAD_STRATEGIES[case]
    before = _state(client)
    r = client.patch("/v1/admin/strategies", json=patch, headers=AUTH)
    assert r.status_code == 422, r.get_json()
    assert key in str(r.get_json()), r.get_json()
    assert _state(client) == before


@pytest.mark.fault
@pytest.mark.parametrize(
    "case", ["strategy lists: repeated", "rrf_k: too high", "routes: too many"]
)
def test_bad_experiment_variant_is_422_and_creates_nothing(client, case):
    key, patch = BAD_ROUTING[case]
    body = {
        "name": "bounds",
        "variants": [
            {"name": "a", "weight": 0.5, "config": {}},
            {"name": "b", "weight": 0.5, "config": {"routing": patch}},
        ],
    }
    before = _state(client)
    r = client.post("/v1/admin/experiments", json=body, headers=AUTH)
    assert r.status_code == 422, r.get_json()
    assert f"routing.{key}" in r.get_json()["description"] or key in r.get_json()["description"]
    assert client.get("/v1/admin/experiments", headers=AUTH).get_json()["experiments"] == []
    assert _state(client) == before


@pytest.mark.fault
@pytest.mark.parametrize(
    "url,form,key",
    [
        ("/admin/ui/strategies/ease/weight", {"weight": str(MAX_WEIGHT * 10)}, "weight"),
        ("/admin/ui/strategies/ease/weight", {"weight": "nan"}, "weight"),
        ("/admin/ui/routing", {"warm_strategies": "ease," * 50}, "warm_strategies"),
        ("/admin/ui/routing", {"cold_strategies": "popular,magic"}, "cold_strategies"),
        ("/admin/ui/routing", {"cold_threshold": str(MAX_COLD_THRESHOLD + 1)}, "cold_threshold"),
    ],
)
def test_console_forms_show_the_error_and_change_nothing(client, url, form, key):
    before = _state(client)
    r = client.post(url, data=form, headers=AUTH)
    assert r.status_code in (200, 422)
    assert key in r.get_data(as_text=True)
    assert _state(client) == before


def test_a_value_on_the_bound_is_accepted(client):
    r = client.patch(
        "/v1/admin/routing",
        json={"warm_strategies": list(STRATEGY_NAMES), "rrf_k": MAX_RRF_K},
        headers=AUTH,
    )
    assert r.status_code == 200, r.get_json()
    r = client.patch("/v1/admin/strategies", json={"ease": {"weight": MAX_WEIGHT}}, headers=AUTH)
    assert r.status_code == 200, r.get_json()


def test_the_docs_list_every_bound():
    """docs/admin-bounds.md's table is generated from ``bounds()`` (scripts/gen_admin_bounds.py)
    and up to date."""
    import importlib.util
    import os

    from recsys.paths import PROJECT_ROOT

    spec = importlib.util.spec_from_file_location(
        "gen_admin_bounds", os.path.join(PROJECT_ROOT, "scripts", "gen_admin_bounds.py")
    )
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    with open(os.path.join(PROJECT_ROOT, "docs", "admin-bounds.md")) as f:
        text = f.read()
    assert gen.render(text) == text, "run scripts/gen_admin_bounds.py"
    for key, rule in bounds():
        assert f"`{key}`" in text and rule.replace("|", "\\|") in text, (key, rule)


def test_console_inputs_carry_the_declared_bounds(client):
    html = client.get("/admin/ui/strategies", headers=AUTH).get_data(as_text=True)
    assert f'max="{MAX_WEIGHT}"' in html
    assert f'max="{MAX_COLD_THRESHOLD}"' in html
