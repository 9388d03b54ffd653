"""Bounds on waiting for the SQL store: a socket watchdog and a circuit breaker.

A database that *refuses* (down, restarting) fails fast by itself. One that *hangs* (frozen,
a network path that drops packets, a stalled proxy) does not: the kernel acknowledges what we
send, libpq waits for an answer that never comes, and neither ``connect_timeout`` (connecting
only), PostgreSQL's ``statement_timeout`` (the server is not running) nor TCP keep-alives (the
peer's kernel still answers them) end the wait. So:

* ``SocketWatchdog``: every statement runs with its connection's socket registered under a
  deadline (``DB_STATEMENT_TIMEOUT_MS`` plus a grace, or the request's deadline for the
  history read). One thread per process shuts down (``shutdown(2)``, not ``close``: the file
  descriptor stays the driver's) each socket whose deadline passes; the driver's wait wakes on
  it and raises its ordinary "connection closed" error, and the connection is discarded.
* ``Breaker``: consecutive connection failures and watchdog cuts open it; while open no
  connection is attempted at all (``DatabaseUnavailable`` at once: writes answer 503 with
  ``Retry-After``, reads serve the cache or popularity). After ``reset_s`` exactly one caller
  probes; its success closes the breaker, its failure opens it again. So a dead database costs
  one probe per ``reset_s``, not one timeout per request. The clock is injected for tests.

``guard_engine`` wires both into a SQLAlchemy engine through its events (``do_connect``,
``checkout``, cursor execution), which also replaces SQLAlchemy's ``pool_pre_ping`` with one
the watchdog bounds (SQLAlchemy pings before any hook could arm it).

Over 500 lines only through the numpy-style docstrings of its public API (about 360
lines without them): the code is one unit, not split for length.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy import exc as sa_exc

from recsys.config import Settings
from recsys.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

# Client-side cut of a statement = the server-side statement_timeout + this, so a live but
# slow server answers with its own (clearer) error first.
GRACE_S = 1.0
_WATCH_KEY = "recsys.watch"
_FRESH_KEY = "recsys.fresh"


class Watch:
    """One registered socket; ``expired`` once the watchdog has cut it."""

    __slots__ = ("fd", "deadline", "expired", "done", "lock")

    def __init__(self, fd: int, deadline: float):
        self.fd = fd
        self.deadline = deadline
        self.expired = False
        self.done = False
        self.lock = threading.Lock()

    def __lt__(self, other: Watch) -> bool:
        return self.deadline < other.deadline


def cut_socket(fd: int) -> None:
    """Shut down the socket behind ``fd`` in both directions, leaving ``fd`` itself open (its
    owner closes it; closing it here could close a reused descriptor).

    Parameters
    ----------
    fd : int
        The socket's file descriptor; one already closed or not a socket is ignored.

    Returns
    -------
    None
    """
    dup = os.dup(fd)
    try:
        with socket.socket(fileno=dup) as s:
            s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed or not a socket (nothing to wake)


class SocketWatchdog:
    """Cuts registered sockets whose deadline passes (see the module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.cuts = 0
        self._seq = itertools.count()
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Watch]] = []
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None
        self._sleep_until = -float("inf")  # awake (or starting): it looks at the heap itself

    def _ensure_thread(self) -> None:
        # Called holding self._cond (after the fork check in watch()).
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="recsys-sql-watchdog")
            self._thread.daemon = True
            self._thread.start()

    def watch(self, fd: int, timeout_s: float) -> Watch:
        """Cut the socket ``fd`` unless ``release`` is called within ``timeout_s``.

        Parameters
        ----------
        fd : int
            The socket's file descriptor.
        timeout_s : float
            Seconds from now (by the watchdog's clock) to the deadline; negative counts as 0.

        Returns
        -------
        Watch
            The handle to pass to ``release``.
        """
        w = Watch(fd, self.clock() + max(0.0, timeout_s))
        if self._pid != os.getpid():  # forked: the parent's thread and lock are not ours
            self._reset()
        with self._cond:
            self._ensure_thread()
            heapq.heappush(self._heap, (w.deadline, next(self._seq), w))
            # Wake the thread only if it sleeps past this deadline: under load most watches
            # end long before it wakes, and it then drops them all in one pass.
            if w.deadline < self._sleep_until:
                self._cond.notify()
        return w

    @staticmethod
    def release(w: Watch) -> bool:
        """Stop watching. After this returns the watchdog never touches the socket again.

        Parameters
        ----------
        w : Watch
            The handle ``watch`` returned.

        Returns
        -------
        bool
            True if the socket was cut (the operation timed out).
        """
        with w.lock:
            w.done = True
            return w.expired

    def wake(self) -> None:
        """Look at the deadlines now (after an injected clock moved on).

        Returns
        -------
        None
        """
        with self._cond:
            self._cond.notify()

    @contextmanager
    def armed(self, fd: int | None, timeout_s: float) -> Iterator[Watch | None]:
        """``watch`` for the duration of a ``with`` block, then ``release``.

        Parameters
        ----------
        fd : int or None
            The socket's file descriptor; None or negative: nothing is watched.
        timeout_s : float
            Seconds to the deadline.

        Returns
        -------
        Iterator[Watch or None]
            A context manager yielding the watch (None when nothing is watched).
        """
        if fd is None or fd < 0:
            yield None
            return
        w = self.watch(fd, timeout_s)
        try:
            yield w
        finally:
            self.release(w)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)  # released in time: forget it
                if not self._heap:
                    self._sleep_until = float("inf")
                    self._cond.wait()
                    continue
                wait = self._heap[0][0] - self.clock()
                if wait > 0:
                    self._sleep_until = self._heap[0][0]
                    self._cond.wait(wait)
                    self._sleep_until = -float("inf")  # awake: watches need no notify
                    continue
                _, _, w = heapq.heappop(self._heap)
            with w.lock:
                if w.done:
                    continue
                w.expired = True
                self.cuts += 1
                cut_socket(w.fd)
            log.warning("SQL socket silent past its deadline: cut (fd %d)", w.fd)


