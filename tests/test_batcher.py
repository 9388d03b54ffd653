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


@pytest.mark.parametrize("concurrency", [1, 2])
def test_concurrent_submits_share_batches_and_results_reach_their_callers(concurrency):
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
        concurrency=concurrency,
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


@pytest.mark.parametrize("concurrency", [1, 2])
def test_exception_in_fn_reaches_every_caller_of_the_batch(concurrency):
    def boom(xs: list[int]) -> list[int]:
        time.sleep(0.01)
        raise ValueError("model exploded")

    b = MicroBatcher(boom, max_batch=16, max_delay_ms=20, name="boom", concurrency=concurrency)
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


@pytest.mark.parametrize("concurrency", [1, 2])
def test_close_drains_queue_then_refuses(concurrency):
    gate = threading.Event()
    started: list[list[int]] = []

    def gated(xs: list[int]) -> list[int]:
        started.append(list(xs))
        gate.wait(5)
        return xs

    b = MicroBatcher(gated, max_batch=2, max_delay_ms=1, name="drain", concurrency=concurrency)
    box: list = []
    threads = [
        threading.Thread(target=lambda i=i: box.append(b.submit(i, timeout=5))) for i in range(6)
    ]
    for t in threads:
        t.start()
    # Wait until every request is either inside a (blocked) running batch or queued behind it.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if len(started) == concurrency and sum(map(len, started)) + b.stats()["queued"] == 6:
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
    assert len(b._threads) == concurrency
    assert not any(t.is_alive() for t in b._threads)


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


def _overlap_probe(concurrency: int) -> tuple[int, list]:
    """Eight single-request batches through a slow fn; (most batches in fn at once, results)."""
    lock = threading.Lock()
    active = [0, 0]  # now, most

    def slow(xs: list[int]) -> list[int]:
        with lock:
            active[0] += 1
            active[1] = max(active[1], active[0])
        time.sleep(0.03)  # a forward pass with the GIL released
        with lock:
            active[0] -= 1
        return [x * 3 for x in xs]

    b = MicroBatcher(slow, max_batch=1, max_delay_ms=0, name="overlap", concurrency=concurrency)
    results = _run_threads(8, lambda i: b.submit(i, timeout=5))
    b.close()
    return active[1], results


def test_concurrency_2_runs_two_batches_at_once():
    gate = threading.Barrier(2, timeout=5)
    seen: list[list[int]] = []

    def rendezvous(xs: list[int]) -> list[int]:
        seen.append(list(xs))
        # Only returns if a second batch reaches fn while this one is still inside it.
        gate.wait()
        return [-x for x in xs]

    b = MicroBatcher(rendezvous, max_batch=1, max_delay_ms=0, name="pair", concurrency=2)
    results = _run_threads(2, lambda i: b.submit(i, timeout=5))
    b.close()
    assert [r for r, _ in results] == [0, -1] and [e for _, e in results] == [None, None]
    assert sorted(seen) == [[0], [1]]
    assert b.stats()["batches"] == 2 and b.stats()["concurrency"] == 2

    most, results = _overlap_probe(2)
    assert most == 2
    assert [r for r, _ in results] == [i * 3 for i in range(8)]


def test_concurrency_1_runs_one_batch_at_a_time():
    most, results = _overlap_probe(1)
    assert most == 1
    assert [r for r, _ in results] == [i * 3 for i in range(8)]


def test_concurrency_must_be_positive():
    with pytest.raises(ValueError, match="concurrency"):
        MicroBatcher(lambda xs: xs, concurrency=0)


