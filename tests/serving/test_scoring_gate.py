"""recsys.serving.gate.ScoringGate: at most N scorers per process, high priority first, then
arrival order, and a bounded wait."""

from __future__ import annotations

import threading
import time

import pytest

from recsys.serving.gate import ScoringGate, scoring_gate
from tests.waiting import wait_until


def _started(fn) -> threading.Thread:
    t = threading.Thread(target=fn)
    t.start()
    return t


def _waiter(gate, priority, order, timeout=5.0):
    def run():
        if gate.acquire(priority, timeout):
            order.append(priority)
            gate.release()

    return _started(run)


def _queued(gate, n):
    """Wait until ``n`` callers wait in the gate (``acquire`` and ``combine`` share a queue)."""
    wait_until(lambda: gate.stats()["waiting"] >= n, f"{n} waiters queued")


def _idle(gate) -> bool:
    """Nobody scoring and nobody waiting."""
    st = gate.stats()
    return st["busy"] == 0 and st["waiting"] == 0


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
    assert _idle(gate)


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
    assert gate.stats()["busy"] == 0


def test_a_waiter_gives_up_at_its_timeout_and_leaves_the_queue():
    gate = ScoringGate(1)
    assert gate.acquire()
    t0 = time.monotonic()
    assert gate.acquire("normal", 0.05) is False
    assert time.monotonic() - t0 >= 0.05  # it waited its whole timeout (an upper bound is load)
    assert gate.stats()["waiting"] == 0
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
        assert waited is not None and waited >= 0
        with gate.turn("high", 0.02) as inner:
            assert inner is None  # held by the outer turn
    assert gate.stats()["busy"] == 0
    assert gate.acquire()
    # Released by another thread once the turn below waits for it.
    releaser = _started(lambda: (_queued(gate, 1), gate.release()))
    with gate.turn("normal", 30.0) as waited:
        assert waited is not None and waited > 0
    releaser.join(30)
    # The timer released the acquire above (which the turn waited for); the turn its own.
    assert gate.stats()["busy"] == 0


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
    active = peak = arrivals = 0
    lock = threading.Lock()
    # The first ``slots`` turns meet here: it opens only while all of them hold a turn at once.
    together = threading.Barrier(slots, timeout=30)

    def work():
        nonlocal active, peak, arrivals
        for _ in range(20):
            with gate.turn("normal", 30.0) as waited:
                assert waited is not None
                with lock:
                    active += 1
                    peak = max(peak, active)
                    arrivals += 1
                    first = arrivals <= slots
                if first:
                    together.wait()
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
    assert _idle(gate)
    assert gate.acquire() and gate.acquire() and not gate.acquire("normal", 0.01)


# -- combined turns -------------------------------------------------------------------------------
class _Batches:
    """A ``run_batch`` that records each batch and answers every job with (job, batch number)."""

    def __init__(self, fail: bool = False):
        self.batches: list[list] = []
        self.fail = fail

    def __call__(self, jobs):
        self.batches.append([job for job, _ in jobs])
        if self.fail:
            raise ValueError("scoring broke")
        return [(job, len(self.batches)) for job, _ in jobs]


def _combiner(gate, key, job, run, out, priority="normal", timeout=5.0, max_batch=8):
    def go():
        try:
            out[job] = gate.combine(key, job, run, priority, timeout, max_batch)
        except Exception as e:  # noqa: BLE001 - recorded for the assertion
            out[job] = e

    return _started(go)


def _jobs_queued(gate, n):
    _queued(gate, n)


def test_the_next_turn_scores_every_compatible_waiter_in_one_batch():
    gate, run, out = ScoringGate(1), _Batches(), {}
    assert gate.acquire()
    threads = []
    for i, (key, job) in enumerate([("a", "j1"), ("b", "j2"), ("a", "j3"), ("a", "j4")]):
        threads.append(_combiner(gate, key, job, run, out))
        _jobs_queued(gate, i + 1)
    gate.release()
    for t in threads:
        t.join(5)
    # j1 got the turn and took j3 and j4 (same key, arrival order); j2 ("b") went alone.
    assert run.batches == [["j1", "j3", "j4"], ["j2"]]
    for job, batch in (("j1", 1), ("j3", 1), ("j4", 1), ("j2", 2)):
        scored, result, waited = out[job]
        assert scored and result == (job, batch) and waited > 0
    assert _idle(gate)


