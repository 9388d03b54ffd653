"""The SQL store's bounds (recsys.store.guard): circuit breaker (injected clock) and socket
watchdog (a real socket pair; no database needed)."""

from __future__ import annotations

import logging
import socket
import threading

import pytest

from recsys.errors import DatabaseUnavailable, RateLimitedLog
from recsys.store.guard import Breaker, SocketWatchdog
from tests.clocks import ManualClock


def test_breaker_opens_refuses_and_lets_exactly_one_probe():
    clock = ManualClock()
    b = Breaker(failures=2, reset_s=5.0, probe_lease_s=30.0, clock=clock)
    assert b.allow() and b.state == "closed"
    b.failure("x")
    assert b.state == "closed"  # one failure of two
    b.success()
    b.failure("x")
    assert b.state == "closed"  # consecutive failures only
    b.failure("x")
    assert b.state == "open" and b.opened == 1
    assert not b.allow() and b.refused == 1
    with pytest.raises(DatabaseUnavailable) as e:
        b.check()
    assert e.value.retry_after == 5
    clock.now += 4.2
    assert not b.allow() and b.retry_after() == 1
    clock.now += 1.0
    # Reset period over: one caller probes, everyone else is still refused.
    assert b.allow() and b.probes == 1
    assert not b.allow() and not b.allow()
    b.failure("probe failed")
    assert b.state == "open" and b.opened == 1  # re-opened, not a new outage
    clock.now += 5.0
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow() and b.allow()


def test_a_probe_that_never_reports_is_replaced_after_its_lease():
    clock = ManualClock()
    b = Breaker(failures=1, reset_s=1.0, probe_lease_s=10.0, clock=clock)
    b.failure()
    clock.now += 1.0
    assert b.allow()  # the probe's thread dies without a verdict
    clock.now += 9.9
    assert not b.allow()
    clock.now += 0.2
    assert b.allow() and b.probes == 2


def test_a_probe_given_back_unused_lets_the_next_caller_probe_at_once():
    # A probe that found a stale pooled connection gives the probe to its own reconnect
    # (recsys.store.guard: a server restart must not leave writes refused for a probe lease).
    clock = ManualClock()
    b = Breaker(failures=1, reset_s=1.0, probe_lease_s=30.0, clock=clock)
    b.failure()
    clock.now += 1.0
    assert b.allow() and not b.allow()
    b.release_probe()
    assert b.allow() and b.probes == 2 and not b.allow()
    b.success()
    assert b.state == "closed"
    b.release_probe()  # closed: nothing to give back
    assert b.state == "closed" and b.allow()


def test_breaker_allows_one_probe_among_racing_threads():
    clock = ManualClock()
    b = Breaker(failures=1, reset_s=1.0, clock=clock)
    b.failure()
    clock.now += 2.0
    start = threading.Barrier(8)
    allowed = []

    def race():
        start.wait()
        allowed.append(b.allow())

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(allowed) == [False] * 7 + [True]


def test_watchdog_cuts_a_silent_socket_and_wakes_the_reader():
    a, b = socket.socketpair()
    clock = ManualClock()
    dog = SocketWatchdog(clock=clock)
    try:
        w = dog.watch(a.fileno(), 1.0)
        got = []
        reader = threading.Thread(target=lambda: got.append(a.recv(10)))
        reader.start()
        clock.now += 2.0  # past the deadline; wake the watchdog to look
        dog.wake()
        reader.join(30)
        assert not reader.is_alive() and got == [b""]  # woken with EOF, not hung
        assert dog.release(w) is True and dog.cuts == 1
        assert a.fileno() >= 0  # the descriptor is still its owner's to close
    finally:
        a.close()
        b.close()


def test_watchdog_never_touches_a_released_socket():
    a, b = socket.socketpair()
    clock = ManualClock()
    dog = SocketWatchdog(clock=clock)
    try:
        with dog.armed(a.fileno(), 1.0) as w:
            pass
        assert w.done and not w.expired
        # A later watch with an earlier deadline makes the watchdog run past the released one.
        other_a, other_b = socket.socketpair()
        w2 = dog.watch(other_a.fileno(), 0.5)
        clock.now += 5.0
        dog.wake()
        other_a.settimeout(30)
        assert other_a.recv(1) == b""  # the second one is cut...
        assert dog.release(w2)
        b.sendall(b"x")
        assert a.recv(1) == b"x"  # ...the released one still works
        assert dog.cuts == 1
        other_a.close()
        other_b.close()
    finally:
        a.close()
        b.close()


def test_rate_limited_log_counts_what_it_left_out(caplog):
    clock = ManualClock()
    rl = RateLimitedLog(logging.getLogger("t.rl"), every_s=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="t.rl"):
        assert rl.warning("refused %s", "a")
        for _ in range(99):
            assert not rl.warning("refused %s", "b")
        clock.now += 10.0
        assert rl.warning("refused %s", "c")
    # Only this logger's records: a watchdog thread of an earlier test may still log a cut.
    assert [r.getMessage() for r in caplog.records if r.name == "t.rl"] == [
        "refused a",
        "refused c (99 more like this in the last 10 s)",
    ]


@pytest.mark.postgres
def test_cli_batch_work_is_not_bound_by_the_request_timeouts(pg_schema_url, monkeypatch, tmp_path):
    """A bulk import's INSERT ... SELECT or a training read can take longer than a request may:
    the CLI's app runs without the statement timeout (RECSYS_CLI_DB_STATEMENT_TIMEOUT_MS, 0),
    the served app keeps it."""
    from sqlalchemy import text

    from recsys import create_app
    from recsys.cli.main import create_cli_app
    from recsys.store import get_engine
    from recsys.store.db import dispose_engines

    monkeypatch.setenv("RECSYS_DATABASE_URL", pg_schema_url)
    monkeypatch.setenv("RECSYS_MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("RECSYS_DB_STATEMENT_TIMEOUT_MS", "200")
    cli_app, served = create_cli_app(), create_app()
    try:
        assert cli_app.extensions["recsys.db_guard"].statement_timeout_ms == 0
        with get_engine(cli_app).connect() as conn:
            conn.execute(text("SELECT pg_sleep(0.5)"))  # 2.5x the request timeout: fine here
        with pytest.raises(Exception, match="timeout|did not answer"):
            with get_engine(served).connect() as conn:
                conn.execute(text("SELECT pg_sleep(0.5)"))
    finally:
        dispose_engines(cli_app)
        dispose_engines(served)