class Breaker:
    """A circuit breaker (closed -> open -> one probe -> closed/open); see the module docstring.

    ``allow()`` before using the database, then ``success()`` or ``failure()``. Thread-safe.
    """

    def __init__(
        self,
        failures: int = 1,
        reset_s: float = 5.0,
        probe_lease_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.failures = max(1, int(failures))
        self.reset_s = float(reset_s)
        # A probe that never reports back (its thread died) lets another probe after this.
        self.probe_lease_s = float(probe_lease_s)
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        """Closed, counters zeroed (a forked worker starts with its own view).

        Returns
        -------
        None
        """
        self._lock = threading.Lock()
        self._state = "closed"
        self._consecutive = 0
        self._opened_at = 0.0
        self._probe_at: float | None = None
        self.opened = 0
        self.refused = 0
        self.probes = 0

    @property
    def state(self) -> str:
        return self._state

    def allow(self) -> bool:
        """Whether the database may be used now.

        Closed: yes. Open: no, until ``reset_s`` have passed; then one probe is let through
        (another only if it does not report back within ``probe_lease_s``).

        Returns
        -------
        bool
            True to go ahead (then report ``success`` or ``failure``); False: refused (counted).
        """
        if self._state == "closed":  # the hot path: no lock
            return True
        with self._lock:
            now = self.clock()
            if self._state == "closed":
                return True
            if self._state == "open" and now - self._opened_at >= self.reset_s:
                self._state = "probing"
            if self._state == "probing" and (
                self._probe_at is None or now - self._probe_at >= self.probe_lease_s
            ):
                self._probe_at = now
                self.probes += 1
                return True
            self.refused += 1
            return False

    def success(self) -> None:
        """Report a successful use: the circuit closes and the failure count restarts.

        Returns
        -------
        None
        """
        if self._state == "closed" and not self._consecutive:
            return
        with self._lock:
            if self._state != "closed":
                log.warning("SQL store reachable again: circuit closed")
            self._state, self._consecutive, self._probe_at = "closed", 0, None

    def failure(self, why: str = "") -> None:
        """Report a failed use: the circuit opens after ``failures`` in a row, or at once when the
        probe failed.

        Parameters
        ----------
        why : str, optional
            What failed, for the log line when the circuit opens.

        Returns
        -------
        None
        """
        with self._lock:
            self._consecutive += 1
            if self._state == "probing" or (
                self._state == "closed" and self._consecutive >= self.failures
            ):
                if self._state == "closed":
                    self.opened += 1
                    log.error(
                        "SQL store unavailable (%s): circuit open, retried every %.1f s",
                        why or "failure",
                        self.reset_s,
                    )
                self._state, self._opened_at, self._probe_at = "open", self.clock(), None

    def release_probe(self) -> None:
        """Give the probe back unused: the next ``allow()`` may probe at once (no lease to wait
        out). For a caller whose probe ended without a verdict on the server, e.g. a stale pooled
        connection that is about to be replaced by a fresh one (whose connect then probes).

        Returns
        -------
        None
        """
        with self._lock:
            if self._state == "probing":
                self._probe_at = None

    def retry_after(self) -> int:
        """Whole seconds until the next probe (at least 1): the 503's ``Retry-After``.

        Returns
        -------
        int
            Seconds, at least 1 (1 while closed).
        """
        if self._state == "closed":
            return 1
        left = self.reset_s - (self.clock() - self._opened_at)
        return max(1, int(left + 0.999))

    def check(self) -> None:
        """Raise ``DatabaseUnavailable`` unless ``allow()``.

        Returns
        -------
        None

        Raises
        ------
        DatabaseUnavailable
            The breaker refuses (``retry_after`` set).
        """
        if not self.allow():
            raise DatabaseUnavailable(retry_after=self.retry_after())

    def stats(self) -> dict[str, Any]:
        """The breaker's state and counters since the last ``reset``.

        Returns
        -------
        dict
            ``state`` (``"closed"``, ``"open"`` or ``"probing"``), ``opened``, ``refused`` and
            ``probes`` (counts).
        """
        return {
            "state": self._state,
            "opened": self.opened,
            "refused": self.refused,
            "probes": self.probes,
        }


def socket_fd(dbapi_conn: Any) -> int | None:
    """The socket of a DB-API connection (psycopg).

    Parameters
    ----------
    dbapi_conn : Any
        The raw DB-API connection.

    Returns
    -------
    int or None
        Its file descriptor; None when it has none or it is closed (SQLite: nothing to watch).
    """
    fileno = getattr(dbapi_conn, "fileno", None)
    if fileno is None:
        return None
    try:
        return int(fileno())
    except Exception:  # noqa: BLE001 - closed or broken: nothing to watch
        return None


def guard_engine(
    engine: Engine,
    watchdog: SocketWatchdog,
    breaker: Breaker,
    statement_timeout_s: float,
    pre_ping: bool,
) -> None:
    """Wire the watchdog and the breaker into ``engine`` (see the module docstring).

    Parameters
    ----------
    engine : Engine
        The engine to guard (event listeners are added to it).
    watchdog : SocketWatchdog
        Cuts sockets silent past a statement's deadline.
    breaker : Breaker
        Refuses connections and checkouts while the store is down.
    statement_timeout_s : float
        The server-side statement timeout, in seconds; 0: none (no client-side cut either).
    pre_ping : bool
        Ping a pooled connection on checkout (bounded by the watchdog).

    Returns
    -------
    None
    """
    dbapi = engine.dialect.loaded_dbapi
    # No statement timeout (0: batch work from the CLI): no client-side cut either.
    limit_s = statement_timeout_s + GRACE_S if statement_timeout_s > 0 else None

    @event.listens_for(engine, "do_connect")
    def _connect(dialect, conn_rec, cargs, cparams):
        breaker.check()
        try:
            conn = dialect.loaded_dbapi.connect(*cargs, **cparams)
        except dbapi.Error as e:
            breaker.failure(f"connect: {str(e).splitlines()[0][:200] if str(e) else type(e)}")
            raise
        breaker.success()
        conn_rec.info[_FRESH_KEY] = True
        return conn

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn, conn_rec, proxy):
        if conn_rec.info.pop(_FRESH_KEY, False):
            return  # just connected: do_connect asked the breaker and the server answered
        breaker.check()  # open while this connection sat in the pool: do not use it
        if not pre_ping:
            return
        fd = socket_fd(dbapi_conn) if limit_s is not None else None
        with watchdog.armed(fd, limit_s or 0.0) as w:
            try:
                cur = dbapi_conn.cursor()
                try:
                    cur.execute("SELECT 1")
                finally:
                    cur.close()
            except dbapi.Error as e:
                if w is not None and w.expired:
                    breaker.failure("ping timed out")
                    raise DatabaseUnavailable(retry_after=breaker.retry_after()) from e
                # Says nothing about the server now: the fresh connect below probes it.
                breaker.release_probe()
                # A stale pooled connection (the server restarted): SQLAlchemy discards
                # every connection of this pool from before and connects afresh (once; a
                # failed connect raises its own error, answered 503). ``InvalidatePoolError``
                # is the ``DisconnectionError`` that says so (the class takes no keyword).
                raise sa_exc.InvalidatePoolError(str(e)) from e
        breaker.success()

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn, cursor, statement, parameters, context, executemany):
        if limit_s is None:
            return
        fd = socket_fd(conn.connection.dbapi_connection)
        if fd is not None:
            conn.info[_WATCH_KEY] = watchdog.watch(fd, limit_s)

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn, cursor, statement, parameters, context, executemany):
        w = conn.info.pop(_WATCH_KEY, None)
        if w is not None:
            # Cut just as it answered: the next checkout's ping finds the socket dead.
            watchdog.release(w)
        breaker.success()

    @event.listens_for(engine, "handle_error")
    def _error(ctx):
        conn = ctx.connection
        w = conn.info.pop(_WATCH_KEY, None) if conn is not None else None
        if w is not None and watchdog.release(w):
            ctx.is_disconnect = True
            breaker.failure("statement timed out")
            raise DatabaseUnavailable(
                "the database did not answer in time", retry_after=breaker.retry_after()
            ) from ctx.original_exception