def test_the_holder_takes_high_priority_first_and_at_most_max_batch():
    gate, run, out = ScoringGate(1), _Batches(), {}
    assert gate.acquire()
    threads = []
    for i, (job, priority) in enumerate([("l1", "low"), ("n1", "normal"), ("h1", "high")]):
        threads.append(_combiner(gate, "k", job, run, out, priority, max_batch=2))
        _jobs_queued(gate, i + 1)
    gate.release()
    for t in threads:
        t.join(5)
    assert run.batches == [["h1", "n1"], ["l1"]]


def test_a_waiter_nobody_takes_gives_up_at_its_timeout():
    gate, run, out = ScoringGate(1), _Batches(), {}
    assert gate.acquire()
    t = _combiner(gate, "k", "late", run, out, timeout=0.05)
    t.join(5)
    scored, result, waited = out["late"]
    assert not scored and result is None and waited >= 0.05
    assert gate.stats()["waiting"] == 0 and run.batches == []
    gate.release()
    assert gate.combine("k", "next", run) == (True, ("next", 1), pytest.approx(0, abs=0.5))


def test_a_taken_waiter_gets_its_result_even_past_its_timeout():
    gate, out = ScoringGate(1), {}
    w_timeout = 0.2
    outlasted = threading.Event()  # never set: waiting on it is the forward pass's length

    def slow(jobs):
        # Longer than the waiter's own timeout, counted from when the batch started (after
        # "w" queued): however slow the machine, the batch outlasts it.
        outlasted.wait(2 * w_timeout)
        return [job for job, _ in jobs]

    assert gate.acquire()
    holder = _combiner(gate, "k", "h", slow, out)  # first in line: it gets the next turn
    _jobs_queued(gate, 1)
    waiter = _combiner(gate, "k", "w", slow, out, timeout=w_timeout)
    _jobs_queued(gate, 2)
    gate.release()  # "h" takes "w" along; the batch outlasts "w"'s own timeout
    holder.join(30)
    waiter.join(30)
    # Taken into the batch, "w" got its result although the batch outlasted its timeout.
    assert out["h"][:2] == (True, "h") and out["w"][:2] == (True, "w")


def test_a_failed_batch_fails_every_job_in_it_and_frees_the_turn():
    gate, run, out = ScoringGate(1), _Batches(fail=True), {}
    assert gate.acquire()
    threads = [_combiner(gate, "k", j, run, out) for j in ("j1",)]
    _jobs_queued(gate, 1)
    threads.append(_combiner(gate, "k", "j2", run, out))
    _jobs_queued(gate, 2)
    gate.release()
    for t in threads:
        t.join(5)
    assert run.batches == [["j1", "j2"]]
    assert isinstance(out["j1"], ValueError)
    assert isinstance(out["j2"], RuntimeError) and isinstance(out["j2"].__cause__, ValueError)
    assert gate.stats()["busy"] == 0 and gate.acquire()
    gate.release()


def test_without_a_slot_limit_nothing_waits_or_combines():
    gate, run = ScoringGate(0), _Batches()
    assert gate.combine("k", "a", run) == (True, ("a", 1), 0.0)
    assert run.batches == [["a"]]


def test_plain_turns_and_combined_turns_wait_in_one_queue():
    """``acquire`` and ``combine`` callers are served in one arrival order, and a plain turn is
    never taken into a combined one."""
    gate, out = ScoringGate(1), {}
    order: list = []

    def run(jobs):
        order.append([job for job, _ in jobs])
        return list(range(len(jobs)))

    def plain():
        if gate.acquire("normal", 5):
            order.append("plain")
            gate.release()

    assert gate.acquire()
    threads = [_started(plain)]
    _jobs_queued(gate, 1)
    for i, job in enumerate(("c1", "c2")):
        threads.append(_combiner(gate, "k", job, run, out))
        _jobs_queued(gate, i + 2)
    gate.release()
    for t in threads:
        t.join(5)
    # The plain waiter came first and got a turn of its own; then c1 took c2 (same key).
    assert order == ["plain", ["c1", "c2"]]
    assert _idle(gate)
