"""The console's Overview, Jobs and Items screens, the admin API under them (``/v1/admin/overview``,
``/v1/admin/jobs``), the Strategies screen's profile-routes switch and the Live history.

A retrain started here really runs: the ``recsys`` CLI as a child process on the test store,
awaited through its job row (``tests.waiting.wait_until``: a hang guard, not a window).
"""

from __future__ import annotations

import pytest

from tests.clocks import ManualClock
from tests.servicekit import ADMIN_TOKEN
from tests.waiting import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CHILD_GUARD_S = 180  # a child process on a loaded machine: import, connect, train, exit


@pytest.fixture
def client(served_app):
    return served_app.test_client()


def _job(client, job_id: int) -> dict:
    r = client.get(f"/v1/admin/jobs/{job_id}", headers=AUTH)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def _finished(client, job_id: int) -> dict:
    wait_until(
        lambda: _job(client, job_id)["outcome"] in ("succeeded", "failed"),
        f"job {job_id} finished",
        CHILD_GUARD_S,
    )
    return _job(client, job_id)


# -- overview ---------------------------------------------------------------------------------
def test_overview_api_and_screen(client, served_app, monkeypatch):
    from recsys.web.api import admin_overview

    clock = ManualClock()
    monkeypatch.setattr(admin_overview, "clock", clock)
    assert client.get("/v1/admin/overview").status_code == 401
    for _ in range(3):
        client.get("/v1/users/u6/recommendations")
    o = client.get("/v1/admin/overview", headers=AUTH).get_json()
    st = o["store"]
    assert (st["users"], st["items"], st["events"]) == (7, 10, 24)
    assert st["estimated"] == {"users": False, "items": False, "events": False}
    per_day = st["events_per_day"]
    assert len(per_day["days"]) == len(per_day["counts"]) == 30
    # The seeded events are from 2023: the window ends at the newest one and holds them all.
    assert per_day["ending"] == "newest event" and sum(per_day["counts"]) == 24
    assert o["traffic"]["requests"] >= 3 and 0 < o["traffic"]["cache_hit_ratio"] < 1
    assert {m["strategy"] for m in o["models"]} == {"popular", "ease"}
    assert all(m["age_seconds"] >= 0 for m in o["models"]) and o["profile"] is None
    assert o["jobs"] == {"latest": {}, "active": []}

    # Kept for TTL_S: a new event is not counted until the clock moves past it.
    client.post("/v1/events", json=[{"user_id": "u9", "item_id": "i1", "type": "click"}])
    again = client.get("/v1/admin/overview", headers=AUTH).get_json()
    assert again["store"]["events"] == 24 and again["computed_at"] == o["computed_at"]
    clock.advance(admin_overview.TTL_S)
    fresh = client.get("/v1/admin/overview", headers=AUTH).get_json()
    assert fresh["store"]["events"] == 25
    assert fresh["store"]["events_per_day"]["ending"] == "today"  # an event of today now

    html = client.get("/admin/ui/overview", headers=AUTH).get_data(as_text=True)
    for part in ('id="tile-users"', 'id="chart-events"', 'id="overview-model-ease"', "never"):
        assert part in html, part
    assert client.get("/admin/ui/overview").status_code == 401
    assert client.get("/admin/overview").status_code == 200  # the page shell, no token


# -- jobs -------------------------------------------------------------------------------------
def test_recorder_progress_spans_and_outcomes(served_app):
    from recsys.ops import jobs
    from recsys.store import get_engine, session_scope

    engine = get_engine(served_app)
    clock = ManualClock()
    job_id = jobs.start_or_adopt(engine, "train", {"x": 1}, "tester", None)
    with jobs.recording(engine, job_id, clock=clock) as rec:
        with jobs.span(0.5, 1.0):
            jobs.report(0.5, "half of the second half")
        with served_app.app_context(), session_scope() as s:
            assert jobs.get(s, job_id)["progress"] == 0.75
        jobs.report(0.9, "half of the second half")  # same message within the interval
        assert not rec.progress(0.9, "half of the second half")
        clock.advance(rec.min_interval_s)
        assert rec.progress(0.9, "half of the second half")
        rec.result = {"made": 1}
    with served_app.app_context(), session_scope() as s:
        done = jobs.get(s, job_id)
    assert done["outcome"] == "succeeded" and done["progress"] == 1.0
    assert done["result"] == {"made": 1} and done["started_by"] == "tester"

    job_id = jobs.start_or_adopt(engine, "tune", {}, "tester", None)
    with pytest.raises(RuntimeError), jobs.recording(engine, job_id):
        raise RuntimeError("the search broke")
    with served_app.app_context(), session_scope() as s:
        failed = jobs.get(s, job_id)
        assert failed["outcome"] == "failed" and failed["error"] == "the search broke"
        # A running row whose process is gone is marked failed, not shown running forever.
        ghost = jobs.create(s, "import", {}, "tester", outcome="running")
        ghost.pid = 424242
        s.flush()
        assert jobs.reap_lost(s, alive=lambda pid: pid != 424242) == [ghost.id]
    jobs.report(0.5, "outside a run: nothing")  # no recorder: a no-op


