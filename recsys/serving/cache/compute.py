"""Convenience reads of the result cache: compute-on-miss for raw payloads and JSON dicts
(``ResultCache`` inherits them; the request path uses ``lookup`` / ``store`` directly).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # results imports this module
    from recsys.serving.cache.results import Peek


class ComputeOnMiss:
    """``lookup``, compute, ``store`` in one call, for callers that hold no lock of their own
    (``self`` is a ``ResultCache``)."""

    def get_or_compute_raw(
        self,
        user_id: str,
        context: dict[str, Any],
        compute: Callable[[], tuple[bytes, bool]],
        peeked: Peek | None = None,
    ) -> tuple[bytes, bool]:
        """``lookup``, then on a miss ``compute()`` and ``store``.

        Parameters
        ----------
        user_id : str
            The external user id.
        context : dict
            What the answer depends on besides the history (see ``result_key``).
        compute : callable
            ``compute() -> (payload, store)``: the payload is kept when ``store`` is true. On an
            exception the stampede lock is released and it propagates.
        peeked : Peek or None, optional
            A read already made for this request (the fast path's miss); None: read now.

        Returns
        -------
        (bytes, bool)
            The payload, and whether it came from the cache.
        """
        looked = self.lookup(user_id, context, peeked)
        if looked.hit is not None:
            return looked.hit, True
        try:
            payload, keep = compute()
        except BaseException:
            self.release(looked)
            raise
        self.store(looked, payload if keep else None)
        return payload, False

    def get_or_compute(
        self,
        user_id: str,
        context: dict[str, Any],
        compute: Callable[[], dict[str, Any]],
        store_if: Callable[[dict[str, Any]], bool] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """``get_or_compute_raw`` for JSON-able dicts.

        Parameters
        ----------
        user_id : str
            The external user id.
        context : dict
            What the answer depends on besides the history (see ``result_key``).
        compute : callable
            ``compute() -> dict`` on a miss.
        store_if : callable or None, optional
            ``store_if(value) -> bool``: whether to keep a computed value; None: always.

        Returns
        -------
        tuple of (dict, bool)
            The value, and whether it came from the cache.
        """
        computed: list[dict[str, Any]] = []

        def raw() -> tuple[bytes, bool]:
            value = compute()
            computed.append(value)
            body = json.dumps(value, separators=(",", ":")).encode()
            return body, store_if is None or bool(store_if(value))

        payload, cached = self.get_or_compute_raw(user_id, context, raw)
        return (json.loads(payload), True) if cached else (computed[0], False)

    def peek_dict(self, user_id: str, context: dict[str, Any]) -> dict[str, Any] | None:
        """The cached dict if present and fresh; never computes.

        Parameters
        ----------
        user_id : str
            The external user id.
        context : dict
            What the answer depends on besides the history (see ``result_key``).

        Returns
        -------
        dict or None
            The value; None: missing, stale, or the cache is unavailable.
        """
        raw = self.peek_raw(user_id, context)
        return None if raw is None else json.loads(raw)
