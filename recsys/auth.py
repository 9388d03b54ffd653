"""Admin authentication: ``Authorization: Bearer $RECSYS_ADMIN_TOKEN``.

No token configured means admin is disabled (403), never open. The comparison is constant-time
(``hmac.compare_digest``) so response timing does not leak the token.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from typing import Any

from flask import current_app, g, request

from recsys.errors import RecsysError


class Unauthorized(RecsysError):
    code = 401
    name = "Unauthorized"


class Forbidden(RecsysError):
    code = 403
    name = "Forbidden"


def check_admin() -> str:
    """Raise unless the request carries the admin token; returns the actor name for the audit."""
    token = current_app.config.get("ADMIN_TOKEN")
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
    to an admin, such as /readyz's reasons)."""
    try:
        check_admin()
    except RecsysError:
        return False
    return True


def require_admin(fn: Callable[..., Any]) -> Callable[..., Any]:
    """View decorator: admin token required."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        check_admin()
        return fn(*args, **kwargs)

    return wrapper