def test_cli_runs_are_recorded(served_app):
    from recsys.cli.main import main
    from recsys.ops import jobs
    from recsys.store import session_scope

    runner = served_app.test_cli_runner()
    args = ["train", "popular", "--holdout", "0", "--started-by", "timer:nightly"]
    r = runner.invoke(main, args=args)
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, args=["train", "nosuch"])
    assert r.exit_code != 0
    with served_app.app_context(), session_scope() as s:
        ok, bad = jobs.list_jobs(s)[::-1]
    assert ok["kind"] == "train" and ok["outcome"] == "succeeded" and ok["progress"] == 1.0
    assert ok["started_by"] == "timer:nightly" and ok["args"]["strategies"] == ["popular"]
    (made,) = ok["result"]["models"]
    assert made["strategy"] == "popular" and made["activated"]
    assert bad["outcome"] == "failed" and "nosuch" in bad["error"]
    assert bad["started_by"].startswith("cli:")
    r = runner.invoke(main, args=["train", "popular", "--job-id", "999999"])
    assert r.exit_code == 2 and "not a queued train job" in r.output


def test_start_a_retrain_through_the_api(client, served_app):
    from recsys.models.repository import get_repository

    before = get_repository(served_app).active_version("popular")
    bad = [
        ({"kind": "evaluate"}, 422),
        ({"kind": "train", "strategies": ["nosuch"]}, 422),
        ({"kind": "tune", "budget": "forever"}, 422),
        ({"kind": "tune", "budget": "48h"}, 422),
    ]
    for body, status in bad:
        r = client.post("/v1/admin/jobs", json=body, headers=AUTH)
        assert r.status_code == status, (body, r.get_json())
    assert client.post("/v1/admin/jobs", json={"kind": "train"}).status_code == 401

    r = client.post(
        "/v1/admin/jobs",
        json={"kind": "train", "strategies": ["popular"]},
        headers={**AUTH, "X-Actor": "ops-alice"},
    )
    assert r.status_code == 202, r.get_json()
    job = r.get_json()
    assert job["outcome"] == "queued" and job["started_by"] == "ops-alice"
    # One at a time: refused while it is queued or running.
    r = client.post("/v1/admin/jobs", json={"kind": "tune", "budget": "5s"}, headers=AUTH)
    if _job(client, job["id"])["outcome"] in ("queued", "running"):
        assert r.status_code == 409 and "one at a time" in r.get_json()["description"]
    done = _finished(client, job["id"])
    assert done["outcome"] == "succeeded", done
    assert done["pid"] and done["pid"] != __import__("os").getpid()  # another process did it
    (made,) = done["result"]["models"]
    assert made["activated"] and made["version"] != before
    assert get_repository(served_app).active_version("popular") == made["version"]
    audit = client.get("/v1/admin/audit?action=job.start", headers=AUTH).get_json()
    assert audit["entries"][0]["actor"] == "ops-alice"
    assert audit["entries"][0]["target"] == f"train:{job['id']}"
    listed = client.get("/v1/admin/jobs?kind=train", headers=AUTH).get_json()
    assert listed["jobs"][0]["id"] == job["id"] and not listed["running"]
    assert client.get("/v1/admin/jobs/999999", headers=AUTH).status_code == 404
    assert client.get("/v1/admin/jobs?limit=0", headers=AUTH).status_code == 422


def test_one_at_a_time_and_a_child_that_dies(client, served_app, monkeypatch):
    from recsys.ops import jobs
    from recsys.store import session_scope
    from recsys.web.api import admin_jobs

    with served_app.app_context(), session_scope() as s:
        busy = jobs.create(s, "tune", {}, "someone", outcome="queued").id
    r = client.post("/admin/ui/jobs/train", data={"strategies": ["popular"]}, headers=AUTH)
    assert 'id="action-error"' in r.text and "one at a time" in r.text
    with served_app.app_context(), session_scope() as s:
        jobs.finish_row(s, busy, "failed", "cleared by the test")

    # A child that exits without recording anything: the waiter records its exit and output.
    def argv(kind, args, job_id):
        return [admin_jobs.sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]

    monkeypatch.setattr(admin_jobs, "_argv", argv)
    r = client.post("/admin/ui/jobs/train", data={"strategies": ["popular"]}, headers=AUTH)
    assert 'id="action-done"' in r.text
    job_id = int(r.text.split("train job #")[1].split(" ")[0])
    done = _finished(client, job_id)
    assert done["outcome"] == "failed" and "exit status 3" in done["error"]
    assert "boom" in done["error"]


