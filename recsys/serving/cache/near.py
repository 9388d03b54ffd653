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
  further away than the publisher. Then the request gets the old list, for as long as the message
  is late. That residual window is why the near cache is off by default. Without it,
  every hit reads the token from Redis.
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
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

# An invalidation naming more users than this is published as "*" (drop everything).
PUBLISH_MAX_USERS = 1000
EVERYONE = b"*"
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
        Their ids, or ``[b"*"]`` (everyone) for more than ``PUBLISH_MAX_USERS``.
    """
    if len(users) > PUBLISH_MAX_USERS:
        return [EVERYONE]
    return [u.encode() for u in users]


class NearCache:
    """Entries ``key -> (token, raw)`` of one process. Thread-safe.

    ``connect`` returns a new, unconnected redis-py ``Connection`` (the cache's own pool makes
    it, with its URL, database and timeouts)."""

    def __init__(
        self,
        connect: Callable[[], Any],
        channel: str,
        ttl_s: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._connect = connect
        self.channel = channel
        self.ttl_s = float(ttl_s)
        self.max_entries = max(1, int(max_entries))
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (expires at, user, token, raw); user -> its keys.
        self._entries: OrderedDict[str, tuple[float, str, bytes | None, bytes]] = OrderedDict()
        self._users: dict[str, set[str]] = {}
        self._conn: Any = None
        self._ready = False  # the subscription is confirmed
        self._retry_at = 0.0
        self._retry_s = RETRY_START_S
        self._seq = 0  # invalidations seen (and resets): the tickets' counter
        self._counts = {"hits": 0, "stores": 0, "invalidations": 0, "resets": 0}

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
            ``((token, raw), ticket)`` on a local hit; ``(None, ticket)`` on a miss, where the
            ticket lets ``put`` store what is read next; ``(None, None)`` while there is no
            confirmed subscription (nothing may be stored).
        """
        with self._lock:
            self._sync()
            if not self._ready:
                return None, None
            entry = self._entries.get(key)
            if entry is not None:
                if entry[0] > self._clock():
                    self._entries.move_to_end(key)
                    self._counts["hits"] += 1
                    return (entry[2], entry[3]), self._seq
                self._remove(key)
            return None, self._seq

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
            ``invalidations`` and ``resets``.
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