def test_concurrent_runners_skip_abandoned_requests():
    gate = threading.Event()
    seen: list[list[str]] = []

    def blocked(xs: list[str]) -> list[str]:
        seen.append(list(xs))
        gate.wait(5)
        return xs

    b = MicroBatcher(blocked, max_batch=1, max_delay_ms=0, name="busy", concurrency=2)
    firsts = [threading.Thread(target=lambda s=s: b.submit(s, timeout=5)) for s in ("a", "b")]
    for t in firsts:
        t.start()
        time.sleep(0.05)  # both runners are now inside fn; "late" has to queue behind them
    with pytest.raises(TimeoutError):
        b.submit("late", timeout=0.05)
    gate.set()
    for t in firsts:
        t.join(5)
    b.close()
    assert sorted(seen) == [["a"], ["b"]]  # the abandoned request was never computed
    assert b.stats()["timeouts"] == 1


def test_after_fork_reset_restarts_every_runner():
    from recsys import lifecycle

    b = MicroBatcher(lambda xs: xs, max_batch=4, max_delay_ms=0, name="fork2", concurrency=2)
    assert b._threads == []  # lazy: nothing to inherit in a forked worker
    assert b.submit(1, timeout=5) == 1
    assert len(b._threads) == 2 and all(t.is_alive() for t in b._threads)
    b._pid = -1
    for hook in lifecycle._after_fork_hooks:
        hook(None)
    assert b._threads == [] and b.stats()["requests"] == 0
    assert b.submit(2, timeout=5) == 2
    assert len(b._threads) == 2
    b.close()


def test_concurrency_2_does_not_wait_for_company_while_a_runner_is_idle():
    b = MicroBatcher(lambda xs: xs, max_batch=64, max_delay_ms=400, name="idle", concurrency=2)
    t0 = time.monotonic()
    assert b.submit("a", timeout=2) == "a"
    elapsed = time.monotonic() - t0
    b.close()
    # With one runner (test_max_delay_bounds_wait_for_a_lone_request) it would wait 400 ms.
    assert elapsed < 0.2


def test_concurrency_2_takes_the_whole_queue_in_one_batch():
    gate = threading.Event()
    batches: list[list[int]] = []

    def gated(xs: list[int]) -> list[int]:
        batches.append(list(xs))
        if xs == [0]:
            gate.wait(5)  # hold one runner so the other collects the rest, waiting for company
        return xs

    b = MicroBatcher(gated, max_batch=64, max_delay_ms=300, name="whole", concurrency=2)
    first = threading.Thread(target=lambda: b.submit(0, timeout=5))
    first.start()
    time.sleep(0.05)  # 0 is inside fn: the other runner waits for company
    rest = threading.Thread(target=lambda: _run_threads(8, lambda i: b.submit(i + 1, timeout=5)))
    rest.start()
    time.sleep(0.1)  # the 8 are queued, the collector still waiting (300 ms)
    gate.set()  # runner 0 frees up: the 8 go together, not shared out in two batches of 4
    rest.join(5)
    first.join(5)
    b.close()
    assert batches[0] == [0]
    assert len(batches) == 2 and sorted(batches[1]) == list(range(1, 9))


def test_concurrency_2_waits_for_callers_on_their_way_back():
    """Eight threads each scoring one item after another: when a batch finishes, the next one
    waits for its callers to come back (they are still inside submit) instead of going with
    the first and leaving the rest to fragments. Sharing work between both runners made their
    batches ~4 long here; waiting makes them ~8."""
    sizes: list[int] = []

    def fn(xs: list[int]) -> list[int]:
        sizes.append(len(xs))
        time.sleep(0.002)  # a forward pass, without the GIL
        return [x * 2 for x in xs]

    b = MicroBatcher(fn, max_batch=64, max_delay_ms=200, name="loop", concurrency=2)

    def caller(i: int) -> list[int]:
        return [b.submit(i * 100 + k, timeout=5) for k in range(40)]

    results = _run_threads(8, caller)
    b.close()
    assert [e for _, e in results] == [None] * 8
    assert [r for r, _ in results] == [[(i * 100 + k) * 2 for k in range(40)] for i in range(8)]
    # 320 requests; a handful of batches are partial (the start, the end, a caller slow to
    # come back under load), so the mean is compared, not every batch.
    assert sum(sizes) == 320
    assert 320 / len(sizes) >= 6, sizes


