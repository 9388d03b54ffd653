"""A per-process copy of recent cache hits in front of Redis, kept fresh by Redis pub/sub.

Opt-in (``NEAR_CACHE_TTL`` > 0 seconds; only with a single Redis server, ``REDIS_URL=redis://``).
Without it every cache hit costs one Redis round trip, the ``MGET`` of the user's history token
and the entry (``recsys.serving.cache``): on a small box the client's send/receive and Redis's own
CPU are the largest part of a hit. With it, each process keeps the entries it has read from Redis
for up to ``NEAR_CACHE_TTL`` seconds (never longer than ``CACHE_TTL``; at most
``NEAR_CACHE_SIZE`` of them, least recently used dropped first) and answers a repeat request
from memory. A list this process computed is kept from its first read out of Redis, so one-off
lists (a unique ``exclude``, a deep page) never take room.

How the copy stays fresh:

* ``ResultCache.invalidate_users`` (every acknowledged event) writes the users' new tokens and,
  in the same pipeline, ``PUBLISH``es each user id on ``<prefix>:near`` (``*``, meaning
  everyone, for a batch of more than ``PUBLISH_MAX_USERS``). The process that wrote drops its
  own copies of those users at once.
* Every process holds one subscribed connection. Before any local lookup it reads, without
  blocking (one ``poll``), whatever that connection has received and drops the entries of the
  users named. Redis writes a published message to the subscribers' sockets in the same pass
  of its event loop as the reply to the publisher, before the publisher can acknowledge the
  event to anyone. So a request made after the event was acknowledged normally finds the
  invalidation already waiting on the socket. It does not find it when the message is still
  on its way: Redis was descheduled between the two writes, or a network put the subscriber
  further away than the publisher.
* That lag is bounded by ``NEAR_CACHE_MAX_LAG_MS``. Each process publishes its own ping
  (``PING_PREFIX``, its random instance id and a sequence number) on the same channel through
  its normal Redis client, lazily from ``get`` and at most once per half of the bound,
  remembering when it sent it (the injectable clock, read before the ``PUBLISH``). When its
  subscription reads that ping back, every message published before the ping has been read
  too: Redis executes ``PUBLISH``es one at a time and delivers them to a subscriber in that
  order, and an event acknowledged before the ping was sent had its ``PUBLISH`` executed before
  the ping's. The process then records ``confirmed`` = the ping's send time, and serves a local
  copy only while ``now - confirmed <= NEAR_CACHE_MAX_LAG_MS``; otherwise it reads Redis as
  without the near cache (and a ping goes out). So every event acknowledged more than
  ``NEAR_CACHE_MAX_LAG_MS`` before a request is reflected in its answer. Pings of other
  processes are ignored; a user id cannot be mistaken for a ping (``messages`` publishes ``*``
  for an id starting with NUL, which PostgreSQL text cannot hold anyway). The cost: one extra
  ``PUBLISH`` per process per half of the bound while it serves, never one per request. The
  near cache is still off by default (``NEAR_CACHE_TTL=0``).
* A copy read before an invalidation arrived is not stored after it: ``get`` hands out the
  number of invalidations seen so far (a ticket), and ``put`` stores only when no invalidation
  has been seen since.
* Any failure of the subscription (connection lost, Redis restarted, Redis dropping a
  subscriber that fell behind its pub/sub output-buffer limit, a reply it cannot read) clears
  every copy. No local hit is served until a new subscription is confirmed. Reconnects back
  off like the cache's own.
* Everything else that makes an entry stale (config, catalogue, model versions, the cache
  epoch, the experiment variant) is part of the entry's key, in memory as in Redis.

Keys written into Redis by anything other than ``invalidate_users`` are not seen until the
local TTL ends. A Redis that becomes unreachable *without* the subscription breaking (a network
partition that drops packets silently) leaves the copies in service until the worker notices
something: its own Redis call fails (the cache then counts as down and no copy is served
through the back-off), or the ``cache_epoch`` that a failed invalidation bumps in SQL reaches it
(``CONFIG_POLL_SECONDS``), or the TTL ends. ``recsys import`` writes SQL only, and its users
wait for ``CACHE_TTL`` either way.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

# An invalidation naming more users than this is published as "*" (drop everything).
PUBLISH_MAX_USERS = 1000
EVERYONE = b"*"
# A process's own ping: PING_PREFIX + instance id + b":" + sequence number. NUL starts no
# published user id (see ``messages``).
PING_PREFIX = b"\x00ping:"
RETRY_START_S = 0.5
RETRY_MAX_S = 30.0


def messages(users: list[str]) -> list[bytes]:
    """What ``invalidate_users`` publishes for ``users``.

    Parameters
    ----------
    users : list of str
        The external user ids invalidated.

    Returns
    -------
    list of bytes
        Their ids, or ``[b"*"]`` (everyone) for more than ``PUBLISH_MAX_USERS``, or when an id
        starts with NUL (it could be read as a ping).
    """
    if len(users) > PUBLISH_MAX_USERS or any(u.startswith("\x00") for u in users):
        return [EVERYONE]
    return [u.encode() for u in users]


class NearCache:
    """Entries ``key -> (token, raw)`` of one process. Thread-safe.

    ``connect`` returns a new, unconnected redis-py ``Connection`` (the cache's own pool makes
    it, with its URL, database and timeouts); ``publish(channel, message)`` sends a ``PUBLISH``
    through the normal client (the pings); ``max_lag_s`` is ``NEAR_CACHE_MAX_LAG_MS`` in
    seconds."""

    def __init__(
        self,
        connect: Callable[[], Any],
        channel: str,
        ttl_s: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        publish: Callable[[str, bytes], Any],
        max_lag_s: float = 0.2,
    ):
        self._connect = connect
        self.channel = channel
        self.ttl_s = float(ttl_s)
        self.max_entries = max(1, int(max_entries))
        self._clock = clock
        self._publish = publish
        self.max_lag_s = float(max_lag_s)
        self._instance = secrets.token_hex(8).encode()  # a pid alone can repeat across hosts
        self._ping_seq = 0
        self._pings: dict[int, float] = {}  # sent, not read back yet: sequence -> send time
        self._ping_sent = float("-inf")  # send time of the last ping
        self._confirmed = float("-inf")  # send time of the last ping read back
        self._lock = threading.Lock()
        # key -> (expires at, user, token, raw); user -> its keys.
        self._entries: OrderedDict[str, tuple[float, str, bytes | None, bytes]] = OrderedDict()
        self._users: dict[str, set[str]] = {}
        self._conn: Any = None
        self._ready = False  # the subscription is confirmed
        self._retry_at = 0.0
        self._retry_s = RETRY_START_S
        self._seq = 0  # invalidations seen (and resets): the tickets' counter
        self._counts = {
            "hits": 0,
            "stores": 0,
            "invalidations": 0,
            "resets": 0,
            "pings": 0,  # sent
            "lagged": 0,  # local copies not served: the last ping came back too long ago
        }

    # -- reads and writes ----------------------------------------------------------------------
    def get(self, user_id: str, key: str) -> tuple[tuple[bytes | None, bytes] | None, int | None]:
        """This process's copy of a user's entry, if it holds one.

        Parameters
        ----------
        user_id : str
            The external user id.
        key : str
            The entry's cache key.

        Returns
        -------
        tuple
            ``((token, raw), ticket)`` on a local hit; ``(None, ticket)`` on a miss (or a copy
            held while the last ping is older than ``max_lag_s``), where the ticket lets
            ``put`` store what is read next; ``(None, None)`` while there is no confirmed
            subscription (nothing may be stored).
        """
        ping = None
        with self._lock:
            self._sync()
            if not self._ready:
                return None, None
            now = self._clock()
            ping = self._ping_due(now)
            result: tuple[bytes | None, bytes] | None = None
            entry = self._entries.get(key)
            if entry is not None:
                if entry[0] <= now:
                    self._remove(key)
                elif now - self._confirmed <= self.max_lag_s:
                    self._entries.move_to_end(key)
                    self._counts["hits"] += 1
                    result = (entry[2], entry[3])
                else:
                    self._counts["lagged"] += 1
            ticket = self._seq
        if ping is not None:
            self._send_ping(*ping)
        return result, ticket

    def put(
        self, ticket: int | None, user_id: str, key: str, token: bytes | None, raw: bytes
    ) -> bool:
        """Keep ``(token, raw)``, read after ``get`` gave ``ticket``, unless an invalidation
        (or a reset) has been seen since.

        Parameters
        ----------
        ticket : int or None
            What ``get`` returned; None: nothing is stored.
        user_id : str
            The external user id.
        key : str
            The entry's cache key.
        token : bytes or None
            The user's history token read with it (None: none yet).
        raw : bytes
            The entry as stored in Redis.

        Returns
        -------
        bool
            True when stored.
        """
        if ticket is None:
            return False
        with self._lock:
            # No _sync here: an invalidation still unread is read by the next get, before
            # anything is served, and drops this entry then.
            if not self._ready or ticket != self._seq:
                return False
            self._remove(key)
            self._entries[key] = (self._clock() + self.ttl_s, user_id, token, raw)
            self._users.setdefault(user_id, set()).add(key)
            while len(self._entries) > self.max_entries:
                self._remove(next(iter(self._entries)))
            self._counts["stores"] += 1
            return True

    def drop(self, users: Iterable[str]) -> None:
        """Forget the entries of ``users`` (this process's own invalidation).

        Parameters
        ----------
        users : Iterable[str]
            External user ids.

        Returns
        -------
        None
        """
        with self._lock:
            self._drop(list(users))

    def clear(self) -> None:
        """Forget every entry.

        Returns
        -------
        None
        """
        with self._lock:
            self._clear()

    def stats(self) -> dict[str, Any]:
        """Entries held, whether subscribed, and the counters.

        Returns
        -------
        dict
            ``entries``, ``subscribed`` and the counts of ``hits``, ``stores``,
            ``invalidations``, ``resets``, ``pings`` (sent) and ``lagged`` (copies not served
            because the last ping came back more than ``max_lag_s`` ago).
        """
        with self._lock:
            return {"entries": len(self._entries), "subscribed": self._ready, **self._counts}

    def wait_subscribed(self, timeout_s: float) -> bool:
        """Block until the subscription is confirmed: for start-up and tests.

        Parameters
        ----------
        timeout_s : float
            Seconds to wait at most.

        Returns
        -------
        bool
            True when subscribed.
        """
        with self._lock:
            self._sync()
            if self._ready or self._conn is None:
                return self._ready
            try:
                if self._conn.can_read(timeout=timeout_s):
                    self._handle(self._conn.read_response(push_request=True))
            except Exception as e:
                self._lost(e)
            self._sync()
            return self._ready

    def close(self) -> None:
        """Drop the subscription connection and every entry.

        Returns
        -------
        None
        """
        with self._lock:
            if self._conn is not None:
                self._conn.disconnect()
            self._conn = None
            self._ready = False
            self._clear()
            self._pings.clear()
            self._confirmed = self._ping_sent = float("-inf")

    # -- the pings -------------------------------------------------------------------------------
    def _ping_due(self, now: float) -> tuple[int, bytes] | None:
        """With the lock held: the ping to send now (recorded as sent), or None. One when the
        last ping read back is older than half the lag and none was sent for that long."""
        half = self.max_lag_s / 2
        if now - self._confirmed <= half or now - self._ping_sent < half:
            return None
        self._ping_seq += 1
        self._ping_sent = now
        self._pings[self._ping_seq] = now
        self._counts["pings"] += 1
        return self._ping_seq, PING_PREFIX + self._instance + b":" + str(self._ping_seq).encode()

    def _send_ping(self, seq: int, message: bytes) -> None:
        """Publish a ping, without the lock (one Redis round trip). A failure only means no
        local hit until a later ping comes back."""
        try:
            self._publish(self.channel, message)
        except Exception as e:
            log.debug("near cache: ping not published: %s", e)
            with self._lock:
                self._pings.pop(seq, None)

    def _read_ping(self, data: bytes) -> None:
        """With the lock held: a ping read back; another process's is ignored."""
        instance, _, seq = data[len(PING_PREFIX) :].partition(b":")
        if instance != self._instance or not seq.isdigit():
            return
        n = int(seq)
        sent = self._pings.get(n)
        if sent is None:  # sent before a reset
            return
        self._confirmed = max(self._confirmed, sent)
        for k in [k for k in self._pings if k <= n]:  # earlier ones were lost: delivery is ordered
            del self._pings[k]

    # -- the subscription (called with the lock held) ------------------------------------------
    def _sync(self) -> None:
        """Read every invalidation already received, without waiting; (re)subscribe when due."""
        if self._conn is None:
            if self._clock() < self._retry_at:
                return
            try:
                conn = self._connect()
                conn.connect()
                conn.send_command("SUBSCRIBE", self.channel)
            except Exception as e:
                self._lost(e)
                return
            self._conn = conn
        try:
            while self._conn.can_read(timeout=0):
                self._handle(self._conn.read_response(push_request=True))
        except Exception as e:
            self._lost(e)

    def _handle(self, reply: Any) -> None:
        kind, _, data = reply  # [kind, channel, data]; anything else raises: a reset
        if kind == b"message":
            if data.startswith(PING_PREFIX):
                self._read_ping(data)
                return
            if data == EVERYONE:
                self._clear()
            else:
                self._drop([data.decode()])
            self._counts["invalidations"] += 1
        elif kind == b"subscribe":
            self._ready = True
            self._retry_s = RETRY_START_S
        else:
            raise ValueError(f"unexpected pub/sub reply {kind!r}")

    def _lost(self, exc: Exception) -> None:
        if self._ready:
            log.warning("near cache: subscription lost, local copies dropped: %s", exc)
        if self._conn is not None:
            try:
                self._conn.disconnect()
            except Exception:  # already broken: nothing more to release
                pass
        self._conn = None
        self._ready = False
        self._clear()
        self._pings.clear()
        self._confirmed = self._ping_sent = float("-inf")
        self._counts["resets"] += 1
        self._retry_at = self._clock() + self._retry_s
        self._retry_s = min(self._retry_s * 2, RETRY_MAX_S)

    # -- the entries (called with the lock held) -----------------------------------------------
    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            keys = self._users.get(entry[1])
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._users[entry[1]]

    def _drop(self, users: list[str]) -> None:
        self._seq += 1
        for user in users:
            for key in self._users.pop(user, ()):
                self._entries.pop(key, None)

    def _clear(self) -> None:
        self._seq += 1
        self._entries.clear()
        self._users.clear()
