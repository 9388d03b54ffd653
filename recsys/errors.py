"""The error types every layer raises, and a rate-limited log for recurring outages.

A leaf: imports nothing of ours, so the store, the models and the serving path can raise the
errors that ``recsys.web.errors`` turns into the API's one JSON error shape (and the CLI into a
clean message).
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import exc as sa_exc
from werkzeug.http import HTTP_STATUS_CODES as HTTP_STATUS_NAMES


class RecsysError(Exception):
    """Base for errors that map to an HTTP status (and a clean CLI message).

    Parameters
    ----------
    description : str
        The message shown to the client.
    code : int, optional
        HTTP status overriding the class's ``code``; a plain ``RecsysError`` then takes the
        status's standard name (422: "Unprocessable Entity").
    """

    code = 400
    name = "Bad Request"

    def __init__(self, description: str, code: int | None = None):
        super().__init__(description)
        self.description = description
        if code is not None:
            self.code = code
            if self.name == RecsysError.name:  # e.g. 422 should not be named "Bad Request"
                self.name = HTTP_STATUS_NAMES.get(code, self.name)


class NotFound(RecsysError):
    """The thing asked for does not exist (HTTP 404). Parameters as ``RecsysError``."""

    code = 404
    name = "Not Found"


class Conflict(RecsysError):
    """The request conflicts with the current state (HTTP 409). Parameters as ``RecsysError``."""

    code = 409
    name = "Conflict"


class ModelError(RecsysError):
    """A model version could not be loaded (missing, tampered, incompatible).

    HTTP 409. Parameters as ``RecsysError``.
    """

    code = 409
    name = "Model Error"


class DatabaseUnavailable(Exception):
    """The SQL store is not tried (circuit open, ``recsys.store.guard``) or did not answer in
    time (socket cut by the watchdog).

    Parameters
    ----------
    description : str
        The message; empty: "the database is unavailable (circuit open)".
    retry_after : int
        Seconds the client should wait before retrying (the ``Retry-After`` header).
    """

    def __init__(self, description: str = "", retry_after: int = 5):
        super().__init__(description or "the database is unavailable (circuit open)")
        self.retry_after = int(retry_after)


# The SQL store cannot be reached (down, hung, connection cut, pool exhausted, statement
# timeout): answered 503 + Retry-After, never acknowledged as done.
DB_UNAVAILABLE = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    DatabaseUnavailable,
)


class RateLimitedLog:
    """At most one line per ``every_s`` for a recurring condition (an outage refuses every
    request; one line each would flood the log): the first at once, later ones with the count
    of lines left out since.

    Parameters
    ----------
    logger : logging.Logger
        Where the lines go.
    every_s : float
        Minimum seconds between two lines.
    clock : callable
        Returns seconds, monotonic (``time.monotonic``; injectable for tests).
    """

    def __init__(self, logger: logging.Logger, every_s: float = 10.0, clock=time.monotonic):
        self.logger = logger
        self.every_s = every_s
        self.clock = clock
        self._lock = threading.Lock()
        self._last = -float("inf")
        self._suppressed = 0

    def warning(self, msg: str, *args) -> bool:
        """Log ``msg % args`` unless one was logged within ``every_s``.

        Parameters
        ----------
        msg : str
            %-format message.
        *args
            Its arguments.

        Returns
        -------
        bool
            True if logged (with the count of lines left out since the last one appended).
        """
        with self._lock:
            now = self.clock()
            if now - self._last < self.every_s:
                self._suppressed += 1
                return False
            self._last, left_out = now, self._suppressed
            self._suppressed = 0
        if left_out:
            msg += " (%d more like this in the last %.0f s)"
            args = (*args, left_out, self.every_s)
        self.logger.warning(msg, *args)
        return True
