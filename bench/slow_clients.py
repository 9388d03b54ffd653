"""Slow and idle clients against the service: does /healthz stay fast, do real requests get served?

    # starts `gunicorn -c gunicorn.conf.py wsgi:app` on a free port (2 workers x 4 threads),
    # migrates the database first, measures N = 8, 100, 500 and stops it
    .venv/bin/python bench/slow_clients.py --database-url postgresql+psycopg://.../bench
    # against a server you started yourself
    .venv/bin/python bench/slow_clients.py --url http://127.0.0.1:8000 --n 8,100

For each N it opens N connections of each of four kinds (so 4 x N in all), loopback only:

- slow headers: a request line and half a header, then one more header byte every --trickle s;
- slow body: complete headers with ``Content-Length: 100``, then one body byte every --trickle s;
- keepalive: one complete GET /healthz, its answer read, then nothing (an idle keep-alive);
- silent: a new connection that never sends a byte.

Each kind is opened and held by a process of its own (so its sends do not take the probes'
GIL); every connection closes when the phase ends (or after --hold s at the most), so the script
always stops. With them open, it measures /healthz
latency (one probe at a time, --probes of them, 2 s client timeout: a probe that times out counts
as 2000 ms) and the rate of a legitimate request (GET /v1/popular, --clients keep-alive clients for
--duration s), and compares both with the same measurement without slow clients. It also
reports how many of the slow connections the server had closed by the end of the phase (what
the client timeout does). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import selectors
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SLOW_HEAD = b"GET /v1/popular HTTP/1.1\r\nHost: bench\r\nX-Slow: "
SLOW_BODY = (
    b"POST /v1/events HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100\r\n\r\n["
)

KEEPALIVE = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n"


def _read_response(s: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            return
        body += chunk


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlowClients:
    """N connections of one kind, held open by one thread until ``stop()`` (or ``hold`` s)."""

    def __init__(self, host: str, port: int, kind: str, n: int, trickle: float, hold: float):
        self.host, self.port, self.kind, self.n = host, port, kind, n
        self.trickle, self.hold = trickle, hold
        self.opened = 0
        self.closed_by_server = 0
        # A process of its own, so that its sends do not take the probes' GIL.
        ctx = multiprocessing.get_context("fork")
        self._stop = ctx.Event()
        self._ready = ctx.Event()
        self._counts = ctx.Array("q", 2)
        self._proc = ctx.Process(target=self._run, daemon=True)

    def start(self) -> SlowClients:
        self._proc.start()
        self._ready.wait(60)
        self.opened = self._counts[0]
        return self

    def _run(self) -> None:
        socks = []
        first = {"head": SLOW_HEAD, "body": SLOW_BODY, "keepalive": KEEPALIVE, "silent": b""}
        for _ in range(self.n):
            try:
                s = socket.create_connection((self.host, self.port), timeout=5)
                if first[self.kind]:
                    s.sendall(first[self.kind])
                if self.kind == "keepalive":  # read the whole answer, then stay idle
                    _read_response(s)
                s.setblocking(False)
                socks.append(s)
            except OSError:
                break
        self._counts[0] = len(socks)
        self._ready.set()
        sel = selectors.DefaultSelector()
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        alive = set(socks)
        end = time.monotonic() + self.hold
        next_byte = time.monotonic() + self.trickle
        while not self._stop.is_set() and time.monotonic() < end and alive:
            for key, _ in sel.select(timeout=0.05):
                s = key.fileobj
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if not data:  # the server closed it (or answered and closed)
                    sel.unregister(s)
                    alive.discard(s)
                    self._counts[1] += 1
            if self.kind in ("head", "body") and time.monotonic() >= next_byte:
                next_byte = time.monotonic() + self.trickle
                for s in list(alive):
                    try:
                        s.send(b"a" if self.kind == "head" else b" ")
                    except OSError:
                        pass
        for s in socks:
            s.close()
        sel.close()

    def stop(self) -> None:
        self._stop.set()
        self._proc.join(30)
        self.closed_by_server = self._counts[1]


def probe_healthz(host: str, port: int, probes: int) -> list[float]:
    """Latency (ms) of ``probes`` sequential /healthz requests on fresh connections."""
    out = []
    for _ in range(probes):
        t0 = time.perf_counter()
        try:
            c = http.client.HTTPConnection(host, port, timeout=2.0)
            c.request("GET", "/healthz", headers={"Connection": "close"})
            r = c.getresponse()
            r.read()
            c.close()
            ms = (time.perf_counter() - t0) * 1000 if r.status == 200 else 2000.0
        except OSError:
            ms = 2000.0
        out.append(ms)
        time.sleep(0.02)
    return out


def legit_rate(host: str, port: int, path: str, clients: int, duration: float) -> tuple[float, int]:
    """Requests per second of ``path`` (200s) over ``clients`` keep-alive clients; and errors."""
    counts = [0] * clients
    errors = [0] * clients
    end = time.monotonic() + duration

    def client(k: int) -> None:
        c = None
        while time.monotonic() < end:
            try:
                if c is None:
                    c = http.client.HTTPConnection(host, port, timeout=5.0)
                c.request("GET", path)
                r = c.getresponse()
                r.read()
                if r.status == 200:
                    counts[k] += 1
                else:
                    errors[k] += 1
                if r.will_close:
                    c.close()
                    c = None
            except OSError:
                errors[k] += 1
                if c is not None:
                    c.close()
                c = None
        if c is not None:
            c.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - t0), sum(errors)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def worker_cpu(server_pid: int | None) -> dict[int, float]:
    """CPU seconds (user + system) of each gunicorn worker of ``server_pid``, from /proc."""
    if server_pid is None:
        return {}
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    try:
        children = open(f"/proc/{server_pid}/task/{server_pid}/children").read().split()
    except OSError:
        return {}
    for pid in map(int, children):
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / tick
    return out


def measure(host, port, args, n: int, server_pid: int | None = None) -> dict:
    held = []
    if n:
        held = [
            SlowClients(host, port, kind, n, args.trickle, args.hold).start()
            for kind in ("head", "body", "keepalive", "silent")
        ]
        time.sleep(0.5)  # let the server take them in
    try:
        lat = probe_healthz(host, port, args.probes)
        before = worker_cpu(server_pid)
        rate, errors = legit_rate(host, port, args.path, args.clients, args.duration)
        after = worker_cpu(server_pid)
    finally:
        for h in held:
            h.stop()
    return {
        "n": n,
        "opened": sum(h.opened for h in held),
        "closed": sum(h.closed_by_server for h in held),
        "p50": statistics.median(lat),
        "p99": pct(lat, 0.99),
        "timeouts": sum(1 for v in lat if v >= 2000.0),
        "rate": rate,
        "errors": errors,
        # Share of the legitimate phase's worker CPU on the busiest worker (50%: even).
        "busiest": _busiest_share(before, after),
    }


def _busiest_share(before: dict, after: dict) -> float | None:
    used = [after[p] - before[p] for p in after if p in before]
    return max(used) / sum(used) if len(used) > 1 and sum(used) > 0 else None


def start_server(args, port: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=ROOT, RECSYS_DATABASE_URL=args.database_url)
    env.setdefault("RECSYS_INSTANCE_PATH", "/tmp/recsys-slow-clients")
    env.setdefault("RECSYS_MODEL_DIR", "/tmp/recsys-slow-clients/models")
    env.setdefault("RECSYS_LOG_LEVEL", "WARNING")
    if args.redis_url:
        env.update(RECSYS_REDIS_URL=args.redis_url, RECSYS_REDIS_PREFIX="slow-clients-bench")
    recsys = os.path.join(os.path.dirname(sys.executable), "recsys")
    subprocess.run([recsys, "db", "upgrade"], env=env, check=True, capture_output=True)
    cmd = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"]
    cmd += ["--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "4", "wsgi:app"]
    os.makedirs(env["RECSYS_INSTANCE_PATH"], exist_ok=True)
    log = open(env["RECSYS_INSTANCE_PATH"] + "-server.log", "w")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log)


def wait_ready(host: str, port: int, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            c = http.client.HTTPConnection(host, port, timeout=2)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit("server not ready")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", default=None, help="a running server (loopback only)")
    p.add_argument("--database-url", default=os.environ.get("RECSYS_DATABASE_URL"))
    p.add_argument("--redis-url", default=os.environ.get("RECSYS_REDIS_URL"))
    p.add_argument("--n", default="8,100,500", help="slow connections of each kind, per phase")
    p.add_argument("--path", default="/v1/popular", help="the legitimate request")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--duration", type=float, default=5.0, help="seconds of legitimate load")
    p.add_argument("--probes", type=int, default=200, help="/healthz probes per phase")
    p.add_argument("--trickle", type=float, default=1.0, help="seconds between slow bytes")
    p.add_argument("--hold", type=float, default=120.0, help="most seconds a phase holds them")
    p.add_argument("--label", default="", help="a name for this run in the table")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the phases (none, then each --n) this many times, alternating, and give\n"
        "each N's rate against the N = 0 phase of its own round",
    )
    args = p.parse_args(argv)

    proc = None
    if args.url:
        u = urllib.parse.urlsplit(args.url)
        host, port = u.hostname, u.port or 80
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit("loopback only")
    else:
        if not args.database_url:
            raise SystemExit("give --database-url (or RECSYS_DATABASE_URL) or --url")
        host, port = "127.0.0.1", free_port()
        proc = start_server(args, port)
    try:
        wait_ready(host, port)
        pid = proc.pid if proc is not None else None
        rows = []
        for _round in range(args.rounds):
            base = measure(host, port, args, 0, pid)
            base["base"] = base["rate"]
            rows.append(base)
            for n in (int(x) for x in args.n.split(",") if x.strip()):
                rows.append(dict(measure(host, port, args, n, pid), base=base["rate"]))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
    print(f"\n{args.label} load: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")
    print(
        "| slow conns (each kind) | held open | closed by server | /healthz p50 ms | p99 ms "
        "| probe timeouts | legit req/s | vs none (same round) | busiest worker's CPU share "
        "| legit errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        share = "-" if r["busiest"] is None else f"{r['busiest']:.0%}"
        print(
            f"| {r['n']} | {r['opened']} | {r['closed']} | {r['p50']:.1f} | {r['p99']:.1f} "
            f"| {r['timeouts']} | {r['rate']:.0f} | {r['rate'] / (r['base'] or 1.0):.0%} "
            f"| {share} | {r['errors']} |"
        )
    by_n: dict[int, list[float]] = {}
    for r in rows:
        if r["n"]:
            by_n.setdefault(r["n"], []).append(r["rate"] / (r["base"] or 1.0))
    for n, ratios in by_n.items():
        print(
            f"N = {n}: legit rate vs its round's N = 0, median {statistics.median(ratios):.0%}, "
            f"min {min(ratios):.0%}, max {max(ratios):.0%} over {len(ratios)} round(s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
