"""The batcher with real replicas of a real snapshot: coalescing, no wait when idle, the bounded
queue, dropped expired work, one bad request failing alone."""
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

import snapshots
from kindling.runtime.parallel import pool
from kindling.runtime.predict import Predictor
from kindling.serving.batcher import Batcher, Expired, QueueFull, Task


@pytest.fixture(scope="module")
def servable(trained):
    _, folder = trained
    p = Predictor.load(folder / "model.40")
    p.forward([np.zeros((1, 1, 28, 28), np.float32)])
    return SimpleNamespace(name="digits", replicas=[p.replica() for _ in range(2)], predictor=p)


def _task(servable, x, results, prepare=None, deadline=None):
    done = threading.Event()

    def finish(p, outs):
        return outs[0]

    def answer(result, error):
        results.append((x, result, error))
        done.set()
    t = Task(servable, len(x), prepare or (lambda p: [x]), finish, answer, deadline=deadline)
    t.finished = done
    return t


def test_requests_coalesce_while_another_worker_computes_and_give_the_same_numbers(servable):
    sizes = []
    b = Batcher(2, max_batch=8, max_delay=0.5, on_batch=lambda s, rows: sizes.append(rows))
    try:
        gate = threading.Event()
        results = []
        images, _ = snapshots.digit_images()
        xs = [images[i:i + 1, None].astype(np.float32) / 255 for i in range(6)]
        blocker = _task(servable, xs[0], results, prepare=lambda p: (gate.wait(10), [xs[0]])[1])
        b.submit(blocker)
        time.sleep(0.05)  # one worker now busy preparing
        tasks = [_task(servable, x, results) for x in xs[1:]]
        for t in tasks:
            b.submit(t)
        for t in tasks:
            assert t.finished.wait(10)
        gate.set()
        assert blocker.finished.wait(10)
    finally:
        b.stop()
    assert sizes == [5, 1], sizes  # the five arrived while the other worker was busy: one batch
    expected = servable.predictor.predict(np.concatenate(xs))["prob"]
    for x, result, error in results:
        assert error is None
        i = next(i for i, y in enumerate(xs) if y is x)
        np.testing.assert_allclose(result, expected[i:i + 1], rtol=1e-5, atol=1e-6)


def test_an_idle_server_does_not_hold_a_lone_request(servable):
    b = Batcher(2, max_batch=8, max_delay=2.0)
    try:
        t = _task(servable, np.zeros((1, 1, 28, 28), np.float32), [])
        start = time.monotonic()
        b.submit(t)
        assert t.finished.wait(10)
        assert time.monotonic() - start < 1.0  # far below the 2 s delay
    finally:
        b.stop()


def test_the_queue_is_bounded_expired_work_is_dropped_and_bad_input_fails_alone(servable):
    b = Batcher(1, max_batch=4, max_delay=0.0, max_queue=3)
    try:
        gate = threading.Event()
        results = []
        x = np.zeros((1, 1, 28, 28), np.float32)
        blocker = _task(servable, x, results, prepare=lambda p: (gate.wait(10), [x])[1])
        b.submit(blocker)
        time.sleep(0.05)
        prepared = []
        expired = _task(servable, x, results, prepare=lambda p: prepared.append(1) or [x],
                        deadline=time.monotonic() + 0.01)
        bad = _task(servable, x, results, prepare=lambda p: [np.zeros((1, 3, 28, 28), np.float32)[:, :1, :5]])
        good = _task(servable, x, results)
        for t in (expired, bad, good):
            b.submit(t)
        with pytest.raises(QueueFull, match="limit 3"):
            b.submit(_task(servable, x, results))
        time.sleep(0.05)
        gate.set()
        for t in (blocker, expired, bad, good):
            assert t.finished.wait(10)
    finally:
        b.stop()
    by_task = [(r is not None, type(e).__name__ if e else None) for _, r, e in results]
    assert isinstance(results[1][2], Expired) and not prepared  # dropped before any work
    assert by_task[0] == (True, None) and by_task[-1] == (True, None)
    assert sorted(by_task) == sorted([(True, None), (False, "Expired"), (False, "ValueError"), (True, None)]), by_task


def test_pool_serial_runs_the_same_pieces_on_the_calling_thread():
    from kindling.runtime.layers.conv2d import Conv2d
    conv = Conv2d(3, 8, 3, padding=1).evaluate()
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    parallel = np.array(conv.forward(x))
    seen = set()
    original = pool._ensure_executor

    def watch():
        seen.add("executor")
        return original()
    pool._ensure_executor = watch
    try:
        with pool.serial():
            serial = np.array(conv.forward(x))
    finally:
        pool._ensure_executor = original
    assert np.array_equal(serial, parallel) and not seen
