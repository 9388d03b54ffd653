"""Faults degrade the service, they do not break it (real servers, real outages, no mocks).

* Redis: a private ``redis-server`` on a free port, killed mid-test.
* PostgreSQL: the app reaches the real database through a TCP relay in this process; closing
  the relay (listener and every live connection) is an outage as the app sees it, and the
  database itself stays up for the assertions. Freezing the relay (it keeps every connection
  open and accepts new ones, but forwards nothing) is a database that hangs rather than
  refuses, as a SIGSTOPped server or a dropped network path looks to the app.
* A corrupt model file: covered by tests/models/test_runtime.py (hot swap with a tampered
  version keeps the old one; /readyz names a broken preload model); here, a worker that meets
  a corrupt *active* version at start still answers.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import pytest
from sqlalchemy import select

from recsys.config import update_config
from tests.clocks import ManualClock
from tests.procs import free_port
from tests.servicekit import ADMIN_TOKEN, seed_store, train_and_register
from tests.waiting import wait_until


class Relay:
    """A TCP relay 127.0.0.1:port -> target; ``down()`` refuses and cuts every connection;
    ``freeze()`` stops forwarding (connections stay open, new ones are accepted) until
    ``thaw()``."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.flowing = threading.Event()
        self.flowing.set()
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self):
        self.flowing.clear()

    def thaw(self):
        self.flowing.set()

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

    def _pipe(self, src, dst):
        try:
            while data := src.recv(65536):
                self.flowing.wait()  # frozen: hold what was read, forward nothing
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
    from recsys.models.runtime import get_runtime

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

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    wait_until(answers, "the private redis-server answering")
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
    # Past CONFIG_POLL_SECONDS (clocks moved, not waited for): the next request polls the
    # (dead) store.
    from recsys.models.runtime import get_runtime
    from recsys.serving.settings_store import get_settings

    clock = ManualClock(time.monotonic())
    get_settings(app).clock = get_runtime(app).clock = clock
    clock.advance(60)
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
    r = client.post("/v1/impressions", json={"user_id": "u9", "items": ["i1", "i2"]})
    assert _is_json_error(r, 503) and r.headers.get("Retry-After")
    assert _is_json_error(client.delete("/v1/users/u0/events?item_id=i1"), 503)
    assert _is_json_error(client.get("/v1/latest"), 503)
    r = client.get("/v1/popular?user_id=u0")  # no history to leave out: unfiltered, degraded
    assert r.status_code == 200 and r.get_json()["degraded"] is True and r.get_json()["items"]
    r = client.get("/v1/admin/audit", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert _is_json_error(r, 503)

    # The database itself was fine all along: nothing from the refused requests is in it.
    probe = make_app()
    assert _events(probe, "u9") == []
    from recsys.store import session_scope
    from recsys.store.models import Item

    with session_scope(probe) as s:
        assert s.scalar(select(Item.available).where(Item.external_id == "i1")) is True


def _stored_event_keys(app) -> set[str]:
    from recsys.store import session_scope
    from recsys.store.models import Event

    with session_scope(app) as s:
        return {k for (k,) in s.execute(select(Event.idem_key)) if k}


class _Load:
    """Clients in threads, each repeating: an event with an id, a cached read, /healthz, an
    uncached read. Records every answer; an event counts as acknowledged on a 2xx only."""

    def __init__(self, app, threads: int = 3):
        self.app = app
        self.stop = threading.Event()
        self.started = threading.Barrier(threads + 1)
        self.acked: set[str] = set()
        self.answers: list[tuple[str, int, bool]] = []  # (kind, status, degraded)
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(threads)
        ]
        for t in self.threads:
            t.start()

    def _run(self, k: int):
        client = self.app.test_client()
        n = 0
        while not self.stop.is_set():
            n += 1
            key = f"load-{k}-{n}"
            r = client.post(
                "/v1/events",
                json={"user_id": f"load{k}", "item_id": "i1", "type": "view", "id": key},
            )
            answers = [("event", r.status_code, False)]
            if r.status_code in (200, 201):
                with self.lock:
                    self.acked.add(f"api:{key}")
            for kind, url in (
                ("cached", "/v1/users/u0/recommendations"),
                ("healthz", "/healthz"),
                ("uncached", f"/v1/users/new-{k}-{n}/recommendations"),
            ):
                r = client.get(url)
                body = r.get_json() or {}
                answers.append((kind, r.status_code, bool(body.get("degraded"))))
            with self.lock:
                self.answers += answers
            if n == 1:
                self.started.wait()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(60)
            assert not t.is_alive(), "a client is still waiting on the server"


