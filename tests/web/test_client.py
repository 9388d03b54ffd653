"""``recsys.client.RecsysClient`` against a live server (werkzeug, real PostgreSQL and Redis):
every method it has, its errors, and that its names are the document's operationIds."""

from __future__ import annotations

import re
import threading

import pytest
from werkzeug.serving import make_server

from recsys.client import ApiError, RecsysClient
from tests.servicekit import ADMIN_TOKEN, BASKETS

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def live(served_app):
    server = make_server("127.0.0.1", 0, served_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    with RecsysClient(f"http://127.0.0.1:{server.server_port}", admin_token=ADMIN_TOKEN) as api:
        yield api
    server.shutdown()
    thread.join(10)


def test_lists(live):
    recs = live.get_user_recommendations("u0", n=3, fields=["title", "categories"], explain=True)
    assert len(recs["items"]) == 3 and recs["items"][0]["title"].startswith("Item ")
    assert not {it["item_id"] for it in recs["items"]} & set(BASKETS["u0"])
    assert live.get_user_recommendations("u0", n=3, fields=["title", "categories"], explain=True)[
        "cached"
    ]
    guest = live.get_session_recommendations(["i0", "i2"], n=2, exclude=["i1"])
    assert len(guest["items"]) == 2 and "i1" not in [it["item_id"] for it in guest["items"]]
    similar = live.get_similar_items("i0", n=3, category="books", exclude=["i2"])
    ids = [it["item_id"] for it in similar["items"]]
    assert ids and "i2" not in ids and all(int(i[1:]) % 2 == 0 for i in ids)
    popular = live.get_popular_items(n=10, user_id="u1")
    assert not {it["item_id"] for it in popular["items"]} & set(BASKETS["u1"])
    assert len(live.get_latest_items(n=2, category="music")["items"]) == 2
    assert live.get_user_neighbors("u0", n=1)["neighbors"][0]["user_id"] == "u1"


def test_writes_paging_and_forgetting(live):
    assert live.post_events({"user_id": "c1", "item_id": "i1", "type": "click"})["inserted"] == 1
    counts = live.post_events(
        [{"user_id": "c1", "item_id": f"i{k}", "type": "view", "id": f"c-{k}"} for k in range(5)]
    )
    assert counts == {"received": 5, "inserted": 5, "duplicates": 0}
    shown = {"user_id": "c1", "items": ["i3", "i4"], "context": "home", "id": "cl-1"}
    assert live.post_impressions(shown)["inserted"] == 1
    assert live.post_impressions([shown])["duplicates"] == 1
    events = list(live.iter_user_events("c1", page_size=2))
    assert len(events) == 6 and events[0]["type"] == "view"
    gone = live.delete_user_event("c1", events[0]["event_id"])
    assert gone["events_deleted"] == 1
    forgot = live.delete_user_item_events("c1", "i3")
    assert forgot["events_deleted"] == 1 and forgot["impressions_deleted"] == 1
    assert len(list(live.iter_user_events("c1"))) == 4
    assert live.put_item("i-new", title="New", categories=["books"])["created"] is True
    assert live.get_item("i-new")["title"] == "New"
    assert live.delete_user("c1")["events_deleted"] == 4


def test_errors_carry_the_uniform_body(live):
    with pytest.raises(ApiError) as e:
        live.request("GET", "/v1/popular", {"categroy": "books"})
    assert e.value.status == 422 and "categroy" in e.value.description
    assert e.value.detail == {"query": {"categroy": ["unknown parameter"]}}
    assert e.value.request_id
    with pytest.raises(ApiError) as e:
        live.get_similar_items("nope")
    assert e.value.status == 404
    with pytest.raises(ApiError) as e:
        live.post_events({"user_id": "c1", "item_id": "i1", "type": "nope"})  # type: ignore[typeddict-item]
    assert e.value.status == 422


def test_experiments_through_the_admin_token(live):
    live.create_experiment(
        {
            "name": "client-exp",
            "variants": [
                {"name": "a", "weight": 0.5, "config": {}},
                {"name": "b", "weight": 0.5, "config": {"strategies": {"ease": {"weight": 0.5}}}},
            ],
        }
    )
    live.get_user_recommendations("u3")
    report = live.get_experiment_report("client-exp", window_hours=1)
    assert set(report["variants"]) == {"a", "b"}
    assert live.stop_experiment("client-exp")["status"] == "stopped"


def test_method_names_are_the_documents_operation_ids():
    from recsys.web.openapi import OPERATION_IDS

    def snake(name: str) -> str:
        return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()

    methods = {m for m in dir(RecsysClient) if not m.startswith("_")}
    methods -= {"request", "close", "iter_user_events"}
    assert methods <= {snake(op) for op in OPERATION_IDS.values()}
