"""Background polling: requests serve the state they have while another thread refreshes it."""

from __future__ import annotations

import threading
import time

from sqlalchemy import event

from recsys.polling import BackgroundPoll
from recsys.settings import get_settings
from recsys.store import get_engine


def test_one_refresh_at_a_time_and_failures_do_not_stick():
    started, release = threading.Event(), threading.Event()
    calls = []

    def slow():
        calls.append(threading.current_thread().name)
        started.set()
        release.wait(5)

    poll = BackgroundPoll("t", slow)
    assert poll.trigger() is True
    assert started.wait(5)
    assert poll.trigger() is False  # one already running
    release.set()
    deadline = time.monotonic() + 5
    while poll._running:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert calls == ["recsys-poll-t"]  # ran in its own thread, once

    def boom():
        raise RuntimeError("store down")

    failing = BackgroundPoll("f", boom)
    assert failing.trigger() is True
    deadline = time.monotonic() + 5
    while failing._running:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert failing.trigger() is True  # a failed refresh does not block the next one


def test_stale_versions_are_refreshed_off_the_request_thread(make_app):
    a = make_app(CONFIG_POLL_SECONDS=0.1)
    b = make_app(CONFIG_POLL_SECONDS=0.1)
    sb = get_settings(b)
    before = sb.versions()  # first read: inline

    queries_on = []
    me = threading.get_ident()

    def record(conn, cursor, statement, *args):
        if "settings" in statement:
            queries_on.append(threading.get_ident())
            if threading.get_ident() != me:
                # A slow store: the poll cannot land before the request's call returns, even
                # when the test thread is descheduled on a busy machine.
                time.sleep(0.3)

    engine = get_engine(b)
    event.listen(engine, "before_cursor_execute", record)
    try:
        get_settings(a).bump_version("test")  # a change made by another server
        time.sleep(0.15)  # b's view is now stale
        t0 = time.monotonic()
        assert sb.versions() == before  # served at once, without waiting for the query
        assert time.monotonic() - t0 < 0.25
        deadline = time.monotonic() + 3
        while sb.versions().config == before.config:
            assert time.monotonic() < deadline, "the background poll never landed"
            time.sleep(0.02)
        assert sb.versions().config == before.config + 1
        assert queries_on and me not in queries_on  # every poll ran in a poller thread
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_own_writes_are_seen_at_once(make_app):
    app = make_app(CONFIG_POLL_SECONDS=60)
    s = get_settings(app)
    v = s.versions().config
    s.bump_version("test")
    assert s.versions().config == v + 1  # inline re-read after this process's own change
