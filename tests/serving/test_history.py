"""The request path's history read (recsys.serving.history) on real PostgreSQL and on SQLite."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from recsys.serving.history import get_history_reader, load_history
from recsys.store import get_engine

T0 = 1_700_000_000


def _post(client, events) -> None:
    r = client.post("/v1/events", json=events)
    assert r.status_code == 201, r.get_json()


def _seed(client) -> None:
    _post(
        client,
        [
            {"user_id": "u1", "item_id": "a", "type": "view", "timestamp": T0},
            {"user_id": "u1", "item_id": "b", "type": "purchase", "timestamp": T0 + 60.75},
            {
                "user_id": "u1",
                "item_id": "c",
                "type": "rating",
                "value": 4.5,
                "timestamp": T0 + 120,
            },
            # Same second as "c": the later row id comes first, as the index orders them.
            {"user_id": "u1", "item_id": "a", "type": "dislike", "timestamp": T0 + 120},
            {"user_id": "u2", "item_id": "b", "type": "click", "timestamp": T0 + 1},
        ],
    )


def _check_history(app, client) -> None:
    _seed(client)
    h = load_history(app, "u1")
    assert h.user_id == "u1"
    assert h.items == ["a", "c", "b", "a"]
    assert h.types == ["dislike", "rating", "purchase", "view"]
    assert h.values == [1.0, 4.5, 1.0, 1.0]
    # Whole Unix seconds, truncated, as the naive UTC timestamps are stored.
    assert h.ts == [T0 + 120, T0 + 120, T0 + 60, T0]
    assert all(type(x) is str for x in h.items) and all(type(t) is int for t in h.ts)
    # The limit keeps the newest.
    assert load_history(app, "u1", limit=2).items == ["a", "c"]
    # Unknown users have an empty history (they are cold users, not errors).
    empty = load_history(app, "nobody")
    assert empty.user_id == "nobody" and len(empty) == 0 and empty.ts == []
    # An item first seen after the map was filled is read from the store.
    _post(client, [{"user_id": "u2", "item_id": "new-item", "type": "cart", "timestamp": T0 + 5}])
    assert load_history(app, "u2").items == ["new-item", "b"]
    assert len(get_history_reader(app).item_ids) == 4


@pytest.mark.postgres
def test_history_on_postgres(app):
    _check_history(app, app.test_client())


def test_history_on_sqlite(sqlite_app):
    _check_history(sqlite_app, sqlite_app.test_client())


@pytest.mark.postgres
def test_history_survives_its_pooled_connections_being_cut(app):
    """No pre-ping on the hot pool: a dead pooled connection is retried on a new one."""
    client = app.test_client()
    _seed(client)
    reader = get_history_reader(app)
    assert load_history(app, "u1").items == ["a", "c", "b", "a"]
    assert reader.engine.pool.checkedin() >= 1  # the read left a pooled connection behind
    # What a database restart does to that connection: the server ends it.
    with get_engine(app).connect() as conn:
        killed = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend'"
            )
        ).scalar()
    assert killed >= 1
    assert load_history(app, "u1").items == ["a", "c", "b", "a"]


@pytest.mark.postgres
def test_history_read_failure_is_sqlalchemys_error(make_app):
    """An unreachable store raises what ``recsys.web.errors.DB_UNAVAILABLE`` catches (the view
    then answers from popularity), not the driver's own exception."""
    from recsys.errors import DB_UNAVAILABLE

    make_app()  # the first app empties the tables: it needs a reachable store
    app = make_app(DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:1/none")
    with pytest.raises(DB_UNAVAILABLE):
        load_history(app, "u1")
