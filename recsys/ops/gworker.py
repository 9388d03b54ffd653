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
live siblings (plus ``BALANCE_SLACK`` of that count, none under 16). Connections that have waited
in the reading stage (below), or idle between kept-alive requests, for over ``SETTLE_S`` are not
counted: they hold no thread, and counting them let a few hundred slow clients tip the balance
so that later keep-alive clients all landed on one worker. Each worker publishes its count in a
small shared-memory table that the master creates before forking (this module is imported by
the master when gunicorn resolves the worker class). A worker over its share stops listening and
looks again every ``RECHECK_S`` and after each of its own events, so a waiting connection is
taken by a sibling at once, or by this worker as soon as it is no longer over its share. A
sibling that died without cleaning up (SIGKILL) is noticed by its pid and ignored.
``RECSYS_BALANCE_ACCEPT=false`` turns the rule off (plain ``gthread``); with one worker it never
applies.

It also makes sure a thread never waits on a client (the *reading stage*): gthread hands a new
connection to a thread, which then blocked on the socket until the client had sent its headers
and body, so a few slow or idle clients held every thread (issue 30). Here the thread first reads
what is already there without blocking; when ``recsys.ops.framing.request_ready`` says that is a
whole request (or malformed, or over a limit: gunicorn's parser and the app answer those as
before), it serves it at once, which is the common case. Otherwise the connection goes back to
the worker's event loop, which reads the rest as it arrives and hands it to a thread only when it
is complete. A connection whose headers do not arrive within ``RECSYS_CLIENT_TIMEOUT``, or whose
body stalls that long, is closed. Why this and not a gunicorn setting, another worker class or
another server, with the figures: docs/slow-clients.md.

