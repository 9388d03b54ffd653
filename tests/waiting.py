"""Waiting for a condition in tests without a wall-clock window.

``wait_until`` polls a predicate until it holds. Its ``timeout`` is a hang guard, not a
window: a slow machine only makes it poll longer, and a test fails only when the condition
never comes (a real bug) or the machine stalls for the whole guard. Tests use it where no event
can be hooked into the code under test (another thread queueing in a gate or batcher).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

HANG_GUARD_S = 30.0
_tick = threading.Event()  # never set: ``wait`` on it is a pause that tools do not flag


def wait_until(
    predicate: Callable[[], object], what: str = "condition", timeout: float = HANG_GUARD_S
) -> None:
    """Return as soon as ``predicate()`` is true; fail after ``timeout`` seconds (a hang)."""
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"{what}: not reached within {timeout:.0f} s"
        _tick.wait(0.002)
