"""kindling's thread pool: fixed pieces (for per-piece partial sums) and shared pieces (taken by
whichever thread is free), and that a slowed thread does not change results."""
import threading
import time

import numpy as np
import pytest

from kindling.runtime import nn
from kindling.runtime.parallel import SHARED, Pool


def _pool(busy: bool) -> Pool:
    """A two-thread pool that sees the machine quiet, or one core kept busy by another process."""
    p = Pool(threads=2)
    p._monitor = None
    p.active = 1 if busy else 2
    return p


@pytest.mark.parametrize("n, min_per_worker", [(1, 1), (7, 1), (100, 1), (100, 16), (3, 8)])
@pytest.mark.parametrize("pieces", [1, SHARED])
@pytest.mark.parametrize("busy", [False, True], ids=["quiet", "busy"])
def test_every_index_is_covered_exactly_once(n, min_per_worker, pieces, busy):
    p = _pool(busy)
    seen, lock, workers = [], threading.Lock(), set()

    def fn(i, lo, hi):
        with lock:
            seen.extend(range(lo, hi))
            workers.add(i)
    p.run(n, fn, min_per_worker, pieces_per_thread=pieces)
    assert sorted(seen) == list(range(n))
    assert workers <= {0, 1}


def test_fixed_pieces_are_the_same_cut_whatever_the_load():
    cuts = {}
    for busy in (False, True):  # busy: the same pieces, one after the other
        cuts[busy] = []
        _pool(busy).run(10, lambda i, lo, hi: cuts[busy].append((i, lo, hi)))
    assert sorted(cuts[False]) == sorted(cuts[True]) == [(0, 0, 5), (1, 5, 10)]


def test_independent_work_is_one_piece_per_thread_on_a_quiet_machine():
    cuts = []
    _pool(busy=False).run(64, lambda i, lo, hi: cuts.append((lo, hi)), pieces_per_thread=SHARED)
    assert sorted(cuts) == [(0, 32), (32, 64)]


def test_shared_pieces_go_to_the_free_thread_while_a_core_is_busy():
    p = _pool(busy=True)
    taken = {0: 0, 1: 0}
    lock = threading.Lock()

    def fn(wi, lo, hi):
        if wi == 1:
            time.sleep(0.05)  # a thread slowed by a busy neighbour
        with lock:
            taken[wi] += hi - lo
    p.run(64, fn, pieces_per_thread=SHARED)
    assert taken[0] + taken[1] == 64 and taken[0] > taken[1]


def test_errors_in_a_shared_piece_reach_the_caller():
    p = _pool(busy=True)

    def fn(wi, lo, hi):
        if lo <= 40 < hi:
            raise ValueError("piece with 40")
    with pytest.raises(ValueError, match="piece with 40"):
        p.run(64, fn, pieces_per_thread=SHARED)


def test_a_convolution_gives_the_same_bits_when_one_thread_is_slowed(monkeypatch):
    from kindling.runtime import parallel
    from kindling.runtime.layers import conv2d
    monkeypatch.setattr(parallel.pool, "_monitor", None)
    monkeypatch.setattr(parallel.pool, "active", parallel.pool.max_threads)
    conv = nn.Conv2d(64, 64, 3, padding=1).evaluate()  # large enough to be cut into shared pieces
    x = np.random.default_rng(0).standard_normal((32, 64, 24, 24)).astype(np.float32)
    quiet = conv.forward(x).copy()
    monkeypatch.setattr(parallel.pool, "active", 1)  # a neighbour keeps a core busy
    real = conv2d.blas.gemm

    def slowed(*args, **kwargs):
        if threading.current_thread().name.startswith("kindling-"):
            time.sleep(0.002)
        return real(*args, **kwargs)
    monkeypatch.setattr(conv2d.blas, "gemm", slowed)
    assert np.array_equal(conv.forward(x), quiet)
