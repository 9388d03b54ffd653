"""gunicorn's threaded worker, with accepted connections balanced across the workers.

gunicorn's workers all wait on one listening socket and whichever wakes first accepts. With
keep-alive clients (a load balancer's upstream pool, an API gateway, a benchmark's fixed set of
connections) every request of a connection then goes to the worker that accepted it, and the
kernel gives no fairness: a burst of new connections often lands on a single worker, which serves
on one core while the others idle. (gunicorn's maintainers call this expected: benoitc/gunicorn
#2817, #3071.) Measured with `bench/serve_bench.py` (8 keep-alive clients of cached
recommendations all on one worker, against /healthz spread evenly): docs/design-notes.md.

:class:`BalancedThreadWorker` keeps gunicorn's ``gthread`` worker and adds one rule: a worker
takes a new connection only while it holds no more open connections than the least loaded of its
live siblings. Each worker publishes its connection count in a small shared-memory table that the
master creates before forking (this module is imported by the master when gunicorn resolves the
worker class). A worker over its share stops listening and looks again every
``RECHECK_S`` and after each of its own events, so a waiting connection is taken by a sibling at
once, or by this worker as soon as it is no longer over its share. A sibling that died without
cleaning up (SIGKILL) is noticed by its pid and ignored. ``RECSYS_BALANCE_ACCEPT=false`` turns
the rule off (plain ``gthread``); with one worker it never applies.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os

from gunicorn import util
from gunicorn.http.errors import UnsupportedTransferCoding
from gunicorn.workers.gthread import ThreadWorker

log = logging.getLogger(__name__)

#: Most workers one master can balance (slots in the shared table); more are served unbalanced.
MAX_WORKERS = 256
#: How often (seconds) a worker that stopped accepting checks whether it may take connections.
RECHECK_S = 0.01

# Created at import, in the master, so every forked worker shares the same memory.
# Slot i: pid of the worker holding it (0 = free) and that worker's open connections.
_PIDS = multiprocessing.RawArray("q", MAX_WORKERS)
_CONNS = multiprocessing.RawArray("q", MAX_WORKERS)
_SLOTS_LOCK = multiprocessing.Lock()
# One past the highest slot ever claimed: scans stop there instead of at MAX_WORKERS.
_HIGH = multiprocessing.RawValue("q", 0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else: not ours, but alive
        return True
    return True


def claim_slot(pid: int) -> int | None:
    """Take a free slot (or one whose holder died) for ``pid``.

    Parameters
    ----------
    pid : int
        The worker process id that holds the slot.

    Returns
    -------
    int or None
        The slot index; None if the table is full.
    """
    with _SLOTS_LOCK:
        for i in range(MAX_WORKERS):
            holder = _PIDS[i]
            if holder == 0 or holder == pid or not _alive(holder):
                _PIDS[i] = pid
                _CONNS[i] = 0
                _HIGH.value = max(_HIGH.value, i + 1)
                return i
    return None


def release_slot(slot: int, pid: int) -> None:
    """Free ``slot`` if ``pid`` still holds it (a slot taken over since is left alone).

    Parameters
    ----------
    slot : int
        The slot index ``claim_slot`` returned.
    pid : int
        The worker process id that claimed it.

    Returns
    -------
    None
    """
    with _SLOTS_LOCK:
        if _PIDS[slot] == pid:
            _PIDS[slot] = 0
            _CONNS[slot] = 0


def fewest_elsewhere(slot: int) -> int | None:
    """The smallest connection count among the other live workers.

    Slots of workers that died without releasing them are freed on the way.

    Parameters
    ----------
    slot : int
        This worker's slot, left out of the comparison.

    Returns
    -------
    int or None
        The fewest open connections of any other live worker; None: no other worker.
    """
    best = None
    for i in range(_HIGH.value):
        pid = _PIDS[i]
        if i == slot or pid == 0:
            continue
        n = _CONNS[i]
        if best is None or n < best:
            if not _alive(pid):  # died without releasing (SIGKILL): free it
                release_slot(i, pid)
                continue
            best = n
    return best


def balance_enabled() -> bool:
    """Whether accept balancing is on (``RECSYS_BALANCE_ACCEPT``, default true).

    Returns
    -------
    bool
        False when the variable is ``0``, ``false``, ``no`` or ``off``.
    """
    return os.environ.get("RECSYS_BALANCE_ACCEPT", "true").strip().lower() not in {
        "0",
        "false",
        "no",
        "off",
    }


class _CapturedErrorPage:
    """Stands in for the client socket while gunicorn writes its own (HTML) error page, so that
    the page can be sent as JSON instead; see ``BalancedThreadWorker.handle_error``."""

    def __init__(self):
        self.data = b""

    def gettimeout(self):
        return 0.0

    def setblocking(self, flag):
        pass

    def sendall(self, data):
        self.data += data

    send = sendall


def json_error_page(page: bytes, exc: BaseException | None = None) -> bytes | None:
    """gunicorn's HTML error response as our JSON error shape (recsys.web.errors).

    A request whose framing gunicorn refuses is a 400 whatever gunicorn answers, with one
    exception kept as gunicorn sends it: the limits, 414 (request line) and 431 (headers), which
    name what to shorten. So a transfer coding gunicorn does not implement is a 400 here, not
    gunicorn's 501 (RFC 9112 6.1 says SHOULD 501; a client's bad framing must not count as a
    server error, and it cannot be retried into working).

    Parameters
    ----------
    page : bytes
        The raw HTTP response gunicorn wrote (status line, headers, HTML body).
    exc : BaseException, optional
        What gunicorn raised while reading the request: its message goes in the description.

    Returns
    -------
    bytes or None
        The same status (400 for an unsupported transfer coding) as a complete HTTP response
        with a JSON body; None when the status line cannot be parsed.
    """
    head, _, _ = page.partition(b"\r\n")
    parts = head.decode("latin-1").split(" ", 2)
    if len(parts) < 3 or not parts[1].isdigit():
        return None
    code, reason = int(parts[1]), parts[2]
    if isinstance(exc, UnsupportedTransferCoding):
        code, reason = 400, "Bad Request"
    description = {
        414: "request line too long (URL and query); see gunicorn's limit_request_line",
        431: "request headers too many or too large; see gunicorn's limit_request_fields",
    }.get(code, f"{reason}: the server could not read this request")
    if exc is not None and code < 500 and (said := " ".join(str(exc).split())[:200]):
        description += f" ({type(exc).__name__}: {said})"
    body = json.dumps({"code": code, "name": reason, "description": description}).encode()
    return (
        f"HTTP/1.1 {code} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1") + body


class BalancedThreadWorker(ThreadWorker):
    """``gthread`` that accepts only while it is among the least loaded workers (see module)."""

    _slot: int | None = None

    def handle_error(self, req, client, addr, exc):
        """See ``ThreadWorker.handle_error``: gunicorn decides and logs as usual, the page it
        writes is sent in the API's JSON error shape.
        """
        # gunicorn answers what it refuses itself (a request line over limit_request_line:
        # 414, too many or too large headers: 431, malformed requests: 400) with an HTML page.
        # Let it decide and log as usual, then send the same status in the API's JSON shape
        # (an unsupported transfer coding: 400, not 501; see json_error_page).
        captured = _CapturedErrorPage()
        super().handle_error(req, captured, addr, exc)
        page = json_error_page(captured.data, exc) if captured.data else None
        try:
            if page is not None:
                util.write_nonblock(client, page)
            elif captured.data:
                util.write_nonblock(client, captured.data)
        except Exception:  # noqa: BLE001 - as gunicorn: the client may be gone
            self.log.debug("Failed to send error message.")

    def _balancing(self) -> bool:
        return self._slot is not None

    def _publish(self) -> None:
        if self._slot is not None:
            _CONNS[self._slot] = self.nr_conns

    def _over_share(self) -> bool:
        fewest = fewest_elsewhere(self._slot)
        return fewest is not None and self.nr_conns > fewest

    def run(self):
        """See ``ThreadWorker.run``: claims a balancing slot first (several workers, balancing on,
        gunicorn >= 24) and releases it on exit.
        """
        # Runs in the worker after fork (init_process ends by calling run()).
        if (
            self.cfg.workers > 1
            and balance_enabled()
            and hasattr(ThreadWorker, "set_accept_enabled")  # the gunicorn >= 24 event loop
        ):
            self._slot = claim_slot(self.pid)
            if self._slot is None:
                log.warning("more than %d workers: this one accepts unbalanced", MAX_WORKERS)
        try:
            super().run()
        finally:
            if self._slot is not None:
                release_slot(self._slot, self.pid)
                self._slot = None

    def set_accept_enabled(self, enabled):
        """See ``ThreadWorker.set_accept_enabled``: declines to enable accepting while this worker
        holds more connections than a sibling.
        """
        # The base loop asks to (re-)enable accepting whenever it has room; decline while this
        # worker holds more connections than a sibling. It asks again on the next iteration.
        if enabled and self._balancing() and self.alive:
            self._publish()
            if self._over_share():
                enabled = False
        super().set_accept_enabled(enabled)

    def accept(self, listener):
        """See ``ThreadWorker.accept``: a worker over its share leaves the connection in the
        backlog for a sibling.
        """
        # Checked before taking the connection: a worker over its share leaves it in the backlog,
        # where a sibling (woken by the same readiness) takes it.
        if self._balancing():
            self._publish()
            if self._over_share():
                super().set_accept_enabled(False)
                return
        super().accept(listener)
        self._publish()

    def wait_for_and_dispatch_events(self, timeout):
        """See ``ThreadWorker.wait_for_and_dispatch_events``: publishes this worker's connection
        count, and looks again soon while paused only for balance.
        """
        if self._balancing():
            self._publish()
            if not self._accepting and self.alive and self.nr_conns < self.worker_connections:
                timeout = min(timeout, RECHECK_S)  # paused only for balance: look again soon
        super().wait_for_and_dispatch_events(timeout)
        if self._balancing():
            self._publish()
