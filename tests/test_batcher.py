from __future__ import annotations

import os
import threading
import time

import pytest

from recsys.batcher import BatcherClosed, MicroBatcher


def _run_threads(n: int, target) -> list:
    out: list = [None] * n
    errors: list = [None] * n

    def wrap(i: int) -> None:
        try:
            out[i] = target(i)
        except BaseException as e:  # noqa: BLE001
            errors[i] = e

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return list(zip(out, errors, strict=True))


def test_concurrent_submits_share_batches_and_results_reach_their_callers():
    calls: list[list[int]] = []
    observed: list[tuple[int, float]] = []

    def slow_square(xs: list[int]) -> list[int]:
        calls.append(list(xs))
        time.sleep(0.02)  # a forward pass: later arrivals queue up meanwhile
        return [x * x for x in xs]

    b = MicroBatcher(
        slow_square,
        max_batch=8,
        max_delay_ms=5,
        name="t",
        observer=lambda n, w: observed.append((n, w)),
    )
    results = _run_threads(16, lambda i: b.submit(i, timeout=5))
    b.close()
    assert [e for _, e in results] == [None] * 16
    assert [r for r, _ in results] == [i * i for i in range(16)]
    sizes = [n for n, _ in observed]
    assert sum(sizes) == 16
    assert max(sizes) > 1 and len(calls) < 16
    assert max(sizes) <= 8
    assert all(w >= 0 for _, w in observed)
    st = b.stats()
    assert st["requests"] == 16 and st["batches"] == len(calls)
    assert st["mean_batch_size"] > 1


def test_max_delay_bounds_wait_for_a_lone_request():
    b = MicroBatcher(lambda xs: xs, max_batch=64, max_delay_ms=20, name="lone")
    t0 = time.monotonic()
    assert b.submit("a", timeout=2) == "a"
    elapsed = time.monotonic() - t0
    b.close()
    # It waited for company, but not much longer than max_delay.
    assert 0.015 <= elapsed < 0.5


def test_timeout_raises_and_skips_abandoned_request():
    seen: list[list[str]] = []
    gate = threading.Event()

    def blocked(xs: list[str]) -> list[str]:
        seen.append(list(xs))
        gate.wait(5)
        return xs

    b = MicroBatcher(blocked, max_batch=1, max_delay_ms=0, name="slow")
    first = threading.Thread(target=lambda: b.submit("first", timeout=5))
    first.start()
    time.sleep(0.05)  # "first" is now inside fn; "late" has to queue behind it
    with pytest.raises(TimeoutError):
        b.submit("late", timeout=0.05)
    gate.set()
    first.join(5)
    b.close()
    assert seen == [["first"]]  # the abandoned request was never computed
    assert b.stats()["timeouts"] == 1


def test_exception_in_fn_reaches_every_caller_of_the_batch():
    def boom(xs: list[int]) -> list[int]:
        time.sleep(0.01)
        raise ValueError("model exploded")

    b = MicroBatcher(boom, max_batch=16, max_delay_ms=20, name="boom")
    results = _run_threads(6, lambda i: b.submit(i, timeout=5))
    assert all(isinstance(e, ValueError) and "exploded" in str(e) for _, e in results)
    # The batcher keeps working after a failed batch.
    b.fn = lambda xs: [x + 1 for x in xs]
    assert b.submit(1, timeout=5) == 2
    b.close()
    assert b.stats()["errors"] >= 1


def test_wrong_number_of_results_is_an_error_not_a_mixup():
    b = MicroBatcher(lambda xs: xs[:-1], max_batch=4, max_delay_ms=1, name="short")
    with pytest.raises(RuntimeError, match="returned 0 results for 1"):
        b.submit(1, timeout=5)
    b.close()


def test_close_drains_queue_then_refuses():
    gate = threading.Event()
    started: list[list[int]] = []

    def gated(xs: list[int]) -> list[int]:
        started.append(list(xs))
        gate.wait(5)
        return xs

    b = MicroBatcher(gated, max_batch=2, max_delay_ms=1, name="drain")
    box: list = []
    threads = [
        threading.Thread(target=lambda i=i: box.append(b.submit(i, timeout=5))) for i in range(6)
    ]
    for t in threads:
        t.start()
    # Wait until every request is either inside the (blocked) first batch or queued behind it.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if started and len(started[0]) + b.stats()["queued"] == 6:
            break
        time.sleep(0.005)
    closer = threading.Thread(target=b.close)
    closer.start()
    time.sleep(0.02)
    with pytest.raises(BatcherClosed):
        b.submit(7)
    gate.set()
    closer.join(5)
    for t in threads:
        t.join(5)
    assert sorted(box) == list(range(6))  # every queued request got its answer
    assert not b._thread.is_alive()


def test_observer_failure_does_not_break_serving():
    def bad_observer(n: int, w: float) -> None:
        raise RuntimeError("metrics down")

    b = MicroBatcher(lambda xs: xs, max_batch=4, max_delay_ms=0, observer=bad_observer)
    assert b.submit(3, timeout=5) == 3
    assert b.submit(4, timeout=5) == 4
    b.close()


def test_thread_is_lazy_and_after_fork_hook_resets_state():
    from recsys import lifecycle

    b = MicroBatcher(lambda xs: xs, max_batch=4, max_delay_ms=0, name="fork")
    assert b._thread is None  # nothing started at construction (gunicorn master stays clean)
    b.submit(1, timeout=5)
    assert b._thread is not None and b._thread.is_alive()
    # Pretend we are a forked child: a different pid, the parent's thread not ours.
    b._pid = -1
    for hook in lifecycle._after_fork_hooks:
        hook(None)
    assert b._thread is None and b.stats()["requests"] == 0
    assert b.submit(2, timeout=5) == 2
    b.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_works_in_a_forked_child():
    b = MicroBatcher(lambda xs: [x * 10 for x in xs], max_batch=4, max_delay_ms=0, name="child")
    assert b.submit(1, timeout=5) == 10  # parent thread running
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no hook run, the pid check alone must recover
        try:
            ok = b.submit(2, timeout=2) == 20
        except BaseException:  # noqa: BLE001
            ok = False
        os.write(w, b"1" if ok else b"0")
        os._exit(0)
    os.close(w)
    got = os.read(r, 1)
    os.waitpid(pid, 0)
    b.close()
    assert got == b"1"