@dataclass
class DbGuard:
    """One process's bounds on the SQL store (shared by its engines)."""

    watchdog: SocketWatchdog
    breaker: Breaker
    connect_timeout_s: float
    statement_timeout_ms: int
    lock_timeout_ms: int
    pool_timeout_s: float

    @classmethod
    def from_config(cls, config: Settings) -> DbGuard:
        """The bounds of ``config`` (the ``DB_*`` settings).

        Parameters
        ----------
        config : Settings
            The app's settings (``recsys.config.get_config``).

        Returns
        -------
        DbGuard
            A guard with its own watchdog and breaker.
        """
        return cls(
            watchdog=SocketWatchdog(),
            breaker=Breaker(
                failures=config.db_breaker_failures,
                reset_s=config.db_breaker_reset_s,
                # The longest a probe can take (connect + statement) before another may go.
                probe_lease_s=config.db_connect_timeout_s
                + config.db_statement_timeout_ms / 1000.0
                + GRACE_S,
            ),
            connect_timeout_s=config.db_connect_timeout_s,
            statement_timeout_ms=config.db_statement_timeout_ms,
            lock_timeout_ms=config.db_lock_timeout_ms,
            pool_timeout_s=config.db_pool_timeout_s,
        )

    @property
    def statement_timeout_s(self) -> float:
        return self.statement_timeout_ms / 1000.0

    def postgres_connect_args(self) -> dict[str, Any]:
        """libpq parameters for the timeouts (connect, statement, lock, TCP).

        Returns
        -------
        dict
            ``connect_timeout`` (whole seconds), ``options`` (``statement_timeout`` and
            ``lock_timeout`` in milliseconds, 0: none) and, with a statement timeout,
            ``tcp_user_timeout`` (milliseconds).
        """
        args: dict[str, Any] = {
            # libpq counts whole seconds (psycopg: at least 2).
            "connect_timeout": max(1, round(self.connect_timeout_s)),
            # 0 means no limit, for PostgreSQL as here.
            "options": (
                f"-c statement_timeout={self.statement_timeout_ms} "
                f"-c lock_timeout={self.lock_timeout_ms}"
            ),
        }
        if self.statement_timeout_ms > 0:
            # A peer that stops acknowledging (a cut network path) drops the connection.
            args["tcp_user_timeout"] = self.statement_timeout_ms + int(GRACE_S * 1000)
        return args

    def apply(self, engine: Engine, pre_ping: bool) -> None:
        """Guard ``engine`` with this guard's watchdog, breaker and statement timeout.

        Parameters
        ----------
        engine : Engine
            The engine to guard.
        pre_ping : bool
            Ping a pooled connection on checkout.

        Returns
        -------
        None
        """
        guard_engine(engine, self.watchdog, self.breaker, self.statement_timeout_s, pre_ping)
