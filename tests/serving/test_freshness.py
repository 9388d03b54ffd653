"""The freshness promise (docs/freshness.md): a list served after an event was acknowledged
reflects it, with refresh-ahead on or off, whether the refresh has run, is running or was
overtaken by a newer event. Purchases are "seen", so a list that reflects a purchase no longer
holds the item. No sleeps: the refresher is held with events and awaited with ``wait_idle``.
"""

from __future__ import annotations

import threading

import pytest

from recsys.config import update_config
from recsys.serving.cache import get_cache
from recsys.serving.refresh import get_refresher, parse_ask

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
URL = "/v1/users/u6/recommendations?n=3"


def _items(r) -> list[str]:
    assert r.status_code == 200, r.get_data(as_text=True)
    return [it["item_id"] for it in r.get_json()["items"]]


def _buy(client, item: str, eid: str) -> None:
    r = client.post(
        "/v1/events", json={"id": eid, "user_id": "u6", "item_id": item, "type": "purchase"}
    )
    assert r.status_code == 201


@pytest.fixture
def refreshing(served_app):
    update_config(served_app, REFRESH_AHEAD=True)
    refresher = get_refresher(served_app)
    assert refresher is not None
    yield served_app, refresher
    assert refresher.wait_idle()


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("refresh", [True, False])
def test_a_list_after_an_acknowledged_purchase_never_holds_it(served_app, fast, refresh):
    update_config(served_app, FAST_CACHE_PATH=fast, REFRESH_AHEAD=refresh)
    client = served_app.test_client()
    for k in range(3):
        shown = _items(client.get(URL))
        _buy(client, shown[0], f"buy-{fast}-{refresh}-{k}")
        # Straight after the acknowledgement: whether the refresh has stored yet or not.
        assert shown[0] not in _items(client.get(URL))
    if refresh:
        assert get_refresher(served_app).wait_idle()


@pytest.mark.parametrize("explain", [False, True])
def test_refresh_ahead_makes_the_next_read_a_hit_with_the_list_a_read_computes(refreshing, explain):
    app, refresher = refreshing
    client = app.test_client()
    url = URL + ("&explain=true" if explain else "")
    shown = _items(client.get(url))  # a miss: computes, stores, remembers the request
    ask = get_cache(app).backend.mget([get_cache(app).user_key("uask", "u6")])[0]
    assert parse_ask(ask) == {"n": 3, "o": 0, "c": None, "x": [], "e": explain}
    _buy(client, shown[0], f"ahead-{explain}")
    assert refresher.wait_idle()
    hit = client.get(url)
    assert hit.get_json()["cached"] is True and shown[0] not in _items(hit)
    # The same answer as a read computes from the same history (explanations included).
    assert get_cache(app).invalidate_users(["u6"])
    computed = client.get(url)
    assert computed.get_json()["cached"] is False
    assert {**computed.get_json(), "cached": True} == hit.get_json()


def test_a_read_while_the_refresh_runs_computes_a_fresh_list(refreshing):
    app, refresher = refreshing
    client = app.test_client()
    entered, go = threading.Event(), threading.Event()
    compute = refresher.compute

    def held(jobs):
        entered.set()
        assert go.wait(30)
        compute(jobs)

    refresher.compute = held
    try:
        first = _items(client.get(URL))
        _buy(client, first[0], "held-1")
        assert entered.wait(30)  # the refresh has started and is held
        second = _items(client.get(URL))  # computed by the read
        assert first[0] not in second
        _buy(client, second[0], "held-2")  # a newer event while the first refresh is held
        third = _items(client.get(URL))
        assert first[0] not in third and second[0] not in third
        # That read computed the list the queued refresh would have: the job is dropped.
        assert refresher.discarded == 1
    finally:
        go.set()
    assert refresher.wait_idle()
    last = _items(client.get(URL))
    assert first[0] not in last and second[0] not in last


def test_an_entry_under_an_older_token_is_never_served(served_app):
    cache = get_cache(served_app)
    context = {"n": 3, "test": "freshness"}
    asks: list = []
    cache.store(
        cache.lookup("u6", context), b"warm\n{}", b'{"n":3,"o":0,"c":null,"x":[],"e":false}'
    )
    assert cache.invalidate_users(["u6"], asks)  # an event: token T1, the request read back
    [(user, old_token, ask)] = asks
    assert user == "u6" and parse_ask(ask)["n"] == 3
    assert cache.invalidate_users(["u6"])  # a newer event: token T2
    # A refresh computed under T1 that stores after T2 was set: stale, never served.
    assert cache.store_entries([("u6", context, old_token, b"warm\n{}")])
    assert cache.peek_raw("u6", context) is None
    new_token = cache.backend.mget([cache.token_key("u6")])[0]
    assert cache.store_entries([("u6", context, new_token, b"warm\n{}")])
    assert cache.peek_raw("u6", context) == b"warm\n{}"


def test_many_histories_in_one_statement_are_each_users_history(served_app):
    from recsys.serving.history import get_history_reader, load_many

    reader = get_history_reader(served_app)
    users = ["u6", "nobody", "u1", "u6x", "u2"]
    many = load_many(reader, users, limit=4)
    assert list(many) == users
    for u in users:
        one = reader.load(u, 4)
        assert many[u].items == one.items and many[u].types == one.types, u
        assert many[u].values == one.values and many[u].ts == one.ts, u
    assert many["u6"].items and not many["nobody"].items
