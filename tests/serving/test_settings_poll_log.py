"""The configuration poll during a database outage: the last known versions keep serving and
the failure is logged as one line now and then (no traceback), not once per poll."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import exc as sa_exc

from recsys.serving.settings_store import POLL_LOG_EVERY_S, get_settings
from tests.clocks import ManualClock


@pytest.mark.postgres
def test_a_failing_config_poll_logs_one_line_per_period(make_app, caplog, monkeypatch):
    app = make_app(CONFIG_POLL_SECONDS=0.3)
    store = get_settings(app)
    clock = ManualClock()
    store.clock = clock
    known = store.versions(force=True)

    polls = []

    def down():
        polls.append(1)
        orig = OSError("connection refused\nIs the server running on that host?")
        raise sa_exc.OperationalError("SELECT 1", {}, orig)

    monkeypatch.setattr(store, "_session", down)
    name = "recsys.serving.settings_store"
    with caplog.at_level(logging.WARNING, logger=name):
        for _ in range(100):  # 50 s of requests every 0.5 s, the database down throughout
            clock.advance(0.5)
            assert store.versions() == known  # a background poll is started, not awaited
            assert store.poller.wait_idle(30)
        assert store._poll(force=True) == known
        clock.advance(POLL_LOG_EVERY_S)
        assert store._poll(force=True) == known
    lines = [r for r in caplog.records if r.name == name]
    assert len(lines) == 2, [r.getMessage() for r in lines]
    for r in lines:
        assert r.exc_info is None and "\n" not in r.getMessage()
        assert "OperationalError: (builtins.OSError) connection refused" in r.getMessage()
    assert len(polls) == 102  # every poll failed; one was logged, then one a period later
    assert lines[1].getMessage().endswith("(100 more like this in the last 60 s)")
