"""A clock a test moves by hand, for code that takes an injectable ``clock`` callable."""

from __future__ import annotations


class ManualClock:
    def __init__(self, start: float = 100.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
