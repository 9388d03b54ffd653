"""The service under real gunicorn: preload in the master, workers answering, metrics aggregated
across workers, and two servers sharing one PostgreSQL and Redis seeing each other's admin
changes. Servers are subprocesses on 127.0.0.1 serving tests.runtime_support:app (the real app
with the small test strategies registered in its repository).
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from recsys.models.repository import get_repository
from tests import runtime_support as rs
from tests.procs import free_port, stop_process
from tests.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "gunicorn-test-token"


def request(port, method, path, body=None, token=None, timeout=10.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Connection": "close"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body)
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        raw = r.read()
    finally:
        conn.close()
    ctype = r.getheader("Content-Type", "")
    return r.status, (json.loads(raw) if "json" in ctype else raw.decode())


class Server:
    def __init__(self, env: dict, workers: int, log_path: str):
        self.port = free_port()
        self.log = open(log_path, "w")
        cmd = [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "gunicorn.conf.py",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            str(workers),
            "--threads",
            "2",
            "tests.runtime_support:app",
        ]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=self.log)

    def wait_ready(self, timeout: float = 120.0) -> dict:  # a hang guard, not a window
        end = time.monotonic() + timeout
        last = None
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                break
            try:
                status, body = request(self.port, "GET", "/readyz", timeout=2)
                last = (status, body)
                if status == 200:
                    return body
            except OSError as e:
                last = e
            time.sleep(0.2)
        self.stop()
        with open(self.log.name) as f:
            pytest.fail(f"server not ready: {last}\n{f.read()[-3000:]}")

    def stop(self) -> None:
        stop_process(self.proc, self.log)


@pytest.fixture
def serve(make_app, pg_schema_url, redis_url, redis_prefix, tmp_path):
    """Start servers on the test PostgreSQL (emptied, with tiny v1 active and v2 saved)."""
    app = make_app(MODEL_DIR=str(tmp_path / "models"))
    repo = get_repository(app)
    repo.resolver = rs.resolver
    repo.save_version(rs.fit("tiny"), rs.sample_data(), version="v1", activate=True)
    repo.save_version(rs.fit("tiny"), rs.sample_data(), version="v2")
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        RECSYS_TEST_GUNICORN_APP="1",
        RECSYS_DATABASE_URL=pg_schema_url,
        RECSYS_REDIS_URL=redis_url,
        RECSYS_REDIS_PREFIX=redis_prefix,
        RECSYS_MODEL_DIR=str(tmp_path / "models"),
        RECSYS_INSTANCE_PATH=str(tmp_path / "instance"),
        RECSYS_ADMIN_TOKEN=TOKEN,
        RECSYS_CONFIG_POLL_SECONDS="0.2",
        RECSYS_PRELOAD_MODELS="true",
    )
    servers = []

    def start(workers: int = 2, redis: bool = True) -> Server:
        server_env = env if redis else {k: v for k, v in env.items() if k != "RECSYS_REDIS_URL"}
        s = Server(server_env, workers, str(tmp_path / f"server{len(servers)}.log"))
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def _samples(text: str) -> list:
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def test_preload_workers_and_aggregated_metrics(serve):
    server = serve(workers=2)
    body = server.wait_ready()
    assert body["models"] == {"tiny": "v1"}
    n = 40
    pids = set()
    for _ in range(n):
        status, listing = request(server.port, "GET", "/v1/admin/models", token=TOKEN)
        assert status == 200
        (row,) = listing["runtime"]
        assert row["state"] == "loaded" and row["warmed"] and row["loaded_version"] == "v1"
        pids.add(row["pid"])
    # Per-process gauges: one series per live process (master + 2 workers). A worker publishes
    # its gauges at the end of its post-fork set-up, which may still be running when the other
    # worker has answered all the requests: wait for it (no fixed sleep).
    scraped = {}

    def every_process_published() -> bool:
        status, text = request(server.port, "GET", "/metrics")
        assert status == 200
        scraped["samples"] = _samples(text)
        return (
            len({s.labels["pid"] for s in scraped["samples"] if s.name == "recsys_models_loaded"})
            == 3
        )

    wait_until(every_process_published, "the master and both workers publishing their gauges")
    samples = scraped["samples"]
    # Every request counted once, whichever worker answered: the collector sums the workers.
    count = sum(
        s.value
        for s in samples
        if s.name == "recsys_request_latency_seconds_count"
        and s.labels["endpoint"] == "admin_models.list_models"
    )
    assert count == n
    # Loaded once, in the master, before the fork: workers did not load it again.
    loads = [s for s in samples if s.name == "recsys_model_load_seconds_count"]
    assert sum(s.value for s in loads if s.labels["strategy"] == "tiny") == 1
    gauge_pids = {s.labels["pid"] for s in samples if s.name == "recsys_models_loaded"}
    assert len(gauge_pids) == 3 and pids <= {int(p) for p in gauge_pids}
    # Process metrics of the whole server (master + workers), whichever worker answered.
    rss = {s.labels["pid"]: s.value for s in samples if s.name == "process_resident_memory_bytes"}
    assert set(rss) == gauge_pids and all(v > 10 * 2**20 for v in rss.values())
    assert ("recsys_ready", 1.0) in {(s.name, s.value) for s in samples}


def test_two_servers_share_admin_changes(serve):
    a, b = serve(workers=1), serve(workers=1)
    a.wait_ready()
    b.wait_ready()

    def loaded_on(server):
        _, listing = request(server.port, "GET", "/v1/admin/models", token=TOKEN)
        return listing["runtime"][0]["loaded_version"]

    assert loaded_on(b) == "v1"
    status, body = request(
        a.port, "POST", "/v1/admin/models/tiny/activate", {"version": "v2"}, TOKEN
    )
    assert status == 200, body
    assert loaded_on(a) == "v2"
    # B notices by polling the store (no restart, no request to it about the change).
    wait_until(lambda: loaded_on(b) == "v2", "server B loads v2")
    # And back, through the other server.
    status, body = request(b.port, "POST", "/v1/admin/models/tiny/rollback", token=TOKEN)
    assert status == 200 and body["version"] == "v1"
    wait_until(lambda: loaded_on(a) == "v1", "server A loads v1")


def test_several_workers_without_redis_serve_uncached_not_stale(serve, tmp_path):
    """Without Redis each worker would hold its own in-process cache, which an event handled
    by another worker cannot invalidate: so with several workers every list is computed."""
    server = serve(workers=2, redis=False)
    server.wait_ready()
    # Both workers answer (the second may still be booting when the first says ready).
    pids: set = set()

    def both_answered() -> bool:
        pids.add(
            request(server.port, "GET", "/v1/admin/models", token=TOKEN)[1]["runtime"][0]["pid"]
        )
        return len(pids) == 2

    wait_until(both_answered, "both workers answer")
    url = "/v1/users/walker/recommendations?n=3"
    bodies = [request(server.port, "GET", url)[1] for _ in range(8)]
    assert all(b["cached"] is False for b in bodies)
    event = {"user_id": "walker", "item_id": "i1", "type": "purchase"}
    assert request(server.port, "POST", "/v1/events", event)[0] == 201
    bodies = [request(server.port, "GET", url)[1] for _ in range(8)]
    assert all(b["cached"] is False for b in bodies)
    server.log.flush()
    log = (tmp_path / "server0.log").read_text()
    assert log.count("result cache off in this process") == 2  # once per worker


# -- request bodies over the limit -------------------------------------------------------------
def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _workers(server) -> set[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(server.proc.pid)], capture_output=True, text=True
    ).stdout
    return {int(p) for p in out.split()}


def _upload(port: int, total: int, chunked: bool, sent: list) -> int:
    """POST /v1/events with a ``total``-byte body streamed from a generator (never held in
    memory), stopping as soon as the server answers; the status code."""
    import select
    import socket

    def body():
        block = b"[" + b"1," * 32767 + b"1"  # 64 KiB of JSON-looking bytes, reused
        left = total
        while left > 0:
            yield block[: min(len(block), left)]
            left -= len(block)

    head = "POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    head += "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {total}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall((head + "\r\n").encode())
        n = 0
        try:
            for block in body():
                if select.select([s], [], [], 0)[0]:
                    break  # answered before the end of the body
                s.sendall(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
                n += len(block)
        except OSError:
            pass  # the server closed its side: read what it said
        sent.append(n)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split()[1]) if data else 0


def test_huge_bodies_are_413_and_workers_stay_small(serve):
    """Four concurrent 300 MB posts (two with Content-Length, two chunked): each is refused
    with 413 after at most the limit is read, and no worker grows by 50 MB or more."""
    import threading

    server = serve(workers=2)
    server.wait_ready()
    event = {"user_id": "big", "item_id": "i1", "type": "view"}
    for _ in range(20):  # warm both workers up on the paths the big posts take
        assert request(server.port, "POST", "/v1/events", event)[0] == 201
        assert request(server.port, "GET", "/v1/users/big/recommendations")[0] == 200
    workers = _workers(server)
    assert len(workers) == 2
    before = {pid: _rss_kib(pid) for pid in workers}
    peak = dict(before)
    done = threading.Event()

    def sample():
        while not done.is_set():
            for pid in workers:
                peak[pid] = max(peak[pid], _rss_kib(pid))
            done.wait(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    statuses, sent = [], []
    uploads = [
        threading.Thread(
            target=lambda c=chunked: statuses.append(_upload(server.port, 300 << 20, c, sent))
        )
        for chunked in (False, False, True, True)
    ]
    for t in uploads:
        t.start()
    for t in uploads:
        t.join(120)
    done.set()
    sampler.join()
    assert statuses == [413] * 4, statuses
    assert max(sent) < 300 << 20  # every upload was answered before it was finished
    growth_mib = {pid: (peak[pid] - before[pid]) / 1024 for pid in workers}
    print(f"\nRSS before {before} KiB, peak growth {growth_mib} MiB, body bytes sent {sent}")
    assert max(growth_mib.values()) < 50, growth_mib
    # Still serving normally.
    assert request(server.port, "POST", "/v1/events", event)[0] == 201


def test_recsys_serve_runs_the_packaged_settings_from_any_folder(tmp_path):
    """`recsys serve` (what an installed wheel runs; scripts/ci_wheel.sh does that) serves from a
    folder that is not the checkout: the gunicorn settings and the WSGI entry are modules of the
    package (recsys.gunicorn_conf, recsys.wsgi), not files found in the current folder."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "PROMETHEUS_"))}
    env.update(PYTHONPATH=ROOT, RECSYS_INSTANCE_PATH=str(tmp_path / "instance"))
    recsys = [sys.executable, "-c", "from recsys.cli.main import main; main()"]
    subprocess.run([*recsys, "db", "upgrade"], cwd=tmp_path, env=env, check=True)
    cmd = [*recsys, "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1"]
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=log)
    answered = []

    def answering_or_exited() -> bool:
        try:
            answered.append(request(port, "GET", "/healthz", timeout=2)[0])
        except OSError:
            pass
        return (answered and answered[-1] == 200) or proc.poll() is not None

    try:
        wait_until(answering_or_exited, "recsys serve answering /healthz (or exiting)", 120)
    finally:
        stop_process(proc, log)
    text = (tmp_path / "serve.log").read_text()
    assert answered and answered[-1] == 200, text[-3000:]
    # The package's settings, not gunicorn's defaults: its worker class ran.
    assert "Using worker: recsys.ops.gworker.BalancedThreadWorker" in text, text[-3000:]
    assert not os.path.exists(tmp_path / "gunicorn.conf.py")