def test_jobs_screen_polls_while_running(client, served_app):
    from recsys.ops import jobs
    from recsys.store import session_scope

    html = client.get("/admin/ui/jobs", headers=AUTH).get_data(as_text=True)
    assert 'id="start-train"' in html and 'id="train-popular"' in html and "No runs" in html
    assert 'data-running="no"' in html
    with served_app.app_context(), session_scope() as s:
        job = jobs.create(s, "import", {"command": "recsys import csv"}, "cli:me", "running")
        job.progress, job.message = 0.4, "writing to the store"
    html = client.get("/admin/ui/jobs/list", headers=AUTH).get_data(as_text=True)
    assert 'data-running="yes"' in html and 'hx-trigger="every 1s"' in html
    assert 'data-progress="0.4"' in html and "writing to the store" in html
    assert client.get("/admin/ui/jobs/list").status_code == 401


# -- item browser -----------------------------------------------------------------------------
def test_item_browser_search_and_detail(client):
    client.put("/v1/items/i9", json={"title": "Blue 100% wool", "available": False})
    r = client.get("/admin/ui/items?q=item 3", headers=AUTH)
    assert r.text.count('class="item-row"') == 1 and 'data-item="i3"' in r.text
    r = client.get("/admin/ui/items?q=i3", headers=AUTH)  # the exact id first
    assert r.text.index('data-item="i3"') < r.text.index("</tbody>")
    r = client.get("/admin/ui/items?available=no", headers=AUTH)
    assert r.text.count('class="item-row"') == 1 and 'data-item="i9"' in r.text
    r = client.get("/admin/ui/items?q=100%", headers=AUTH)  # % is a character, not a wildcard
    assert r.text.count('class="item-row"') == 1
    cat = client.get("/v1/items/i0").get_json()["categories"][0]
    r = client.get(f"/admin/ui/items?category={cat}", headers=AUTH)
    assert 'data-item="i0"' in r.text
    assert client.get("/admin/ui/items").status_code == 401

    html = client.get("/admin/ui/items/i0", headers=AUTH).get_data(as_text=True)
    assert 'id="item-view"' in html and 'id="item-available">available' in html
    assert 'id="item-events-total">6<' in html and 'id="item-events"' in html  # i0: 6 baskets
    ease = html.split('id="neighbours-ease"')[1].split('class="neighbours"')[0]
    assert "<li>" in ease and "Item " in ease  # neighbours, with their titles
    assert "no item similarity" in html or 'id="neighbours-popular"' in html
    html = client.get("/admin/ui/items/nosuch", headers=AUTH).get_data(as_text=True)
    assert "No item" in html


# -- strategies: which routing serves, and the profile routes switch -------------------------
def test_routing_served_and_the_profile_routes_switch(client):
    html = client.get("/admin/ui/strategies", headers=AUTH).get_data(as_text=True)
    assert 'data-source="hand-set"' in html and 'id="profile-switch"' not in html
    routes = [
        {"name": "short", "max_history": 2, "weights": {"popular": 1.0}},
        {"name": "long", "max_history": None, "weights": {"ease": 1.0, "popular": 0.5}},
    ]
    r = client.patch("/v1/admin/routing", json={"routes": routes}, headers=AUTH)
    assert r.status_code == 200, r.get_json()
    html = client.get("/admin/ui/strategies", headers=AUTH).get_data(as_text=True)
    assert 'data-source="admin"' in html and "short, long" in html
    # Off: an audited routing override (routes null); on: the override dropped again.
    r = client.post("/admin/ui/routing/profile", data={"on": "0"}, headers=AUTH)
    assert 'id="action-done"' in r.text and 'id="profile-switch"' in r.text
    view = client.get("/v1/admin/routing", headers=AUTH).get_json()
    assert view["routing"]["routes"] is None and "routes" in view["overridden"]
    audit = client.get("/v1/admin/audit?action=routing.update", headers=AUTH).get_json()
    assert audit["entries"][0]["after"] == {"routes": None}
    r = client.post("/admin/ui/routing/profile", data={"on": "1"}, headers=AUTH)
    assert 'id="action-done"' in r.text
    audit = client.get("/v1/admin/audit?action=routing.reset", headers=AUTH).get_json()
    assert audit["entries"][0]["target"] == "routes"


