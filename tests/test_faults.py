"""Faults degrade the service, they do not break it (real servers, real outages, no mocks).

* Redis: a private ``redis-server`` on a free port, killed mid-test.
* PostgreSQL: the app reaches the real database through a TCP relay in this process; closing
  the relay (listener and every live connection) is an outage as the app sees it, and the
  database itself stays up for the assertions.
* A corrupt model file: covered by tests/test_runtime.py (hot swap with a tampered version keeps
  the old one; /readyz names a broken preload model); here, a worker that meets a corrupt
  *active* version at start still answers.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import pytest
from sqlalchemy import select

from tests.procs import free_port
from tests.servicekit import ADMIN_TOKEN, seed_store, train_and_register


class Relay:
    """A TCP relay 127.0.0.1:port -> target; ``down()`` refuses and cuts every connection."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def down(self):
        try:  # wakes the thread blocked in accept(); close() alone would leave it listening
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


def _warm_app(make_app, **config):
    app = make_app(ADMIN_TOKEN=ADMIN_TOKEN, CONFIG_POLL_SECONDS=0.05, DEADLINE_MS=5000, **config)
    seed_store(app.test_client())
    versions = train_and_register(app)
    from recsys.runtime import get_runtime

    for name in versions:
        assert get_runtime(app).get(name) is not None
    return app


def _events(app, user: str) -> list[tuple[str, str]]:
    from recsys.store import session_scope
    from recsys.store.models import Event, Item, User

    with session_scope(app) as s:
        q = (
            select(Item.external_id, Event.type)
            .join(User, User.id == Event.user_id)
            .join(Item, Item.id == Event.item_id)
            .where(User.external_id == user)
        )
        return sorted(s.execute(q).all())


def _is_json_error(r, code: int) -> bool:
    body = r.get_json()
    return r.status_code == code and {"code", "name", "description"} <= set(body or {})


# -- Redis ----------------------------------------------------------------------------------
@pytest.fixture
def private_redis():
    exe = shutil.which("redis-server")
    if not exe:
        pytest.skip("redis-server not installed")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield proc, f"redis://127.0.0.1:{port}/0"
    proc.kill()
    proc.wait()


@pytest.mark.postgres
def test_redis_killed_mid_test(make_app, private_redis):
    proc, url = private_redis
    app = _warm_app(make_app, REDIS_URL=url, REDIS_PREFIX="faults")
    client = app.test_client()
    first = client.get("/v1/users/u0/recommendations").get_json()
    assert client.get("/v1/users/u0/recommendations").get_json()["cached"] is True

    proc.kill()
    proc.wait()
    r = client.get("/v1/users/u0/recommendations")
    assert r.status_code == 200
    body = r.get_json()
    # Served, honestly uncached, same list; nothing was dropped from the blend.
    assert body["cached"] is False and body["degraded"] is False
    assert body["items"] == first["items"] and body["items"]
    # Events are acknowledged only once stored, and count at once.
    top = body["items"][0]["item_id"]
    r = client.post("/v1/events", json={"user_id": "u0", "item_id": top, "type": "purchase"})
    assert r.status_code == 201 and r.get_json()["inserted"] == 1
    assert (top, "purchase") in _events(app, "u0")
    r = client.get("/v1/users/u0/recommendations")
    assert r.status_code == 200 and r.get_json()["cached"] is False
    assert top not in [it["item_id"] for it in r.get_json()["items"]]
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/popular").status_code == 200


# -- PostgreSQL -----------------------------------------------------------------------------
@pytest.mark.postgres
def test_postgres_down(make_app, pg_schema_url, redis_url, redis_prefix):
    parts = urlsplit(pg_schema_url)
    relay = Relay(parts.hostname or "127.0.0.1", parts.port or 5432)
    app = _warm_app(
        make_app,
        DATABASE_URL=_via(pg_schema_url, relay.port),
        REDIS_URL=redis_url,
        REDIS_PREFIX=redis_prefix,
    )
    client = app.test_client()
    cached = client.get("/v1/users/u0/recommendations").get_json()
    assert client.get("/readyz").status_code == 200

    relay.down()
    time.sleep(0.1)  # past CONFIG_POLL_SECONDS: the next request polls the (dead) store
    assert client.get("/healthz").status_code == 200
    r = client.get("/readyz")
    assert r.status_code == 503 and "database" in r.get_json()
    # A list already in the cache is still served as it was.
    r = client.get("/v1/users/u0/recommendations")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["items"] == cached["items"] and r.get_json()["cached"] is True
    # Anything else answers from popularity (no history can be read), marked degraded.
    r = client.get("/v1/users/u1/recommendations")
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["degraded"] is True and body["cached"] is False and body["items"]
    assert set(body["model_versions"]) == {"popular"}
    assert client.get("/v1/popular").status_code == 200
    # Writes are refused with 503 JSON: never acknowledged when not stored.
    r = client.post("/v1/events", json={"user_id": "u9", "item_id": "i1", "type": "purchase"})
    assert _is_json_error(r, 503), r.get_data(as_text=True)
    assert r.headers.get("Retry-After")
    r = client.put("/v1/items/i1", json={"available": False})
    assert _is_json_error(r, 503)
    r = client.get("/v1/admin/audit", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert _is_json_error(r, 503)

    # The database itself was fine all along: nothing from the refused requests is in it.
    probe = make_app()
    assert _events(probe, "u9") == []
    from recsys.store import session_scope
    from recsys.store.models import Item

    with session_scope(probe) as s:
        assert s.scalar(select(Item.available).where(Item.external_id == "i1")) is True
