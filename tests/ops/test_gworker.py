"""recsys.ops.gworker.BalancedThreadWorker: keep-alive connections spread evenly over gunicorn
workers.

The server tests run real gunicorn (2 workers) on a three-line WSGI app that answers with its
worker's pid, so they need neither a database nor models.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys

import pytest

from recsys.ops import gworker
from tests.procs import free_port, stop_process
from tests.waiting import HANG_GUARD_S, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PID_APP = """
import os
def app(environ, start_response):
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def _get(sock: socket.socket) -> int:
    """One keep-alive GET / on an open connection; the answering worker's pid."""
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, "connection closed"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":", 1)[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
    )
    while len(body) < length:
        body += sock.recv(4096)
    return int(body)


class PidServer:
    def __init__(self, tmp_path, worker_class: str, workers: int = 2, env: dict | None = None):
        (tmp_path / "pidapp.py").write_text(PID_APP)
        (tmp_path / "empty.conf.py").write_text("")  # not the project's gunicorn.conf.py
        self.port = free_port()
        self.log = open(tmp_path / "gunicorn.log", "w")
        cmd = [
            sys.executable, "-m", "gunicorn",
            "-c", str(tmp_path / "empty.conf.py"),
            "--chdir", str(tmp_path),
            "--bind", f"127.0.0.1:{self.port}",
            "--workers", str(workers),
            "--threads", "4",
            "--keep-alive", "30",
            "--worker-class", worker_class,
            "pidapp:app",
        ]  # fmt: skip
        full_env = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=self.log, stderr=self.log)
        self.workers = workers

    def worker_pids(self) -> set[int]:
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True
        ).stdout
        return {int(p) for p in out.split()}

    def wait_workers(self, timeout: float = HANG_GUARD_S) -> set[int]:
        """Every worker answering (new connections until each pid has been seen)."""
        seen: set[int] = set()

        def all_answered() -> bool:
            pids = self.worker_pids()
            if len(pids) != self.workers:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    seen.add(_get(s))
            except OSError:
                return False
            return seen >= pids

        try:
            wait_until(all_answered, "every gunicorn worker answering", timeout)
        except AssertionError:
            self.stop()
            log = open(self.log.name).read()[-3000:]
            pytest.fail("gunicorn workers did not all answer:\n" + log)
        self.wait_connections_closed()
        return self.worker_pids()

    def open_connections(self) -> int:
        """Server-side TCP connections on the port the workers still hold open (ESTABLISHED,
        CLOSE_WAIT, SYN_RECV), from /proc/net/tcp: 0 once every closed connection has been
        handled and closed by its worker (and taken off its count)."""
        n = 0
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                port = int(fields[1].rsplit(":", 1)[1], 16)
                if port == self.port and fields[3] in ("01", "03", "08"):
                    n += 1
        return n

    def wait_connections_closed(self) -> None:
        wait_until(lambda: self.open_connections() == 0, "workers closing finished connections")

    def stop(self) -> None:
        stop_process(self.proc, self.log)