Per request it also writes less: the response's header block goes out with its body in one
``sendall``, its ``Date`` made once a second, and a request without a body skips gunicorn's
drain (``recsys.ops.wire``; ``handle_request`` is gunicorn's, with that response class).
gunicorn parses requests with its C parser, the ``gunicorn-h1c`` dependency, which it picks by
itself (``http_parser = "auto"``). Measured: docs/benchmarks.md, "The worker's floor".

About 650 lines with its docstrings; about 330 lines of code.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import select
import selectors
import socket
import sys
import time
from datetime import datetime
from functools import partial

from gunicorn import util
from gunicorn.http import wsgi
from gunicorn.http.errors import UnsupportedTransferCoding
from gunicorn.workers.gthread import ThreadWorker

from recsys.ops.framing import request_ready
from recsys.ops.wire import OneWriteResponse, body_left

log = logging.getLogger(__name__)

#: Most workers one master can balance (slots in the shared table); more are served unbalanced.
MAX_WORKERS = 256
#: How often (seconds) a worker that stopped accepting checks whether it may take connections.
RECHECK_S = 0.01
#: How many connections, as a fraction of the least loaded sibling's (rounded down, so none
#: under 16), a worker may hold over that sibling and still accept. Without it a burst of new
#: connections (hundreds of slow clients) was taken one per worker per ``RECHECK_S``, as the
#: workers took turns: ~200 accepts/s, and a /healthz probe behind them waited over a second.
BALANCE_SLACK = 1 / 16
#: ``RECSYS_CLIENT_TIMEOUT`` when the app has no recsys configuration (a bare WSGI app).
DEFAULT_CLIENT_TIMEOUT = 5.0
#: Body bytes the reading stage buffers when the app sets no body limit.
DEFAULT_BUFFERED_BODY = 1 << 20
#: What ``handle`` returns for a connection whose request is not all there yet.
_WAIT = object()
#: How often (seconds) the reading stage looks for connections past their client timeout.
SWEEP_S = 0.1
#: Seconds a connection waits in the reading stage before it leaves the accept balance. A client
#: that opens a connection and sends its request at once is counted (it will take a thread);
#: one still waiting for its request after this long is a slow or idle client, which costs a
#: socket but no thread, and counting it let a few hundred of them tip the balance so that
#: every later keep-alive client landed on one worker (one core for the legitimate traffic).
SETTLE_S = 0.5
#: The clock (injected in tests).
_now = time.monotonic

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


def client_limits(app) -> tuple[float, int]:
    """The reading stage's client timeout and buffered-body limit for ``app``.

    Parameters
    ----------
    app : object
        The WSGI app gunicorn loaded: a recsys Flask app (its configuration is read), or any
        other WSGI callable (``RECSYS_CLIENT_TIMEOUT`` from the environment, else the default).

    Returns
    -------
    tuple of (float, int)
        Seconds a connection may send nothing before it is closed, and the body bytes the
        stage buffers before handing a request over (the app's ``MAX_BODY_BYTES``).
    """
    from recsys.config import get_config

    try:
        config = get_config(app)
    except Exception:  # noqa: BLE001 - not a recsys app
        try:
            timeout = float(os.environ.get("RECSYS_CLIENT_TIMEOUT", DEFAULT_CLIENT_TIMEOUT))
        except ValueError:
            timeout = DEFAULT_CLIENT_TIMEOUT
        return timeout, DEFAULT_BUFFERED_BODY
    return float(config.client_timeout), config.max_body_bytes or DEFAULT_BUFFERED_BODY


class _TimedSource:
    """The socket as gunicorn's parser reads it in a request thread, with each read bounded.

    A request is handed to a thread complete, so the thread reads the socket only for what the
    reading stage leaves to it (a body past the buffered limit, or one sent after
    ``100 Continue``). A client that then sends nothing for the client timeout is treated as
    gone: its reading side is shut and the read returns end of stream.
    """

    def __init__(self, sock, timeout: float):
        self._sock = sock
        self._timeout = timeout

    def recv(self, size):
        """``socket.recv`` that gives up (end of stream) after the client timeout."""
        poll = select.poll()
        poll.register(self._sock, select.POLLIN)
        if not poll.poll(self._timeout * 1000):
            try:
                self._sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass
            return b""
        return self._sock.recv(size)

    def __getattr__(self, name):
        return getattr(self._sock, name)


class BalancedThreadWorker(ThreadWorker):
    """``gthread`` that accepts only while it is among the least loaded workers (see module)."""

    _slot: int | None = None
    #: Connections in the reading stage (insertion-ordered); None: the stage is off.
    _reading: dict | None = None
    _client_timeout = DEFAULT_CLIENT_TIMEOUT
    _max_head = 1 << 20
    _max_body = DEFAULT_BUFFERED_BODY
    _next_sweep = 0.0
    #: Connections of the reading stage that have waited there over ``SETTLE_S``.
    _settled = 0
    #: Kept-alive connections idle over ``SETTLE_S`` at the last sweep (out of the balance too).
    _idle_settled = 0

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

    # -- the reading stage: a request thread only ever sees a complete request ---------------

    def _start_reading_stage(self) -> None:
        # The stage reads plain HTTP/1.1 off the socket: not TLS, not HTTP/2 with prior knowledge
        # (whose preface gunicorn reads from the socket itself).
        if self.cfg.is_ssl or getattr(self.cfg, "http2_cleartext", None) in (
            "prior-knowledge",
            "both",
        ):
            return
        self._client_timeout, self._max_body = client_limits(self.wsgi)
        cfg = self.cfg
        if cfg.limit_request_line and cfg.limit_request_fields and cfg.limit_request_field_size:
            head = cfg.limit_request_line + cfg.limit_request_fields * (
                cfg.limit_request_field_size + 2
            )
            self._max_head = max(head + 4, 64 << 10)
        self._reading = {}

    def _first_look(self, conn) -> str | None:
        """In the request thread: read what is already there without waiting (most requests
        arrive whole). "ready", "gone", or None: the stage must wait for the rest."""
        buf = bytearray()
        if conn.parser is not None:  # read ahead of the last request (pipelined)
            buf += conn.parser.unreader.take_buffered()
        conn.sock.setblocking(False)
        conn.recsys_buf = buf
        conn.recsys_deadline = _now() + self._client_timeout
        if buf and request_ready(buf, self._max_head, self._max_body):
            return "ready"
        return self._receive(conn)

    def _receive(self, conn) -> str | None:
        """Read what is there: "ready" (a whole request), "gone" (closed) or None (wait)."""
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return "gone"
        buf = conn.recsys_buf
        if not data:
            # The client closed its side. Nothing sent: the connection is gone. Part of a
            # request: the parser reads the end of the stream and answers the framing error
            # (400 JSON) on the half the client still reads.
            return "ready" if buf else "gone"
        buf += data
        if b"\r\n\r\n" in buf:
            # Reading the body: the client timeout counts from its last bytes. The head is not
            # extended: it must arrive whole within one timeout, or a client trickling a header
            # byte at a time would hold its socket for ever.
            conn.recsys_deadline = _now() + self._client_timeout
        return "ready" if request_ready(buf, self._max_head, self._max_body) else None

    def _read_some(self, conn, _sock=None) -> None:
        state = self._receive(conn)
        if state == "gone":
            self._drop_reading(conn)
        elif state == "ready":
            self.poller.unregister(conn.sock)
            self._leave_stage(conn)
            self._hand_over(conn)

    def _leave_stage(self, conn) -> None:
        if self._reading.pop(conn, False):  # True: it had settled (left the balance)
            self._settled -= 1

    def _hand_over(self, conn) -> None:
        conn._recsys_ready = True  # pylint: disable=protected-access
        self.enqueue_req(conn)

    def _drop_reading(self, conn) -> None:
        self._leave_stage(conn)
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        self.nr_conns -= 1
        conn.close()

    def finish_request(self, conn, fs):
        """See ``ThreadWorker.finish_request``: a connection whose request is not all there yet
        waits in the reading stage, on this loop, not in a thread.
        """
        if not fs.cancelled() and fs.exception() is None and fs.result() is _WAIT:
            # (A stopping worker's sweep closes it at once if it holds no bytes yet.)
            self._reading[conn] = False  # True once settled
            conn.recsys_parked = _now()
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._read_some, conn))
            return
        super().finish_request(conn, fs)

    def _sweep(self) -> None:
        """Close connections of the reading stage that sent nothing for the client timeout
        (all of them at once when the worker is stopping and they hold no bytes), and take
        those that waited over ``SETTLE_S`` out of the accept balance; count the kept-alive
        connections idle that long too."""
        now = _now()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_S
        self._idle_settled = self._count_idle(now)
        if not self._reading:
            return
        settle_before = now - SETTLE_S
        for conn, settled in list(self._reading.items()):
            if conn.recsys_deadline <= now or (not self.alive and not conn.recsys_buf):
                self._drop_reading(conn)
            elif not settled and conn.recsys_parked <= settle_before:
                self._reading[conn] = True
                self._settled += 1

    def _kept_alive(self):
        return getattr(self, "keepalived_conns", None)

    def _count_idle(self, now: float) -> int:
        """Kept-alive connections idle between requests for over ``SETTLE_S`` (gunicorn keeps
        them oldest first, each with its deadline ``keepalive`` seconds after its last answer)."""
        keep = self._kept_alive()
        if not keep:
            return 0
        latest = now - SETTLE_S + self.cfg.keepalive  # deadline of one idle exactly SETTLE_S
        n = 0
        for conn in keep:
            if conn.timeout > latest:
                break
            n += 1
        return n

    def handle(self, conn):
        """See ``ThreadWorker.handle``: the request the reading stage buffered is put in front
        of the parser, and every further socket read is bounded by the client timeout.
        """
        if self._reading is not None and not conn.__dict__.pop("_recsys_ready", False):
            state = self._first_look(conn)
            if state is None:
                return _WAIT  # finish_request puts it in the stage
            if state == "gone":
                conn.__dict__.pop("recsys_buf", None)
                return False
        buf = conn.__dict__.pop("recsys_buf", None)
        if buf is not None:
            conn.data_ready = True  # no waiting for a first byte: the request is here
            if not conn.initialized:
                conn.sock.setblocking(True)
                conn.init()
            unreader = conn.parser.unreader
            unreader.unread(bytes(buf))
            if not isinstance(getattr(unreader, "sock", None), _TimedSource):
                unreader.sock = _TimedSource(unreader.sock, self._client_timeout)
        return super().handle(conn)

    def _keepalive_after(self, conn, keepalive):
        """See ``ThreadWorker._keepalive_after``: a request with no body bytes left has nothing
        to drain (``recsys.ops.wire.body_left``)."""
        if keepalive and not body_left(conn.parser.mesg):
            return True
        return super()._keepalive_after(conn, keepalive)

    def handle_request(self, req, conn):
        """``ThreadWorker.handle_request``, with the response's header block sent together with
        its body (``recsys.ops.wire.OneWriteResponse``) and gunicorn's own access log timed only
        when it is on. Same hooks, same keep-alive and error handling.

        Parameters
        ----------
        req : gunicorn.http.Request
            The parsed request.
        conn : TConn
            Its connection.

        Returns
        -------
        bool
            Whether the connection is kept alive (as ``ThreadWorker.handle_request``).
        """
        environ = {}
        resp = None
        cfg = self.cfg
        try:
            cfg.pre_request(self, req)
            timed = getattr(self.log, "access_log_enabled", True)  # gunicorn < 27: always
            request_start = datetime.now() if timed else None
            resp, environ = wsgi.create(req, conn.sock, conn.client, conn.server, cfg)
            if type(resp) is wsgi.Response:
                resp.__class__ = OneWriteResponse  # no state of its own: a safe swap
            environ["wsgi.multithread"] = True
            self.nr += 1
            if self.nr >= self.max_requests:
                if self.alive:
                    self.log.info("Autorestarting worker after current request.")
                    self.alive = False
                resp.force_close()
            if not self.alive or not cfg.keepalive:
                resp.force_close()
            elif len(self.keepalived_conns) >= self.max_keepalived:
                resp.force_close()
            respiter = self.wsgi(environ, resp.start_response)
            try:
                if isinstance(respiter, environ["wsgi.file_wrapper"]):
                    resp.write_file(respiter)
                else:
                    for item in respiter:
                        resp.write(item)
                resp.close()
            finally:
                if timed:
                    self.log.access(resp, req, environ, datetime.now() - request_start)
                if hasattr(respiter, "close"):
                    respiter.close()
            if resp.should_close():
                self.log.debug("Closing connection.")
                return False
        except OSError:
            util.reraise(*sys.exc_info())
        except (Exception, SystemExit):
            if resp and resp.headers_sent:
                # As gunicorn: a started response cannot be followed by a 500 on the socket.
                self.log.exception("Error handling request")
                util.close_graceful(conn.sock)
                raise StopIteration() from None
            raise
        finally:
            try:
                cfg.post_request(self, req, environ, resp)
            except Exception:  # noqa: BLE001 - as gunicorn
                self.log.exception("Exception in post_request hook")
        return True

    def _balancing(self) -> bool:
        return self._slot is not None

    def load(self) -> int:
        """The connections this worker counts in the accept balance.

        Returns
        -------
        int
            Open connections, less those that have waited in the reading stage, or idle
            between kept-alive requests, for over ``SETTLE_S`` (slow or idle clients: a socket
            each, never a thread; the idle ones counted at the last sweep).
        """
        return max(0, self.nr_conns - self._settled - self._idle_settled)

    def _publish(self) -> None:
        if self._slot is not None:
            _CONNS[self._slot] = self.load()

    def _over_share(self) -> bool:
        fewest = fewest_elsewhere(self._slot)
        return fewest is not None and self.load() > fewest + int(fewest * BALANCE_SLACK)

    def run(self):
        """See ``ThreadWorker.run``: claims a balancing slot first (several workers, balancing on,
        gunicorn >= 24) and releases it on exit.
        """
        # Runs in the worker after fork (init_process ends by calling run()).
        self._start_reading_stage()
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
        if self._reading or self._kept_alive():
            timeout = min(timeout, SWEEP_S)
        super().wait_for_and_dispatch_events(timeout)
        self._sweep()
        if self._balancing():
            self._publish()
