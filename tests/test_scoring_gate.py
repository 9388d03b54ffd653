"""recsys.deadline.ScoringGate: at most N scorers per process, high priority first, then
arrival order, and a bounded wait."""

from __future__ import annotations

import threading
import time

import pytest

from recsys.deadline import ScoringGate, scoring_gate


def _waiter(gate, priority, order, timeout=5.0):
    def run():
        if gate.acquire(priority, timeout):
            order.append(priority)
            gate.release()

    t = threading.Thread(target=run)
    t.start()
    return t


def _queued(gate, n, timeout=5.0):
    end = time.monotonic() + timeout
    while len(gate._queue) < n:
        assert time.monotonic() < end, "waiters did not queue"
        time.sleep(0.005)


def test_one_slot_serialises_and_serves_high_priority_first():
    gate = ScoringGate(1)
    assert gate.acquire()
    order: list[str] = []
    threads = []
    for i, p in enumerate(["low", "normal", "low", "high", "normal"]):
        threads.append(_waiter(gate, p, order))
        _queued(gate, i + 1)  # each is waiting before the next arrives
    assert order == []  # nobody scores while the slot is held
    gate.release()
    for t in threads:
        t.join(5)
    assert order == ["high", "normal", "normal", "low", "low"]
    assert gate._busy == 0 and gate._queue == []


def test_two_slots_let_two_in_and_queue_the_third():
    gate = ScoringGate(2)
    assert gate.acquire() and gate.acquire()
    order: list[str] = []
    t = _waiter(gate, "normal", order)
    _queued(gate, 1)
    assert order == []
    gate.release()
    t.join(5)
    assert order == ["normal"]
    gate.release()
    assert gate._busy == 0


def test_a_waiter_gives_up_at_its_timeout_and_leaves_the_queue():
    gate = ScoringGate(1)
    assert gate.acquire()
    t0 = time.monotonic()
    assert gate.acquire("normal", 0.05) is False
    assert 0.04 < time.monotonic() - t0 < 1.0
    assert gate._queue == []
    # Behind a waiter that gave up, the next one still gets the slot on release.
    order: list[str] = []
    t = _waiter(gate, "low", order)
    _queued(gate, 1)
    gate.release()
    t.join(5)
    assert order == ["low"]


def test_turn_reports_the_wait_or_none():
    gate = ScoringGate(1)
    with gate.turn() as waited:
        assert waited is not None and waited < 0.05
        with gate.turn("high", 0.02) as inner:
            assert inner is None  # held by the outer turn
    assert gate._busy == 0
    threading.Timer(0.1, gate.release).start()
    assert gate.acquire()
    with gate.turn("normal", 2.0) as waited:
        assert waited > 0.05
    # The timer released the acquire above (which the turn waited for); the turn its own.
    assert gate._busy == 0


def test_zero_slots_never_waits():
    gate = ScoringGate(0)
    for _ in range(100):
        assert gate.acquire("low", 0)
    with gate.turn("low", 0) as waited:
        assert waited is not None


def test_one_gate_per_process_and_setting():
    assert scoring_gate(1) is scoring_gate(1)
    assert scoring_gate(2).slots == 2
    assert scoring_gate(1) is not None and scoring_gate(1).slots == 1


@pytest.mark.parametrize("slots", [1, 3])
def test_no_more_than_slots_score_at_once(slots):
    gate = ScoringGate(slots)
    active = peak = 0
    lock = threading.Lock()

    def work():
        nonlocal active, peak
        for _ in range(20):
            with gate.turn("normal", 5.0) as waited:
                assert waited is not None
                with lock:
                    active += 1
                    peak = max(peak, active)
                time.sleep(0.001)
                with lock:
                    active -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert peak == slots


def test_timeouts_racing_hand_overs_leave_a_consistent_gate():
    # Short timeouts under contention: some waiters give up while slots are being handed
    # over. Whoever got a turn releases it; in the end no slot is leaked or double-counted.
    gate = ScoringGate(2)
    active = peak = 0
    got = gave_up = 0
    lock = threading.Lock()

    def work():
        nonlocal active, peak, got, gave_up
        for i in range(200):
            if gate.acquire("high" if i % 3 == 0 else "normal", 0.0005):
                with lock:
                    got += 1
                    active += 1
                    peak = max(peak, active)
                time.sleep(0.0002)
                with lock:
                    active -= 1
                gate.release()
            else:
                with lock:
                    gave_up += 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert got + gave_up == 1600 and got > 0
    assert peak <= 2
    assert gate._busy == 0 and gate._queue == []
    assert gate.acquire() and gate.acquire() and not gate.acquire("normal", 0.01)
