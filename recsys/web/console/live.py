"""The Live screen's data: snapshots of the service's own ``/metrics`` (``recsys.ops.livestats``:
``snapshot``, ``quantile``) and their short shared history (``History``), which the page draws
from first, so its charts survive a reload.
"""

from __future__ import annotations

import time
from typing import Any

from recsys.ops.livestats import quantile, snapshot

__all__ = ["HISTORY_POINTS", "HISTORY_STEP_S", "History", "quantile", "snapshot"]


#: Snapshots kept for the Live screen's history (at one per ``HISTORY_STEP_S``: 5 minutes).
HISTORY_POINTS = 100
HISTORY_STEP_S = 3.0


class History:
    """The Live screen's recent snapshots, shared by every worker and kept across page loads:
    a Redis list when the cache is Redis (one snapshot per ``HISTORY_STEP_S`` slot, whichever
    worker samples first: ``SET NX`` on the slot), else this process's memory.

    Parameters
    ----------
    client : redis.Redis or None
        The Redis client; None: in memory.
    key : str
        The list's key (the slot keys are ``key:slot:<n>``).
    clock : Callable[[], float]
        Unix seconds (tests move it).
    """

    def __init__(self, client: Any, key: str, clock=time.time) -> None:
        from collections import deque

        self.client, self.key, self.clock = client, key, clock
        self._local: deque[dict[str, Any]] = deque(maxlen=HISTORY_POINTS)

    def add(self, snap: dict[str, Any]) -> bool:
        """Keep ``snap`` unless one was kept in its time slot already.

        Parameters
        ----------
        snap : dict[str, Any]
            A ``snapshot``.

        Returns
        -------
        bool
            Whether it was kept.
        """
        import json

        slot = int(snap["t"] // HISTORY_STEP_S)
        if self.client is None:
            if self._local and int(self._local[-1]["t"] // HISTORY_STEP_S) == slot:
                return False
            self._local.append(snap)
            return True
        ttl = int(HISTORY_STEP_S * HISTORY_POINTS) + 60
        if not self.client.set(f"{self.key}:slot:{slot}", b"1", nx=True, ex=int(ttl)):
            return False
        pipe = self.client.pipeline(transaction=False)
        pipe.rpush(self.key, json.dumps(snap, separators=(",", ":")))
        pipe.ltrim(self.key, -HISTORY_POINTS, -1)
        pipe.expire(self.key, ttl)
        pipe.execute()
        return True

    def recent(self) -> list[dict[str, Any]]:
        """The kept snapshots, oldest first, those older than the window left out.

        Returns
        -------
        list[dict[str, Any]]
            Snapshots.
        """
        import json

        if self.client is None:
            rows = list(self._local)
        else:
            rows = [json.loads(r) for r in self.client.lrange(self.key, 0, -1)]
        since = self.clock() - HISTORY_STEP_S * HISTORY_POINTS
        return [r for r in rows if r["t"] >= since]
