"""A real Redis Cluster for tests: N ``redis-server --cluster-enabled yes`` processes on loopback
ports in a temporary folder, joined by ``redis-cli --cluster create`` (no replicas)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

# Generous: creating the cluster and gossiping the slot map takes about a second here, far
# longer on a loaded 2-core machine.
READY_TIMEOUT_S = 120.0
POLL_S = 0.05


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port() -> int:
    """A free port P whose cluster bus port P + 10000 is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 55000 and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def require_redis_server() -> tuple[str, str]:
    """(redis-server, redis-cli) paths; in CI their absence is a failure, elsewhere a skip."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server and cli:
        return server, cli
    if os.environ.get("CI"):
        pytest.fail("redis-server/redis-cli are not installed (scripts/ensure_services.sh)")
    pytest.skip("redis-server/redis-cli not installed")


class LocalCluster:
    """Started by ``start``; ``url`` is the ``redis+cluster://`` URL of every node."""

    def __init__(self, folder: str, nodes: int = 3):
        self.folder = folder
        self.n = nodes
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self) -> LocalCluster:
        server, cli = require_redis_server()
        for i in range(self.n):
            port = cluster_port()
            d = os.path.join(self.folder, f"node{i}")
            os.makedirs(d, exist_ok=True)
            proc = subprocess.Popen(
                [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", os.path.join(d, "nodes.conf"), "--dir", d,
                 "--save", "", "--appendonly", "no", "--cluster-node-timeout", "2000"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            self.ports.append(port)
            self.procs.append(proc)
        for port in self.ports:
            self._wait(lambda p=port: self._ping(p), f"node {port} answering PING")
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=READY_TIMEOUT_S,
        )  # fmt: skip
        for port in self.ports:
            self._wait(lambda p=port: self._cluster_ok(p), f"cluster_state:ok on {port}")
        return self

    def _client(self, port: int):
        import redis

        return redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2)

    def _ping(self, port: int) -> bool:
        try:
            return bool(self._client(port).ping())
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def _cluster_ok(self, port: int) -> bool:
        try:
            info = self._client(port).execute_command("CLUSTER INFO")
        except Exception:  # noqa: BLE001
            return False
        if isinstance(info, dict):  # redis-py parses the reply
            return str(info.get("cluster_state")) == "ok"
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text

    def _wait(self, condition, what: str) -> None:
        """Poll ``condition`` until true, failing after READY_TIMEOUT_S (a cap, not a delay)."""
        tick = threading.Event()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not condition():
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"Redis Cluster: a node exited while waiting for {what}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"Redis Cluster: no {what} after {READY_TIMEOUT_S:.0f}s")
            tick.wait(POLL_S)

    def node_of(self, key: str) -> int:
        """Index (into ``ports``) of the node that serves ``key``'s slot."""
        client = self._client(self.ports[0])
        slot = int(client.execute_command("CLUSTER KEYSLOT", key))
        for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
            if start <= slot <= end:
                return self.ports.index(int(master[1]))
        raise KeyError(key)

    def kill(self, i: int) -> None:
        self.procs[i].kill()
        self.procs[i].wait()

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