def test_preview_lists_show_titles(client):
    r = client.post("/admin/ui/preview", data={"preview_user": "u6"}, headers=AUTH)
    assert '<span class="title">Item ' in r.text


# -- live history -----------------------------------------------------------------------------
def test_live_history_is_kept_in_redis(client, served_app, redis_url):
    import redis

    from recsys.web.console.live import HISTORY_POINTS, HISTORY_STEP_S, History

    clock = ManualClock(1_000_000.0)
    h = History(redis.Redis.from_url(redis_url), f"test-history-{id(clock)}", clock)
    try:
        assert h.add({"t": clock.now, "requests": 1})
        assert not h.add({"t": clock.now + 0.1, "requests": 2})  # same slot: another worker's
        for k in range(1, HISTORY_POINTS + 5):
            clock.advance(HISTORY_STEP_S)
            h.add({"t": clock.now, "requests": k})
        kept = h.recent()
        assert len(kept) == HISTORY_POINTS and kept[-1]["requests"] == HISTORY_POINTS + 4
    finally:
        h.client.delete(h.key)
    local = History(None, "unused", clock)
    assert local.add({"t": clock.now}) and local.recent()

    first = client.get("/admin/ui/live.json?history=1", headers=AUTH).get_json()
    assert "history" in first and "requests" in first
    # A page loaded later gets what the first one kept (every worker's, shared in Redis).
    later = client.get("/admin/ui/live.json?history=1", headers=AUTH).get_json()
    assert any(s["t"] == first["t"] for s in later["history"])
    assert "history" not in client.get("/admin/ui/live.json", headers=AUTH).get_json()


def test_live_history_is_sampled_without_a_page(served_app):
    """Each worker's sampler (after the fork) claims the slot first; only the winner reads the
    metrics, and the history fills with no page open. No thread: ``sample`` is called here."""
    from recsys.web.console.live import HISTORY_STEP_S, Sampler, history_of

    clock = ManualClock(2_100_000.0)  # a slot start
    history = history_of(served_app)
    history.clock = clock
    reads = []

    def source() -> str:
        reads.append(clock.now)
        return 'recsys_requests_total{endpoint="recommend",status="200"} 7\n'

    workers = [Sampler(history, source, clock) for _ in range(2)]
    try:
        for _ in range(3):
            assert [w.sample() for w in workers] == [True, False]  # one per slot, one read
            clock.advance(HISTORY_STEP_S)
        assert len(reads) == 3
        kept = [s for s in history.recent() if s["t"] >= 2_100_000.0]
        assert [s["t"] for s in kept] == reads and kept[-1]["requests"] == 7
        # Just past the next slot's start, wherever in the slot it asks.
        clock.advance(1.0)
        assert 0 < workers[0].delay() <= HISTORY_STEP_S - 1.0 + 0.1
    finally:
        history.client.delete(history.key)


def test_live_sampler_thread_starts_after_fork_only(make_app, redis_url, redis_prefix, monkeypatch):
    import threading

    from recsys.web.console import live

    def sampler_threads():
        return [t for t in threading.enumerate() if t.name == "recsys-live-sampler"]

    # The app (as the CLI and test clients make it) runs no sampler; a worker's fork hook does.
    assert not sampler_threads()
    assert live.start_sampler(make_app(CONSOLE_HISTORY_SAMPLER=False)) is None
    stepped = threading.Event()
    monkeypatch.setattr(live.Sampler, "delay", lambda self: 0.0)
    monkeypatch.setattr(live.Sampler, "step", lambda self: stepped.set())
    on = make_app(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, CONSOLE_HISTORY_SAMPLER=True)
    sampler = live.start_sampler(on)
    try:
        assert live.start_sampler(on) is sampler  # one per process
        assert stepped.wait(30) and sampler_threads()
    finally:
        sampler.stop(30)
    assert not sampler.thread.is_alive()


def test_live_sampler_survives_a_failing_store(caplog):
    from recsys.web.console.live import History, Sampler

    class Down:
        def set(self, *a, **k):
            raise ConnectionError("redis down")

    sampler = Sampler(History(Down(), "k"), lambda: "")
    sampler.step()
    sampler.step()  # logged once, not every 3 s
    assert sum("sampling failed" in r.getMessage() for r in caplog.records) == 1
