"""Background polling: requests serve the state they have while another thread refreshes it."""

from __future__ import annotations

import threading

from sqlalchemy import event

from recsys.ops.polling import BackgroundPoll
from recsys.serving.settings_store import get_settings
from recsys.store import get_engine
from tests.clocks import ManualClock


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
    assert poll.wait_idle(5)
    assert poll.runs == 1 and not poll.running
    assert calls == ["recsys-poll-t"]  # ran in its own thread, once

    def boom():
        raise RuntimeError("store down")

    failing = BackgroundPoll("f", boom)
    assert failing.trigger() is True
    assert failing.wait_idle(5) and failing.runs == 1
    assert failing.trigger() is True  # a failed refresh does not block the next one
    assert failing.wait_idle(5) and failing.runs == 2


def test_stale_versions_are_refreshed_off_the_request_thread(make_app):
    a = make_app(CONFIG_POLL_SECONDS=0.1)
    b = make_app(CONFIG_POLL_SECONDS=0.1)
    sb = get_settings(b)
    sb.clock = clock = ManualClock()
    before = sb.versions()  # first read: inline

    queries_on = []
    me = threading.get_ident()
    in_poll, release = threading.Event(), threading.Event()

    def record(conn, cursor, statement, *args):
        if "settings" in statement:
            queries_on.append(threading.get_ident())
            if threading.get_ident() != me:
                # A store that does not answer until the test says so: if the request waited
                # for the poll, the call below would not return before release is set.
                in_poll.set()
                release.wait(10)

    engine = get_engine(b)
    event.listen(engine, "before_cursor_execute", record)
    try:
        get_settings(a).bump_version("test")  # a change made by another server
        clock.advance(0.15)  # past the poll interval: b's view is now stale
        assert sb.versions() == before  # served what it had; the poll runs elsewhere
        assert in_poll.wait(10), "no background poll started"
        assert sb.versions() == before  # still the old view while the poll is out
        assert not release.is_set()
        release.set()
        assert sb.poller.wait_idle(10), "the background poll never finished"
        assert sb.versions().config == before.config + 1
        assert queries_on and me not in queries_on  # every poll ran in a poller thread
    finally:
        release.set()
        event.remove(engine, "before_cursor_execute", record)


def test_own_writes_are_seen_at_once(make_app):
    app = make_app(CONFIG_POLL_SECONDS=60)
    s = get_settings(app)
    v = s.versions().config
    s.bump_version("test")
    assert s.versions().config == v + 1  # inline re-read after this process's own change


def test_a_fork_waits_for_running_polls_and_none_start_meanwhile():
    # A poll inside SQLite when gunicorn's master forks a worker left SQLite's C mutex locked in
    # the worker, whose first query then hung (CI: /readyz never answered). The at-fork handler
    # waits for running polls and holds new ones off until the fork is done.
    from recsys.ops import polling

    in_poll, release = threading.Event(), threading.Event()

    def slow():
        in_poll.set()
        release.wait(10)

    poll = BackgroundPoll("fork", slow)
    assert poll.trigger() is True
    assert in_poll.wait(10)
    forked = threading.Event()

    def fork_side():
        polling._before_fork()  # what os.fork() runs first
        forked.set()

    forker = threading.Thread(target=fork_side)
    forker.start()
    try:
        with polling._gate:
            assert polling._gate.wait_for(lambda: polling._forking, 10)
        # The fork is pending and has not gone ahead: the poll still runs.
        assert not forked.is_set()
        release.set()
        assert forked.wait(10), "the fork never went ahead after the poll ended"
        assert poll.wait_idle(10)
        other = BackgroundPoll("during", lambda: None)
        assert other.trigger() is False  # a fork is pending: no new poll thread
    finally:
        release.set()
        forker.join(10)
        polling._after_fork_in_parent()
    assert other.trigger() is True  # after the fork, polls start again
    assert other.wait_idle(10)


def test_polls_work_in_a_forked_child():
    import os

    poll = BackgroundPoll("child", lambda: None)
    pid = os.fork()
    if pid == 0:  # the child: its own gate, no polls of the parent's counted
        try:
            ok = poll.trigger() and poll.wait_idle(10) and poll.runs == 1
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