@pytest.fixture
def pid_server(tmp_path):
    servers = []

    def start(worker_class="recsys.ops.gworker.BalancedThreadWorker", **kw) -> PidServer:
        s = PidServer(tmp_path, worker_class, **kw)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def _burst(port: int, n: int) -> tuple[list[socket.socket], collections.Counter]:
    """Open n connections at once, then one request on each: connections per worker pid."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]
    return socks, collections.Counter(_get(s) for s in socks)


def test_keepalive_connections_are_spread_evenly(pid_server):
    srv = pid_server()
    pids = srv.wait_workers()  # and the probes' connections are closed
    for _round in range(3):
        socks, per_worker = _burst(srv.port, 8)
        try:
            assert set(per_worker) == pids, per_worker  # both workers serve
            assert max(per_worker.values()) - min(per_worker.values()) <= 1, per_worker
            # Keep-alive: every later request on a connection stays with its worker.
            again = collections.Counter(_get(s) for s in socks for _ in range(3))
            assert again == collections.Counter({p: 3 * c for p, c in per_worker.items()})
        finally:
            for s in socks:
                s.close()
        srv.wait_connections_closed()  # closed connections leave the counts before the next


def test_more_connections_than_threads_are_all_served(pid_server):
    # 2 workers x 4 threads and 24 open keep-alive connections: nobody waits forever for a
    # worker to take it, and the spread stays even.
    srv = pid_server()
    srv.wait_workers()
    socks, per_worker = _burst(srv.port, 24)
    try:
        assert sum(per_worker.values()) == 24
        assert max(per_worker.values()) - min(per_worker.values()) <= 1, per_worker
    finally:
        for s in socks:
            s.close()


def test_a_killed_worker_does_not_stop_the_others_accepting(pid_server):
    srv = pid_server()
    pids = srv.wait_workers()
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)  # no chance to release its slot
    wait_until(
        lambda: victim not in (now := srv.worker_pids()) and len(now) == 2, "a new worker forked"
    )
    pids = srv.wait_workers()
    assert victim not in pids
    socks, per_worker = _burst(srv.port, 6)
    try:
        assert set(per_worker) == pids and sorted(per_worker.values()) == [3, 3], per_worker
    finally:
        for s in socks:
            s.close()


def test_switch_off_gives_plain_gthread(pid_server):
    srv = pid_server(env={"RECSYS_BALANCE_ACCEPT": "false"})
    pids = srv.wait_workers()
    socks, per_worker = _burst(srv.port, 8)
    try:
        assert sum(per_worker.values()) == 8 and set(per_worker) <= pids
    finally:
        for s in socks:
            s.close()


# -- the shared slot table, in this process -----------------------------------------------------
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture
def slots():
    saved = list(gworker._PIDS), list(gworker._CONNS), gworker._HIGH.value
    for i in range(gworker.MAX_WORKERS):
        gworker._PIDS[i] = gworker._CONNS[i] = 0
    gworker._HIGH.value = 0
    yield
    gworker._PIDS[:], gworker._CONNS[:] = saved[0], saved[1]
    gworker._HIGH.value = saved[2]


def test_slots_claim_release_and_dead_holders(slots):
    me = os.getpid()
    dead = _dead_pid()
    a = gworker.claim_slot(me)
    assert gworker.fewest_elsewhere(a) is None  # alone: always accepts
    b = gworker.claim_slot(dead)
    assert a != b
    gworker._CONNS[a], gworker._CONNS[b] = 5, 1
    # The dead holder's low count must not hold this worker back, and its slot is freed.
    assert gworker.fewest_elsewhere(a) is None
    assert gworker._PIDS[b] == 0
    # A live sibling (this test's parent shell stands in) with fewer connections does.
    sibling = gworker.claim_slot(os.getppid())
    gworker._CONNS[sibling] = 2
    assert gworker.fewest_elsewhere(a) == 2
    gworker.release_slot(sibling, os.getppid())
    assert gworker.fewest_elsewhere(a) is None
    # A slot whose holder died is reused.
    c = gworker.claim_slot(_dead_pid())
    d = gworker.claim_slot(me)  # the same pid again gets its own slot back
    assert d == a and c != a


def test_balance_switch(monkeypatch):
    monkeypatch.delenv("RECSYS_BALANCE_ACCEPT", raising=False)
    assert gworker.balance_enabled()
    for off in ("false", "0", "off", "No"):
        monkeypatch.setenv("RECSYS_BALANCE_ACCEPT", off)
        assert not gworker.balance_enabled()


# -- gunicorn's own error pages -------------------------------------------------------------------
def _raw_response(port: int, request: bytes) -> tuple[int, dict, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize(
    "request_bytes,code",
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: t\r\n" + b"X-H: v\r\n" * 200 + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n", 431),
        (b"NOT A REQUEST\r\n\r\n", 400),
    ],
    ids=["uri-too-long", "too-many-headers", "header-too-large", "malformed"],
)
def test_gunicorns_own_errors_are_json(pid_server, request_bytes, code):
    import json

    srv = pid_server()
    srv.wait_workers()
    status, headers, body = _raw_response(srv.port, request_bytes)
    assert status == code and headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert doc["code"] == code and doc["name"] and doc["description"]
    assert int(headers["content-length"]) == len(body)


def test_error_page_translation():
    page = gworker.json_error_page(b"HTTP/1.1 414 URI Too Long\r\nConnection: close\r\n\r\n<h1>")
    assert page.startswith(b"HTTP/1.1 414 URI Too Long\r\n") and b'"code": 414' in page
    assert gworker.json_error_page(b"garbage") is None


# -- slow clients and the accept balance (an injected clock, no server) ---------------------------
class _FakePoller:
    def __init__(self):
        self.registered = set()

    def register(self, sock, _events, _callback):
        self.registered.add(sock)

    def unregister(self, sock):
        self.registered.remove(sock)


class _FakeConn:
    def __init__(self):
        self.sock = object()
        self.recsys_buf = bytearray(b"GET / HTTP/1.1\r\nX-A: ")
        self.recsys_deadline = float("inf")
        self.closed = False

    def close(self):
        self.closed = True


def test_slow_clients_waiting_in_the_reading_stage_leave_the_balance(monkeypatch):
    # Three connections park in the reading stage (their requests are not all there) beside two
    # that are being served. Right after parking they still count (a new client that sends its
    # request at once must count, or a burst of them would all land on one worker); once they
    # have waited SETTLE_S they count no more, so slow clients cannot tip the balance that places
    # later keep-alive clients.
    from concurrent.futures import Future

    clock = [100.0]
    monkeypatch.setattr(gworker, "_now", lambda: clock[0])
    w = gworker.BalancedThreadWorker.__new__(gworker.BalancedThreadWorker)
    w.alive, w.poller, w._reading, w.nr_conns = True, _FakePoller(), {}, 5
    waiting = Future()
    waiting.set_result(gworker._WAIT)
    slow = [_FakeConn() for _ in range(3)]
    for conn in slow:
        w.finish_request(conn, waiting)
    assert w.load() == 5
    clock[0] += gworker.SETTLE_S / 2
    w._sweep()
    assert w.load() == 5
    late = _FakeConn()
    w.finish_request(late, waiting)
    w.nr_conns += 1
    clock[0] += gworker.SETTLE_S / 2 + gworker.SWEEP_S
    w._sweep()
    assert w.load() == 6 - 3  # the three that waited long enough; the late one still counts
    # A settled connection that goes away leaves both counts.
    w._drop_reading(slow[0])
    assert slow[0].closed and w.nr_conns == 5 and w.load() == 3
    clock[0] += gworker.SETTLE_S
    w._sweep()
    assert w.load() == 2  # now the late one too: only the two being served


def test_kept_alive_connections_idle_for_long_leave_the_balance(monkeypatch):
    # Kept-alive connections idle between requests cost no thread either: one idle over
    # SETTLE_S leaves the balance at the next sweep (gunicorn keeps them oldest first, each
    # with its deadline `keepalive` seconds after its last answer).
    import collections
    import types

    clock = [200.0]
    monkeypatch.setattr(gworker, "_now", lambda: clock[0])
    w = gworker.BalancedThreadWorker.__new__(gworker.BalancedThreadWorker)
    w.alive, w._reading, w.nr_conns = True, None, 4
    w.cfg = types.SimpleNamespace(keepalive=5)
    answered_at = [199.0, 199.7, 200.0]  # idle 1 s, 0.3 s, just answered
    w.keepalived_conns = collections.deque(
        types.SimpleNamespace(timeout=t + 5) for t in answered_at
    )
    w._sweep()
    assert w.load() == 4 - 1
    clock[0] += gworker.SETTLE_S / 2
    w._sweep()
    assert w.load() == 4 - 2
    w.keepalived_conns.popleft()  # its next request arrived: counted again (at the next sweep)
    clock[0] += gworker.SWEEP_S
    w._sweep()
    assert w.load() == 4 - 1
