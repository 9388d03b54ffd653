"""Refresh shared state in the background instead of on a request's time.

Each process polls a few small SQL rows (configuration and catalogue versions, active model
versions, running experiments) every ``CONFIG_POLL_SECONDS``. Done inline, the request that
happened to find the state stale paid the query (a pool checkout and a round trip or three:
docs/design-notes.md), and with three such polls every half second a few percent of
all requests carried that delay, which is what a p99 shows. ``BackgroundPoll.trigger`` runs
the refresh in a short-lived thread instead (at most one at a time per process) while the
request serves the state it has, which is at most one poll interval old.

The first load, and a re-read this process forces after writing a change itself, still
happen inline (the caller must not serve what it knows is outdated).

**Fork safety.** A poll thread of gunicorn's master (the preload reads the store, which may
trigger one) that is inside SQLite or a driver at the moment a worker forks leaves that
library's C mutex locked in the child forever: the worker's first query then hangs (seen in CI:
a worker stuck in ``sqlite3Malloc`` and ``/readyz`` never answering). So a fork waits until no
poll runs (``os.register_at_fork``), and no poll starts while one is pending.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

# Polls running in this process, and whether a fork is waiting for them to end.
_gate = threading.Condition()
_active = 0
_forking = False
FORK_WAIT_SECONDS = 30.0  # a store that hangs must not stop a server from forking at all


def _before_fork() -> None:
    global _forking
    with _gate:
        _forking = True
        _gate.notify_all()
        if not _gate.wait_for(lambda: _active == 0, FORK_WAIT_SECONDS):
            log.warning("forking while %d background poll(s) still run", _active)


def _after_fork_in_parent() -> None:
    global _forking
    with _gate:
        _forking = False


def _after_fork_in_child() -> None:
    global _gate, _active, _forking
    # The parent's poll threads do not exist here; neither does whoever held the gate.
    _gate, _active, _forking = threading.Condition(), 0, False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


def _enter() -> bool:
    global _active
    with _gate:
        if _forking:
            return False
        _active += 1
        return True


def _leave() -> None:
    global _active
    with _gate:
        _active -= 1
        _gate.notify_all()


class BackgroundPoll:
    """Run ``fn`` in a daemon thread when triggered, never two at once in one process."""

    def __init__(self, name: str, fn: Callable[[], None]):
        self.name = name
        self.fn = fn
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._running = False
        self._pid = os.getpid()
        self.runs = 0  # refreshes finished (failed ones included)

    def trigger(self) -> bool:
        """Start a refresh unless one is running. True if this call started one.

        Returns
        -------
        bool
            True if this call started a refresh; False when one was already running.
        """
        pid = os.getpid()
        if self._pid != pid:
            # Forked: the thread that set _running (or held the lock) lives in the parent only.
            self._lock = threading.Lock()
            self._idle = threading.Condition(self._lock)
            self._pid, self._running = pid, False
        with self._lock:
            if self._running:
                return False
            self._running = True
        if not _enter():  # a fork is waiting for the polls to end: the next request retries
            with self._lock:
                self._running = False
                self._idle.notify_all()
            return False
        try:
            threading.Thread(target=self._run, name=f"recsys-poll-{self.name}", daemon=True).start()
        except RuntimeError:  # interpreter shutting down: nothing to refresh for
            _leave()
            with self._lock:
                self._running = False
                self._idle.notify_all()
            return False
        return True

    @property
    def running(self) -> bool:
        return self._running

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no refresh is running (an event, not a poll).

        Parameters
        ----------
        timeout : float or None, optional
            Seconds to wait at most; None: no limit.

        Returns
        -------
        bool
            True once idle; False on timeout.
        """
        with self._idle:
            return self._idle.wait_for(lambda: not self._running, timeout)

    def _run(self) -> None:
        try:
            self.fn()
        except Exception:  # noqa: BLE001 - the callers log their own failures; never raise here
            log.exception("background poll %s failed", self.name)
        finally:
            with self._lock:
                self._running = False
                self.runs += 1
                self._idle.notify_all()
            _leave()
