"""Incremental user state (``recsys.serving.cache.histories``): the history a miss reads from
Redis is the one SQL holds, after events appended by the event write, and it is never used
when it could be out of date (another token, an older event, more events than it may hold).
"""

from __future__ import annotations

import pytest

from recsys.config import get_config, update_config
from recsys.serving.cache import get_cache, histories
from recsys.serving.history import load_history

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
USER = "u5"
URL = f"/v1/users/{USER}/recommendations?n=3"


def _kept(app):
    """The user's kept history as a miss would read it now (None: none valid)."""
    cache = get_cache(app)
    limit = get_config(app).history_max_events
    with app.app_context():
        from recsys.serving.settings_store import get_settings

        epoch = get_settings(app).versions().epoch
    key = cache.history_key(USER, epoch, limit)
    token, raw = cache.backend.mget([cache.token_key(USER), key])
    return histories.decode(raw, token, USER, limit), raw


def _sql(app):
    with app.app_context():
        return load_history(app, USER, get_config(app).history_max_events)


def _post(client, events):
    r = client.post("/v1/events", json=events)
    assert r.status_code == 201, r.get_json()


def _same(a, b) -> None:
    assert (a.items, a.types, a.values, a.ts) == (b.items, b.types, b.values, b.ts)


@pytest.fixture
def app(served_app):
    update_config(served_app, REFRESH_AHEAD=False)
    return served_app


def test_events_are_appended_and_the_kept_history_is_what_sql_holds(app):
    client = app.test_client()
    assert client.get(URL).status_code == 200  # a miss keeps the history it read from SQL
    kept, _ = _kept(app)
    assert kept is not None
    _same(kept, _sql(app))
    for k in range(3):
        _post(client, [{"user_id": USER, "item_id": f"i{k}", "type": "view"}])
        kept, _ = _kept(app)
        assert kept is not None, "an event newer than the history is appended"
        _same(kept, _sql(app))
    # Several events of one user in one request, with a rating value: SQL's order.
    _post(
        client,
        [
            {"user_id": USER, "item_id": "i3", "type": "rating", "value": 4.5},
            {"user_id": USER, "item_id": "i4", "type": "click"},
        ],
    )
    kept, _ = _kept(app)
    assert kept is not None
    _same(kept, _sql(app))
    # The read after the events uses it, and answers as a read from SQL does.
    from_redis = client.get(URL).get_json()
    assert from_redis["cached"] is False
    assert get_cache(app).invalidate_users([USER])  # a new token: the kept history is stale
    assert _kept(app)[0] is None
    from_sql = client.get(URL).get_json()
    assert from_sql["cached"] is False and from_sql["items"] == from_redis["items"]


def test_an_event_older_than_the_kept_history_drops_it(app):
    client = app.test_client()
    assert client.get(URL).status_code == 200
    assert _kept(app)[0] is not None
    _post(client, [{"user_id": USER, "item_id": "i1", "type": "view", "timestamp": 946684800}])
    kept, raw = _kept(app)
    assert kept is None and raw is None  # dropped: the next miss reads SQL
    assert client.get(URL).status_code == 200
    kept, _ = _kept(app)
    assert kept is not None
    _same(kept, _sql(app))


def test_a_history_kept_under_another_token_is_never_read():
    token = b"t1"
    from recsys.core.types import UserHistory

    h = UserHistory(USER, ["a", "b"], ["view", "purchase"], [1.0, 1.0], [20, 10])
    raw = histories.encode(token, h, 20_000_000)
    got = histories.decode(raw, token, USER, 500)
    assert got is not None and got.items == ["a", "b"] and got.ts == [20, 10]
    assert histories.decode(raw, b"t2", USER, 500) is None
    assert histories.decode(raw, None, USER, 500) is None
    assert histories.decode(b"foreign", token, USER, 500) is None
    assert histories.decode(raw, token, USER, 1).items == ["a"]  # the newest `limit`
    # An item id that the lines cannot hold: not kept at all.
    assert histories.encode(token, UserHistory(USER, ["a\tb"], ["view"], [1.0], [1]), 1) is None
