"""Authentication: the admin token and API keys with scopes.

Admin: ``Authorization: Bearer $RECSYS_ADMIN_TOKEN``. No token configured means admin is
disabled (403), never open. The comparison is constant-time (``hmac.compare_digest``) so
response timing does not leak the token. The admin token is not an API key, nor the reverse.

API keys (``RECSYS_API_KEYS``): each key has scopes, ``events:write`` (``POST /v1/events``),
``catalog:write`` (``PUT /v1/items|users/<id>``) and ``read`` (recommendations, similar,
popular; required only with ``API_KEYS_FOR_READS``). Sent as ``X-API-Key: <key>`` or
``Authorization: Bearer <key>``. With keys configured a write without a key is 401, with a key
lacking the scope 403; with none configured writes are open (development). Keys are kept as
SHA-256 digests and looked up by the digest of what the request sends, so the lookup's timing
says nothing about the keys.

Keys can also be added and revoked at run time, without a restart (``recsys keys``,
``/v1/admin/keys``; recsys.serving.keystore): every process re-reads the stored keys at most
every ``CONFIG_POLL_SECONDS``, so a revoked key (a stored one, or one of ``RECSYS_API_KEYS``)
is refused everywhere within one poll interval.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, current_app, g, request

from recsys.config import get_config
from recsys.serving.keystore import SCOPES, KeyTable
from recsys.web.errors import RecsysError


class Unauthorized(RecsysError):
    """401: the request lacks valid credentials (admin token or API key)."""

    code = 401
    name = "Unauthorized"


class Forbidden(RecsysError):
    """403: the credentials are valid but do not allow this (admin disabled, scope missing)."""

    code = 403
    name = "Forbidden"


def check_admin() -> str:
    """Raise unless the request carries the admin token (``ADMIN_TOKEN``).

    Returns
    -------
    str
        The actor name for the audit.
    """
    token = get_config(current_app).admin_token
    if not token:
        raise Forbidden("admin is disabled: RECSYS_ADMIN_TOKEN is not configured")
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
    if not hmac.compare_digest(given.strip().encode(), str(token).encode()):
        raise Unauthorized("invalid admin token")
    actor = request.headers.get("X-Actor", "admin")[:128] or "admin"
    g.admin_actor = actor
    return actor


def is_admin() -> bool:
    """Whether the request carries the admin token (never raises: for answers that show more
    to an admin, such as /readyz's reasons).

    Returns
    -------
    bool
        True when ``check_admin`` would pass.
    """
    try:
        check_admin()
    except RecsysError:
        return False
    return True


def require_admin(fn: Callable[..., Any]) -> Callable[..., Any]:
    """View decorator: admin token required.

    Parameters
    ----------
    fn : Callable[..., Any]
        The view.

    Returns
    -------
    Callable[..., Any]
        ``fn`` wrapped: it calls ``check_admin`` (which raises ``Forbidden`` / ``Unauthorized``)
        before the view runs.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        check_admin()
        return fn(*args, **kwargs)

    return wrapper


API_KEYS_EXTENSION = "recsys.api_keys"


def parse_api_keys(value: Any) -> dict[str, frozenset[str]]:
    """``RECSYS_API_KEYS`` -> {sha256 hex of key: scopes}. ``value``: None or "" (no keys), a
    string ``"key=scope,scope;key2=scope"`` (entries separated by ``;`` or newlines), or a
    mapping ``{key: [scope, ...]}``. Raises ValueError naming what is wrong (at start-up).

    Parameters
    ----------
    value : Any
        The ``API_KEYS`` setting: None or "" (no keys), a ``"key=scope,scope;key2=scope"``
        string, or a mapping of key -> list of scopes (or comma-separated string).

    Returns
    -------
    dict[str, frozenset[str]]
        Hex SHA-256 of each key -> its scopes (the keys themselves are not kept).

    Raises
    ------
    ValueError
        An entry without ``=``, an empty key, a key without scopes, or an unknown scope.
    """
    if not value:
        return {}
    if isinstance(value, Mapping):
        pairs = [
            (str(k), list(v) if not isinstance(v, str) else v.split(",")) for k, v in value.items()
        ]
    else:
        pairs = []
        for entry in str(value).replace("\n", ";").split(";"):
            if not entry.strip():
                continue
            key, sep, scopes = entry.strip().partition("=")
            if not sep:
                raise ValueError("RECSYS_API_KEYS: each entry is key=scope[,scope] (got no '=')")
            pairs.append((key.strip(), scopes.split(",")))
    out: dict[str, frozenset[str]] = {}
    for key, scopes in pairs:
        wanted = frozenset(s.strip() for s in scopes if s.strip())
        if not key:
            raise ValueError("RECSYS_API_KEYS: empty key")
        if unknown := wanted - set(SCOPES):
            raise ValueError(
                f"RECSYS_API_KEYS: unknown scope(s) {sorted(unknown)}; known: {', '.join(SCOPES)}"
            )
        if not wanted:
            raise ValueError("RECSYS_API_KEYS: a key without scopes")
        out[_digest(key)] = wanted
    return out


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def init_app(app: Flask) -> None:
    """Parse ``API_KEYS`` once into the app's key table (``KeyTable``: those plus the stored
    keys, polled).

    Parameters
    ----------
    app : Flask
        The app (its settings: ``recsys.config.get_config``).

    Returns
    -------
    None
    """
    cfg = get_config(app)
    app.extensions[API_KEYS_EXTENSION] = KeyTable(
        parse_api_keys(cfg.api_keys),
        lambda: app.extensions["recsys.sessionmaker"](),
        cfg.config_poll_seconds,
    )


def key_table(app: Flask) -> KeyTable:
    """The app's key table (``init_app``).

    Parameters
    ----------
    app : Flask
        The app.

    Returns
    -------
    KeyTable
        The configured keys plus the stored ones.
    """
    return app.extensions[API_KEYS_EXTENSION]


def keys_required(app: Flask, scope: str) -> bool:
    """Whether requests needing ``scope`` must carry a key (keys are configured, and for
    ``read`` only with API_KEYS_FOR_READS).

    Parameters
    ----------
    app : Flask
        The app (its settings: ``recsys.config.get_config``).
    scope : str
        ``events:write``, ``catalog:write`` or ``read``.

    Returns
    -------
    bool
        True when a key is required.
    """
    if scope == "read" and not get_config(app).api_keys_for_reads:
        return False
    return key_table(app).required()


def given_key(api_key_header: str | None, authorization: str | None) -> str | None:
    """The API key a request presents: ``X-API-Key``, else an ``Authorization: Bearer`` token.

    Parameters
    ----------
    api_key_header : str or None
        The ``X-API-Key`` header; None when absent.
    authorization : str or None
        The ``Authorization`` header; None when absent.

    Returns
    -------
    str or None
        The key, stripped of spaces; None when the request presents none.
    """
    if api_key_header:
        return api_key_header.strip()
    scheme, _, value = (authorization or "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def key_allows(app: Flask, key: str | None, scope: str) -> bool:
    """Whether ``key`` is configured with ``scope``.

    Parameters
    ----------
    app : Flask
        The app holding the key table (``init_app``).
    key : str or None
        The key presented; None allows nothing.
    scope : str
        ``events:write``, ``catalog:write`` or ``read``.

    Returns
    -------
    bool
        True when ``key`` is configured and has ``scope``.
    """
    scopes = key_table(app).scopes(_digest(key)) if key else None
    return scopes is not None and scope in scopes


# WSGI environ key marking a read the service makes of itself on an admin's behalf (the operator
# console's previews, already behind the admin token). Only code can set it: request headers
# arrive as HTTP_* keys.
INTERNAL_READ = "recsys.internal_read"


def check_scope(scope: str) -> None:
    """Raise unless the request may do what ``scope`` covers (see the module docstring).

    Parameters
    ----------
    scope : str
        ``events:write``, ``catalog:write`` or ``read``.

    Raises
    ------
    Unauthorized
        Keys are required and the request presents none, or an unknown one.
    Forbidden
        The key presented lacks ``scope``.
    """
    app = current_app._get_current_object()
    if not keys_required(app, scope):
        return
    if scope == "read" and request.environ.get(INTERNAL_READ) is True:
        return
    key = given_key(request.headers.get("X-API-Key"), request.headers.get("Authorization"))
    if key is None:
        raise Unauthorized(f"an API key with scope {scope!r} is required (X-API-Key: <key>)")
    scopes = key_table(app).scopes(_digest(key))
    if scopes is None:
        raise Unauthorized("invalid API key")
    if scope not in scopes:
        raise Forbidden(f"this API key lacks the scope {scope!r}")


def require_scope(scope: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """View decorator: an API key with ``scope`` (when keys are configured).

    Parameters
    ----------
    scope : str
        ``events:write``, ``catalog:write`` or ``read``.

    Returns
    -------
    Callable[[Callable[..., Any]], Callable[..., Any]]
        A decorator wrapping a view so that ``check_scope(scope)`` runs before it.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            check_scope(scope)
            return fn(*args, **kwargs)

        return wrapper

    return decorate


def request_actor() -> str:
    """Who the current request acts as, for audit rows of the public API.

    Returns
    -------
    str
        ``api-key:<id>`` (the 12 hex characters ``/v1/admin/keys`` shows) for a configured
        API key; ``api`` otherwise (no keys required, none presented).
    """
    key = given_key(request.headers.get("X-API-Key"), request.headers.get("Authorization"))
    if key and key_table(current_app._get_current_object()).scopes(_digest(key)) is not None:
        return f"api-key:{_digest(key)[:12]}"
    return "api"
