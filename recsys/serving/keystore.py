"""API keys kept in the shared SQL settings store, so a key can be added or revoked without a
restart (issue 30, 5g).

Two sources of keys, both stored only as SHA-256 digests:

* the configuration (``RECSYS_API_KEYS``), read once at start, as before;
* the ``settings`` row ``api_keys``: ``{"keys": {id: {"sha256", "scopes", "label",
  "created_at"}}, "revoked": [sha256, ...]}``, managed with ``recsys keys add|revoke|list`` and
  ``/v1/admin/keys``. ``revoked`` also holds configuration keys revoked there, so a leaked
  ``RECSYS_API_KEYS`` key stops working before the configuration is edited and the service
  restarted.

Each process re-reads the row at most every ``CONFIG_POLL_SECONDS`` (in the background, like
the serving configuration: ``recsys.ops.polling``), so a key revoked anywhere is refused by
every worker of every server within one poll interval. While the store cannot be read the last
table read keeps answering (an outage line now and then, no traceback). Once the row exists
keys are required (revoking every stored key does not open the writes again).
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from recsys.errors import RateLimitedLog
from recsys.ops.polling import BackgroundPoll
from recsys.store.models import Setting

log = logging.getLogger(__name__)
_outage_log = RateLimitedLog(log)

ROW = "api_keys"
SCOPES = ("events:write", "catalog:write", "read")
MAX_LABEL = 128
MAX_KEYS = 1000


class KeyStoreError(ValueError):
    """A key operation the store refuses (unknown scope or key, a bad label): a 4xx."""


def digest(key: str) -> str:
    """The SHA-256 hex digest a key is kept and looked up as.

    Parameters
    ----------
    key : str
        The key itself.

    Returns
    -------
    str
        64 hex characters.
    """
    return hashlib.sha256(key.encode()).hexdigest()


def _row_value(s: Session) -> dict[str, Any] | None:
    row = s.get(Setting, ROW)
    return dict(row.value or {}) if row is not None else None


def read_table(s: Session) -> tuple[bool, dict[str, frozenset[str]], frozenset[str]]:
    """The stored keys as the request path uses them.

    Parameters
    ----------
    s : Session
        The session read from.

    Returns
    -------
    tuple of (bool, dict, frozenset)
        Whether the row exists, stored digest -> scopes, and the revoked digests.
    """
    value = _row_value(s)
    if value is None:
        return False, {}, frozenset()
    keys = {
        str(k["sha256"]): frozenset(k.get("scopes") or ())
        for k in (value.get("keys") or {}).values()
        if isinstance(k, Mapping) and k.get("sha256")
    }
    return True, keys, frozenset(str(d) for d in value.get("revoked") or ())


def _check_scopes(scopes: Iterable[str]) -> list[str]:
    wanted = sorted({str(x).strip() for x in scopes if str(x).strip()})
    if not wanted:
        raise KeyStoreError(f"give at least one scope of {list(SCOPES)}")
    if unknown := sorted(set(wanted) - set(SCOPES)):
        raise KeyStoreError(f"unknown scope(s) {unknown}; known: {list(SCOPES)}")
    return wanted


def _write(s: Session, value: dict[str, Any]) -> None:
    row = s.get(Setting, ROW, with_for_update=True)
    if row is None:
        s.add(Setting(key=ROW, value=value))
    else:
        row.value = value


def add_key(s: Session, scopes: Iterable[str], label: str = "") -> dict[str, Any]:
    """Create a key with ``scopes`` (in the caller's transaction); the key itself is returned
    once and only its digest is stored.

    Parameters
    ----------
    s : Session
        The session (the caller commits).
    scopes : iterable of str
        Some of ``SCOPES``.
    label : str, optional
        Who or what the key is for (at most ``MAX_LABEL`` characters).

    Returns
    -------
    dict
        ``id``, ``key`` (shown this once), ``scopes``, ``label``, ``created_at``.

    Raises
    ------
    KeyStoreError
        No or an unknown scope, a label too long, or ``MAX_KEYS`` keys stored already.
    """
    wanted = _check_scopes(scopes)
    label = str(label or "")
    if len(label) > MAX_LABEL or "\x00" in label:
        raise KeyStoreError(f"label must be at most {MAX_LABEL} characters, without NUL")
    s.get(Setting, ROW, with_for_update=True)  # serialise writers
    value = _row_value(s) or {}
    keys = dict(value.get("keys") or {})
    if len(keys) >= MAX_KEYS:
        raise KeyStoreError(f"at most {MAX_KEYS} stored keys; revoke some first")
    key = "rk_" + secrets.token_urlsafe(32)
    d = digest(key)
    entry = {
        "sha256": d,
        "scopes": wanted,
        "label": label,
        "created_at": datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="seconds"),
    }
    keys[d[:12]] = entry
    _write(s, {"keys": keys, "revoked": list(value.get("revoked") or [])})
    return {"id": d[:12], "key": key, **{k: v for k, v in entry.items() if k != "sha256"}}


def revoke_key(s: Session, ident: str, config_digests: Iterable[str] = ()) -> dict[str, Any]:
    """Revoke a stored key (by its id or the key itself) or a configuration key (the key
    itself, or the id ``list_keys`` shows for it), in the caller's transaction.

    Parameters
    ----------
    s : Session
        The session (the caller commits).
    ident : str
        A key id (12 hex characters) or the key itself.
    config_digests : iterable of str
        The digests of the ``RECSYS_API_KEYS`` keys.

    Returns
    -------
    dict
        ``id`` and ``source`` (``stored`` or ``config``) of the key revoked.

    Raises
    ------
    KeyStoreError
        No key matches ``ident``.
    """
    ident = str(ident or "").strip()
    s.get(Setting, ROW, with_for_update=True)
    value = _row_value(s) or {}
    keys = dict(value.get("keys") or {})
    revoked = set(value.get("revoked") or [])
    config = set(config_digests)
    d = digest(ident)
    for kid, entry in list(keys.items()):
        if ident == kid or entry.get("sha256") == d:
            del keys[kid]
            _write(s, {"keys": keys, "revoked": sorted(revoked)})
            return {"id": kid, "source": "stored"}
    match = next((c for c in config if ident in (c[:12], c) or c == d), None)
    if match is None or not ident:
        raise KeyStoreError("no such key (give its id from `recsys keys list`, or the key)")
    revoked.add(match)
    _write(s, {"keys": keys, "revoked": sorted(revoked)})
    return {"id": match[:12], "source": "config"}


def list_keys(s: Session, config: Mapping[str, frozenset[str]]) -> list[dict[str, Any]]:
    """Every key that works now (never the keys themselves).

    Parameters
    ----------
    s : Session
        The session read from.
    config : Mapping of str to frozenset of str
        The ``RECSYS_API_KEYS`` keys: digest -> scopes.

    Returns
    -------
    list of dict
        ``id``, ``source`` (``config`` or ``stored``), ``scopes``, ``label``, ``created_at``.
    """
    value = _row_value(s) or {}
    revoked = set(value.get("revoked") or [])
    out = [
        {"id": d[:12], "source": "config", "scopes": sorted(sc), "label": "", "created_at": None}
        for d, sc in sorted(config.items())
        if d not in revoked
    ]
    for kid, entry in sorted((value.get("keys") or {}).items()):
        out.append(
            {
                "id": kid,
                "source": "stored",
                "scopes": list(entry.get("scopes") or []),
                "label": entry.get("label", ""),
                "created_at": entry.get("created_at"),
            }
        )
    return out


class KeyTable:
    """The keys one process accepts: the configuration's, plus the stored ones less the
    revoked, re-read from SQL at most every ``poll_seconds`` (in the background).

    Parameters
    ----------
    config : Mapping of str to frozenset of str
        The ``RECSYS_API_KEYS`` keys: digest -> scopes.
    sessions : callable
        Returns a new SQLAlchemy ``Session`` (the app's sessionmaker).
    poll_seconds : float
        ``CONFIG_POLL_SECONDS``; 0: read on every use.
    """

    def __init__(
        self,
        config: Mapping[str, frozenset[str]],
        sessions: Callable[[], Session],
        poll_seconds: float,
    ):
        self.config = dict(config)
        self.sessions = sessions
        self.poll_seconds = float(poll_seconds)
        self.clock: Callable[[], float] = time.monotonic  # injectable (tests)
        self._lock = threading.Lock()
        self._loaded = False
        self._exists = False
        self._stored: dict[str, frozenset[str]] = {}
        self._revoked: frozenset[str] = frozenset()
        self._polled_at = 0.0
        self._pid = os.getpid()
        self.poller = BackgroundPoll("api-keys", self._poll)

    def changed(self) -> None:
        """This process changed the stored keys: read them again before the next answer.

        Returns
        -------
        None
        """
        self._loaded = False

    def _poll(self) -> None:
        with self._lock:
            try:
                with self.sessions() as s:
                    self._exists, self._stored, self._revoked = read_table(s)
                self._loaded = True
            except Exception as e:  # noqa: BLE001 - serve the last table read
                if not self._loaded and not self.config:
                    # Nothing known yet and nothing configured: do not open what a stored key
                    # may close; the caller answers 503 through the database guard.
                    raise
                _outage_log.warning("reading the stored API keys failed: %s", e)
            self._polled_at = self.clock()

    def _refresh(self) -> None:
        if self._pid != os.getpid():
            # Forked (a gunicorn worker): the lock may be held by a thread of the parent only.
            self._lock, self._pid, self._loaded = threading.Lock(), os.getpid(), False
        if not self._loaded:
            self._poll()  # inline: the first read, or after this process changed them
        elif self.clock() - self._polled_at >= self.poll_seconds:
            if self.poll_seconds > 0:
                self.poller.trigger()
            else:
                self._poll()

    def required(self) -> bool:
        """Whether keys are in force: configured, or the stored row exists.

        Returns
        -------
        bool
        """
        if self.config:
            self._refresh_quietly()
            return True
        self._refresh_quietly()
        return self._exists

    def _refresh_quietly(self) -> None:
        try:
            self._refresh()
        except Exception:  # noqa: BLE001 - keys configured: answer from those
            if not self.config:
                raise

    def scopes(self, key_digest: str) -> frozenset[str] | None:
        """The scopes of the key with ``key_digest``; None when it is unknown or revoked.

        Parameters
        ----------
        key_digest : str
            ``digest(key)`` of what the request presents.

        Returns
        -------
        frozenset of str or None
        """
        self._refresh_quietly()
        if key_digest in self._revoked:
            return None
        return self.config.get(key_digest) or self._stored.get(key_digest)
