"""CPU per request of the whole worker path, in one process and one thread, no load generator.

``bench/serve_bench.py`` and ``bench/ab_trees.py`` measure requests per second under gunicorn
and wrk, which a shared 2-core machine makes noisy (the client, the other helpers' jobs and the
server share the cores). This drives the gunicorn worker's own request path instead: a real
loopback TCP connection, keep-alive, each request sent whole and then handled by the worker
class's ``handle`` (reading stage, gunicorn's parser, the WSGI app, the response written to the
socket) and its keep-alive bookkeeping, in this thread, with ``time.thread_time`` around it.
What it leaves out is the event loop's hand-over to a pool thread and back (the same for every
app under ``gthread``).

Three paths side by side, alternated in rounds so that drift falls on all of them:

* ``bare``: gunicorn's plain ``gthread`` worker with the bare Flask app of ``bench/floors.py``
  (the floor cornac.serving's own 400 is close to);
* ``healthz``: our worker (``gunicorn.conf.py``'s ``worker_class``) with our app, ``/healthz``;
* ``cached``: the same, ``GET /v1/users/<id>/recommendations?n=10`` of warm users whose lists
  are cached (Redis).

Run it from each source tree to compare versions (``PYTHONPATH`` picks the tree)::

    RECSYS_DATABASE_URL=... RECSYS_REDIS_URL=... RECSYS_REDIS_PREFIX=... RECSYS_MODEL_DIR=... \\
        PYTHONPATH=$PWD .venv/bin/python bench/worker_cpu.py --requests 5000 --rounds 5

against a store prepared by ``bench/serve_bench.py --prepare``. Prints microseconds of CPU per
request (median over rounds, client side included: it is the same few syscalls on every path)
and the ratios our paths' costs give against the bare floor.
"""

from __future__ import annotations

import argparse
import importlib
import os
import socket
import statistics
import sys
import tempfile
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
sys.path.insert(0, os.getcwd())  # the tree it is run from, not the installed one
sys.path.insert(1, os.path.dirname(os.path.abspath(__file__)))

import floors  # noqa: E402


class _App:
    """What gunicorn's worker asks of its application object."""

    def __init__(self, wsgi):
        self._wsgi = wsgi

    def wsgi(self):
        return self._wsgi


def make_worker(worker_class, wsgi, threads: int = 4):
    """A worker of ``worker_class`` serving ``wsgi`` in this process (not forked, no loop)."""
    from gunicorn import glogging
    from gunicorn.config import Config

    cfg = Config()
    cfg.set("threads", threads)
    cfg.set("workers", 2)
    cfg.set("keepalive", 5)
    log = glogging.Logger(cfg)
    worker = worker_class(0, os.getppid(), [], _App(wsgi), 30, cfg, log)
    worker.wsgi = wsgi
    worker.alive = True
    if hasattr(worker, "_start_reading_stage"):
        worker._start_reading_stage()  # noqa: SLF001 - as its run() does
    return worker


class Connection:
    """One kept-alive loopback connection served by ``worker`` in the calling thread."""

    def __init__(self, worker):
        from gunicorn.workers.gthread import TConn

        self.worker = worker
        listener = socket.create_server(("127.0.0.1", 0))
        self.client = socket.create_connection(listener.getsockname())
        self.client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server_sock, addr = listener.accept()
        server_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as gunicorn's
        listener.close()
        self.conn = TConn(worker.cfg, server_sock, addr, ("127.0.0.1", 8000))
        self.buf = b""

    def request(self, raw: bytes) -> bytes:
        """Send ``raw``, let the worker handle it, return the response (Content-Length bodies)."""
        self.client.sendall(raw)
        keep = self.worker.handle(self.conn)
        if not keep:
            raise RuntimeError("the worker closed the connection")
        self.conn.sock.setblocking(False)  # as finish_request leaves a kept-alive connection
        self.conn.set_timeout()
        return self._response()

    def _response(self) -> bytes:
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.client.recv(65536)
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            rest += self.client.recv(65536)
        self.buf = rest[length:]
        return head + b"\r\n\r\n" + rest[:length]


def get(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: worker_cpu\r\n"
        "Accept: */*\r\n\r\n"
    ).encode()


def cpu_us(conn: Connection, raws: list[bytes], n: int) -> float:
    # This thread's CPU only: the app's background threads (model polling ...) are not counted.
    t0 = time.thread_time()
    for k in range(n):
        conn.request(raws[k % len(raws)])
    return (time.thread_time() - t0) / n * 1e6


def bare_app():
    where = tempfile.mkdtemp(prefix="bare-flask-")
    with open(os.path.join(where, "bare.py"), "w") as f:
        f.write(floors.BARE_APP)
    sys.path.insert(0, where)
    return importlib.import_module("bare").app


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=5000, help="per path and round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--paths", default="bare,healthz,cached")
    args = p.parse_args()
    from gunicorn.workers.gthread import ThreadWorker

    from recsys import gunicorn_conf
    from recsys.ops import logs

    wanted = args.paths.split(",")
    module, _, name = gunicorn_conf.worker_class.rpartition(".")
    ours = getattr(importlib.import_module(module), name)
    paths: dict[str, tuple[Connection, list[bytes]]] = {}
    if "bare" in wanted:
        paths["bare"] = (Connection(make_worker(ThreadWorker, bare_app())), [get("/healthz")])
    if "healthz" in wanted or "cached" in wanted:
        import wsgi  # the served app, as gunicorn loads it (logging configured as served)

        logs.configure(stream=open(os.devnull, "w"))  # the access line is written, unread
        conn = Connection(make_worker(ours, wsgi.app))
        if "healthz" in wanted:
            paths["healthz"] = (conn, [get("/healthz")])
        if "cached" in wanted:
            from cached_cpu import heavy_users

            users = heavy_users(wsgi.app, args.users)
            raws = [get(f"/v1/users/{u}/recommendations?n=10") for u in users]
            for raw in raws * 2:  # fill the cache
                conn.request(raw)
            last = conn.request(raws[0])
            if b'"cached":true' not in last:
                print("cached: not served from the cache (is Redis configured?)", last[-300:])
                return 1
            paths["cached"] = (conn, raws)
    got: dict[str, list[float]] = {k: [] for k in paths}
    for conn, raws in paths.values():  # warm up
        cpu_us(conn, raws, min(500, args.requests))
    for k in range(args.rounds):
        for name, (conn, raws) in paths.items():
            got[name].append(cpu_us(conn, raws, args.requests))
        print(f"round {k + 1}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in got.items()))
    med = {k: statistics.median(v) for k, v in got.items()}
    print(
        f"\nCPU microseconds per request, median of {args.rounds} rounds x {args.requests} "
        f"(load average {os.getloadavg()[0]:.1f})"
    )
    for name, v in med.items():
        line = f"- {name}: {v:.1f} us"
        if "bare" in med and name != "bare":
            line += f" ({med['bare'] / v:.2f}x the bare floor's requests per CPU second)"
        print(line)
    if "healthz" in med and "cached" in med:
        print(f"- cached / healthz (requests per CPU second): {med['healthz'] / med['cached']:.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
