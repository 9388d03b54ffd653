"""HTTP caching of recommendation lists: ``ETag`` / ``If-None-Match`` -> 304 and
``Cache-Control``, the same on the WSGI fast path and through Flask.

The ETag is weak (``W/"..."``): it is computed over the body with the ``cached`` flag set to
false, so a list and its cached copy, which differ only in that flag, revalidate as the same
representation. ``Cache-Control: private, max-age=CACHE_TTL`` (the server keeps a list that
long too); a degraded list (a fallback) is ``no-cache``: the next request should get the real
one. An event invalidates the server's copy at once, a browser's only at max-age: a storefront
that shows a list right after an event should revalidate (``Cache-Control: no-cache`` or a
request with ``If-None-Match``, answered 304 while nothing changed).
"""

from __future__ import annotations

import zlib

_CACHED = b'"cached":true'
_NOT_CACHED = b'"cached":false'
_DEGRADED = b'"degraded":true'


def etag(body: bytes) -> str:
    """The weak ETag of a list answer's body, the same for its cached copy.

    Parameters
    ----------
    body : bytes
        The final JSON body.

    Returns
    -------
    str
        ``W/"<crc32 hex><length hex>"`` of the body with ``"cached":true`` read as false.
    """
    normal = body.replace(_CACHED, _NOT_CACHED, 1)
    return f'W/"{zlib.crc32(normal):08x}{len(normal):x}"'


def list_headers(body: bytes, ttl: int) -> tuple[str, list[tuple[str, str]]]:
    """``(etag, [ETag, Cache-Control])`` of a list answer's final body.

    Parameters
    ----------
    body : bytes
        The final JSON body.
    ttl : int
        ``max-age`` in seconds (``CACHE_TTL``); unused for a degraded body (``no-cache``).

    Returns
    -------
    tuple[str, list[tuple[str, str]]]
        The ETag, and the ``ETag`` and ``Cache-Control`` header pairs.
    """
    tag = etag(body)
    control = "no-cache" if _DEGRADED in body else f"private, max-age={int(ttl)}"
    return tag, [("ETag", tag), ("Cache-Control", control)]


def not_modified(if_none_match: str | None, tag: str) -> bool:
    """Whether ``If-None-Match`` names ``tag`` (weak comparison, RFC 9110 13.1.2).

    Parameters
    ----------
    if_none_match : str or None
        The request's ``If-None-Match`` header; None or "" when absent.
    tag : str
        The answer's ETag (``etag``).

    Returns
    -------
    bool
        True when the client's copy is current (answer 304): ``*``, or a listed tag that
        matches ``tag`` ignoring the ``W/`` prefix.
    """
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    bare = tag.removeprefix("W/")
    return any(t.strip().removeprefix("W/") == bare for t in if_none_match.split(","))
