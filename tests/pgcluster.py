"""A private PostgreSQL server (a temporary ``initdb`` cluster on a free port) that a test may
restart or stop without touching the shared one, and a write load to run across a restart.

Used by tests/store/test_pg_restart.py and scripts/pg_restart_check.py (which prints the
accounting for the README's reliability table).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.procs import free_port


def pg_bindir() -> str | None:
    """The directory holding ``initdb`` and ``pg_ctl`` (None when PostgreSQL's server binaries
    are not installed)."""
    candidates = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for d in candidates:
        if d and os.access(os.path.join(d, "initdb"), os.X_OK):
            if os.access(os.path.join(d, "pg_ctl"), os.X_OK):
                return d
    return None


class PrivatePostgres:
    """A throw-away cluster: ``initdb`` into a temporary directory, served on 127.0.0.1:port
    (socket directory inside it). As root the server runs as the ``postgres`` OS user (it
    refuses to run as root)."""

    def __init__(self, bindir: str):
        self.bindir = bindir
        self.port = free_port()
        self.root = tempfile.mkdtemp(prefix="recsys-pg-")
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "server.log")
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")
        opts = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c max_connections=100"
        )
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", opts, "-w", "start")
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, exe: str, *args: str) -> None:
        cmd = [os.path.join(self.bindir, exe), *args]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=120)

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every session is terminated, the server shuts down and
        starts again; returns once it accepts connections."""
        # -l again: without it the new server writes to pg_ctl's (captured) output and keeps
        # the pipe open after pg_ctl exits.
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-m", "fast", "-w", "restart")

    def destroy(self) -> None:
        """Stop the server (immediate) and remove the cluster."""
        try:
            self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        except subprocess.CalledProcessError:
            pass  # not running
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Answer:
    path: str
    status: int
    retry_after: str | None
    phase: str  # "before", "during" or "after" the restart


@dataclass
class RestartLoad:
    """Writers (one Flask test client each) that post events with ids and, every few requests,
    write through the other write paths, while ``restart`` runs. Each writer sends at most
    ``cap`` requests (the hang guard); it stops once it has had ``after_ok`` 2xx answers to
    events sent after the restart returned. An event counts as acknowledged on a 2xx only."""

    app: object
    writers: int = 12
    warm_ok: int = 3
    after_ok: int = 5
    cap: int = 3000
    admin_token: str = ""
    # A client per writer: ``.open(path, method=, json=, headers=)`` answering an object with
    # ``status_code`` and ``headers``; None: the app's Flask test client.
    client_factory: Callable[[], Any] | None = None
    answers: list[Answer] = field(default_factory=list)
    acked: set[str] = field(default_factory=set)
    capped: int = 0

    def __post_init__(self):
        self._lock = threading.Lock()
        self._warm = threading.Semaphore(0)
        self._begun = threading.Event()
        self._done = threading.Event()

    def _requests(self, k: int, n: int) -> list[tuple[str, str, dict, dict]]:
        """The writes of request round ``n`` of writer ``k``: (method, path, json, headers)."""
        admin = {"Authorization": f"Bearer {self.admin_token}"}
        event = {"user_id": f"w{k}", "item_id": "i1", "type": "view", "id": f"r-{k}-{n}"}
        out = [("POST", "/v1/events", event, {})]
        extra = [
            ("PUT", f"/v1/items/i{n % 5}", {"title": f"Item {n}"}, {}),
            ("PUT", f"/v1/users/w{k}", {"attributes": {"n": n}}, {}),
            ("PATCH", "/v1/admin/routing", {"cold_threshold": 1 + n % 3}, admin),
            (
                "POST",
                "/v1/admin/experiments",
                {
                    "name": f"x-{k}-{n}",
                    "variants": [{"name": "a", "weight": 0.01}, {"name": "b", "weight": 0.01}],
                },
                admin,
            ),
        ]
        if n % 4 == 0:
            out.append(extra[(n // 4 + k) % len(extra)])
        return out

    def _writer(self, k: int) -> None:
        client = self.client_factory() if self.client_factory else self.app.test_client()
        ok_after = ok_total = 0
        for n in range(self.cap):
            phase = (
                "after" if self._done.is_set() else "during" if self._begun.is_set() else "before"
            )
            for method, path, body, headers in self._requests(k, n):
                r = client.open(path, method=method, json=body, headers=headers)
                with self._lock:
                    self.answers.append(
                        Answer(
                            path.split("/")[2], r.status_code, r.headers.get("Retry-After"), phase
                        )
                    )
                if path == "/v1/events" and 200 <= r.status_code < 300:
                    with self._lock:
                        self.acked.add(f"api:{body['id']}")
                    ok_total += 1
                    ok_after += phase == "after"
                    if ok_total == self.warm_ok:
                        self._warm.release()
            if ok_after >= self.after_ok:
                return
        with self._lock:
            self.capped += 1
        if ok_total < self.warm_ok:
            self._warm.release()  # never warmed: do not leave the driver waiting

    def run(self, restart: Callable[[], None], timeout: float = 300) -> None:
        """Start the writers; once each has had ``warm_ok`` events acknowledged, call
        ``restart`` (synchronous), then let the writers finish."""
        threads = [
            threading.Thread(target=self._writer, args=(k,), daemon=True)
            for k in range(self.writers)
        ]
        for t in threads:
            t.start()
        for _ in threads:
            assert self._warm.acquire(timeout=timeout), "the writers never got going"
        self._begun.set()
        try:
            restart()
        finally:
            self._done.set()
        for t in threads:
            t.join(timeout)
            assert not t.is_alive(), "a writer is still waiting on the server"

    def statuses(self, phase: str | None = None) -> Counter:
        """Counts of (write path, status), for one phase or all."""
        return Counter((a.path, a.status) for a in self.answers if phase in (None, a.phase))