def test_inline_only_for_a_caller_alone_in_the_batcher():
    """A caller arriving while another is still leaving a finished batch is queued, not run
    inline: the leaver may be about to submit again."""
    seen_threads: list[str] = []

    def fn(xs: list[int]) -> list[int]:
        seen_threads.append(threading.current_thread().name)
        return xs

    b = MicroBatcher(fn, max_batch=8, max_delay_ms=50, inline_when_idle=True, concurrency=2)
    assert b.submit(1, timeout=5) == 1
    assert seen_threads == [threading.current_thread().name]  # alone: inline
    with b._cond:
        b._inside += 1  # another caller is on its way out of submit
    assert b.submit(2, timeout=5) == 2
    assert seen_threads[-1].startswith("microbatch-")  # queued for a runner
    with b._cond:
        b._inside -= 1
    b.close()


def test_inline_when_idle_runs_a_lone_request_in_the_callers_thread():
    ran_on: list[str] = []

    def fn(xs):
        ran_on.append(threading.current_thread().name)
        return [x + 1 for x in xs]

    b = MicroBatcher(fn, max_batch=8, max_delay_ms=50, inline_when_idle=True)
    t0 = time.monotonic()
    assert b.submit(1) == 2 and b.submit(2) == 3
    assert time.monotonic() - t0 < 0.05  # no wait for company
    assert ran_on == [threading.current_thread().name] * 2
    assert b._threads == []  # no runner was needed
    st = b.stats()
    assert st["batches"] == 2 and st["requests"] == 2 and st["batch_sizes"] == {1: 2}
    with pytest.raises(ZeroDivisionError):
        MicroBatcher(lambda xs: [1 / 0 for _ in xs], inline_when_idle=True).submit(0)
    b.close()


def test_inline_when_idle_still_batches_requests_that_arrive_meanwhile():
    entered, release = threading.Event(), threading.Event()
    seen: list[list[int]] = []

    def fn(xs):
        seen.append(list(xs))
        if xs == [0]:
            entered.set()
            release.wait(5)
        return [x * 10 for x in xs]

    b = MicroBatcher(fn, max_batch=8, max_delay_ms=200, inline_when_idle=True)
    first = threading.Thread(target=lambda: b.submit(0))
    first.start()
    assert entered.wait(5)  # the lone first request runs inline and holds the "core"
    threading.Timer(0.1, release.set).start()
    results = _run_threads(5, lambda i: b.submit(i + 1))
    first.join(5)
    assert [r for r, _ in results] == [10, 20, 30, 40, 50]
    assert seen[0] == [0]
    assert sorted(x for batch in seen[1:] for x in batch) == [1, 2, 3, 4, 5]
    assert len(seen) < 6  # the five queued behind the running one shared batches
    b.close()


@pytest.mark.parametrize("concurrency", [1, 2])
def test_inline_run_holds_a_slot_and_runners_survive(concurrency):
    """A request running inline counts against ``concurrency``: with every slot taken the
    collector waits for one (it used to divide by zero and lose its runner thread)."""
    entered, release = threading.Event(), threading.Event()
    running, peak = [0], [0]
    lock = threading.Lock()

    def fn(xs):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        if xs == [0]:
            entered.set()
            release.wait(5)
        else:
            time.sleep(0.02)
        with lock:
            running[0] -= 1
        return [x + 100 for x in xs]

    b = MicroBatcher(
        fn, max_batch=4, max_delay_ms=1, concurrency=concurrency, inline_when_idle=True
    )
    first = threading.Thread(target=lambda: b.submit(0))
    first.start()
    assert entered.wait(5)
    threading.Timer(0.2, release.set).start()
    results = _run_threads(12, lambda i: b.submit(i + 1, timeout=5))
    first.join(5)
    assert [e for _, e in results] == [None] * 12
    assert [r for r, _ in results] == [i + 101 for i in range(12)]
    assert peak[0] <= concurrency
    assert all(t.is_alive() for t in b._threads)
    assert b.stats()["timeouts"] == 0
    b.close()