@contextlib.contextmanager
def _statements_here(app):
    """SQL statements sent from this thread inside the block (a list, filled as they go)."""
    from sqlalchemy import event

    from recsys.store import get_engine

    me, seen = threading.get_ident(), []

    def record(conn, cursor, statement, *args):
        if threading.get_ident() == me:
            seen.append(statement)

    engine = get_engine(app)
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


@pytest.mark.postgres
def test_database_hangs_mid_load(make_app, pg_schema_url, redis_url, redis_prefix):
    """PostgreSQL stops answering (the relay forwards nothing) while clients post events and
    read: /healthz and cached lists answer as usual, uncached lists answer degraded within
    the request deadline, writes are refused with 503 + Retry-After without waiting once the
    breaker is open, the database costs one probe per breaker period rather than a timeout
    per request, everything recovers after, and no acknowledged event is lost."""
    from recsys.store.db import get_breaker, get_watchdog

    parts = urlsplit(pg_schema_url)
    relay = Relay(parts.hostname or "127.0.0.1", parts.port or 5432)
    stmt_ms, deadline_ms = 3000, 500
    app = _warm_app(
        make_app,
        DATABASE_URL=_via(pg_schema_url, relay.port),
        REDIS_URL=redis_url,
        REDIS_PREFIX=redis_prefix,
        DB_STATEMENT_TIMEOUT_MS=stmt_ms,
        DB_BREAKER_RESET_S=0.5,
    )
    update_config(app, DEADLINE_MS=deadline_ms)
    client = app.test_client()
    cached = client.get("/v1/users/u0/recommendations").get_json()
    assert client.get("/v1/users/u0/recommendations").get_json()["cached"] is True
    breaker, watchdog = get_breaker(app), get_watchdog(app)

    load = _Load(app)
    load.started.wait()  # every client has been through one round: the load is running
    relay.freeze()

    # /healthz and a cached list never touch SQL (no statement from the request's thread).
    for url in ("/healthz", "/v1/users/u0/recommendations"):
        with _statements_here(app) as statements:
            r = client.get(url)
        assert r.status_code == 200 and statements == [], (url, statements)
    assert r.get_json()["cached"] is True and r.get_json()["items"] == cached["items"]

    # An uncached list: the history read is cut at the request deadline (the watchdog) or not
    # sent at all (the breaker), never left to the statement timeout; popularity answers.
    cuts, refused = watchdog.cuts, breaker.refused
    t0 = time.monotonic()
    r = client.get("/v1/users/hang-probe/recommendations")
    took = time.monotonic() - t0
    body = r.get_json()
    assert r.status_code == 200 and body["degraded"] is True and body["cached"] is False
    assert body["items"] and (watchdog.cuts > cuts or breaker.refused > refused)
    figures = {"uncached_degraded_s": round(took, 3)}  # reported, not asserted (load varies)
    assert breaker.state != "closed"  # that read (or a client's) opened the circuit

    # Writes while the circuit is open: refused without sending a statement, 503 JSON.
    cuts, refused = watchdog.cuts, breaker.refused
    t0 = time.monotonic()
    with _statements_here(app) as statements:
        r = client.post("/v1/events", json={"user_id": "u9", "item_id": "i1", "type": "view"})
    took = time.monotonic() - t0
    assert _is_json_error(r, 503) and int(r.headers["Retry-After"]) >= 1
    assert breaker.refused > refused and statements == []
    figures["write_503_s"] = round(took, 4)
    assert _is_json_error(client.put("/v1/items/i1", json={"title": "x"}), 503)
    r = client.get("/readyz")
    assert r.status_code == 503 and r.get_json()["database"] == "unavailable"

    # Many more requests while frozen cost at most the probes (one per breaker period) and
    # what was in flight when the database froze, not one timeout each.
    with load.lock:
        seen = len(load.answers)
    probes = breaker.probes
    for k in range(20):
        assert client.get(f"/v1/users/frozen-{k}/recommendations").get_json()["degraded"]
        assert (
            client.post(
                "/v1/events", json={"user_id": "u9", "item_id": "i1", "type": "view"}
            ).status_code
            == 503
        )
    in_flight_bound = len(load.threads) + 4  # clients + background pollers + this thread
    assert watchdog.cuts - cuts <= in_flight_bound + (breaker.probes - probes)
    figures.update(frozen_requests=40, socket_cuts=watchdog.cuts, probes=breaker.probes)

    relay.thaw()

    # Recovery: within a few breaker periods a probe succeeds and the circuit closes.
    def event_accepted() -> bool:
        r = client.post("/v1/events", json={"user_id": "u8", "item_id": "i2", "type": "view"})
        return r.status_code == 201

    wait_until(event_accepted, "an event accepted after the thaw", timeout=120)
    assert breaker.state == "closed"
    assert client.get("/readyz").status_code == 200
    body = client.get("/v1/users/u6/recommendations").get_json()
    assert body["degraded"] is False and "ease" in body["model_versions"]
    with load.lock:
        after = len(load.answers)

    def clients_got_through() -> bool:  # a round each after recovery too
        with load.lock:
            return len(load.answers) >= after + 4 * len(load.threads)

    wait_until(clients_got_through, "the clients answered after recovery", timeout=120)
    load.finish()

    kinds = {}
    for kind, status, degraded in load.answers:
        kinds.setdefault(kind, []).append((status, degraded))
    # Reads always answered; writes answered 2xx or 503, never anything else.
    assert all(s == 200 for k in ("cached", "healthz", "uncached") for s, _ in kinds[k])
    assert not any(d for _, d in kinds["cached"])
    assert {s for s, _ in kinds["event"]} <= {200, 201, 503}
    assert seen >= len(load.threads) * 4
    # Every acknowledged event is stored (through a fresh app on the database directly).
    stored = _stored_event_keys(make_app())
    assert load.acked and load.acked <= stored, sorted(load.acked - stored)[:10]
    figures.update(acked_events=len(load.acked), lost=len(load.acked - stored))
    print("\n", figures)
    relay.down()


@pytest.mark.postgres
def test_an_active_model_that_fails_to_load_degrades_and_is_not_cached(
    make_app, redis_url, redis_prefix
):
    import glob
    import os

    from recsys.models.repository import get_repository
    from recsys.models.runtime import get_runtime

    app = _warm_app(make_app, REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix)
    client = app.test_client()
    assert client.get("/v1/users/u6/recommendations").get_json()["degraded"] is False
    version = get_runtime(app).active_versions()["ease"]
    get_runtime(app).unload("ease")  # dropped from memory: the next use loads it again
    path = get_repository(app).get_version("ease", version)["path"]
    for name in glob.glob(os.path.join(path, "*.npz")):
        with open(name, "r+b") as f:  # tampered on disk: the checksum refuses it
            f.seek(-5, os.SEEK_END)
            f.write(b"\xff\xff\xff\xff\xff")
    for _ in range(2):
        body = client.get("/v1/users/u6/recommendations?n=4").get_json()
        assert body["degraded"] is True and body["cached"] is False
        assert "ease" not in body["model_versions"] and body["items"]
