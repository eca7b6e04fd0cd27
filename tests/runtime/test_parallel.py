"""kindling's thread pool: fixed pieces (for per-piece partial sums) and shared pieces (taken by
whichever thread is free), and that a slowed thread does not change results."""
import collections
import threading
import time

import numpy as np
import pytest

from kindling.runtime import blas, nn
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


@pytest.mark.parametrize("pieces", [1, SHARED])
def test_the_cut_is_the_same_whatever_the_load(pieces):
    cuts = {}
    for mode in ("quiet", "busy", "nested"):  # busy: other threads or one after the other
        cuts[mode] = set()
        p = _pool(mode == "busy")
        with p.serial(mode == "nested"):
            p.run(64, lambda i, lo, hi: cuts[mode].add((lo, hi)), pieces_per_thread=pieces)
    assert cuts["quiet"] == cuts["busy"] == cuts["nested"]
    assert sorted(cuts["quiet"]) == [(64 * i // (2 * pieces), 64 * (i + 1) // (2 * pieces)) for i in range(2 * pieces)]


def test_fixed_pieces_keep_their_index_for_partial_sums():
    cuts = {}
    for busy in (False, True):  # busy: the same pieces, one after the other
        cuts[busy] = []
        _pool(busy).run(10, lambda i, lo, hi: cuts[busy].append((i, lo, hi)))
    assert sorted(cuts[False]) == sorted(cuts[True]) == [(0, 0, 5), (1, 5, 10)]


def test_on_a_quiet_machine_each_thread_runs_its_own_consecutive_pieces():
    runs, lock = {0: [], 1: []}, threading.Lock()

    def fn(wi, lo, hi):
        with lock:
            runs[wi].append((lo, hi))
    _pool(busy=False).run(64, fn, pieces_per_thread=SHARED)
    assert sorted(runs[0]) == [(0, 8), (8, 16), (16, 24), (24, 32)]
    assert sorted(runs[1]) == [(32, 40), (40, 48), (48, 56), (56, 64)]


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


def _training_model():
    """Large enough that its convolutions, pooling and activations are cut into shared pieces
    (and a linear layer split by columns), with a residual join and batch norm."""
    from kindling.runtime import init
    with init.seeded(11):
        body = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                             nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64))
        return nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Add(body, nn.Identity()), nn.ReLU(),
            nn.MaxPool2d(2, 2), nn.Conv2d(64, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
            nn.Linear(32 * 6 * 6, 400), nn.ReLU(), nn.Linear(400, 10), nn.LogSoftmax())


def _train(mode: str, monkeypatch) -> dict:
    """Three SGD steps with the pool seeing the machine quiet, busy (one core taken by a neighbour,
    the other thread slowed at random) or flapping between the two from one region to the next."""
    from kindling.runtime import parallel
    from kindling.runtime.optim import SGD
    pool = parallel.pool
    monkeypatch.setattr(pool, "_monitor", None)
    rng = np.random.default_rng(3)
    flips = iter(rng.integers(0, 2, 1 << 16))
    workers = {"quiet": lambda: pool.max_threads, "busy": lambda: 1,
               "flapping": lambda: 1 + int(next(flips)) * (pool.max_threads - 1)}[mode]
    monkeypatch.setattr(pool, "workers", workers)
    shared_calls = []
    real_shared = pool._run_shared

    def run_shared(fn, bounds, threads):
        shared_calls.append(len(bounds) - 1)

        def slowed(wi, lo, hi):
            if wi and rng.random() < 0.5:
                time.sleep(0.001)  # a thread held up by a neighbour takes fewer pieces
            fn(wi, lo, hi)
        real_shared(slowed, bounds, threads)
    monkeypatch.setattr(pool, "_run_shared", run_shared)
    # every product's shape: BLAS kernels are chosen by shape, so the same bits need the same cut
    # (the bit comparison alone may pass by luck on one BLAS and fail on another)
    lib, products = blas.backend().backend, collections.Counter()
    real_sgemm = lib.sgemm

    def sgemm(a, b, out, beta=0.0):
        products[a.shape, b.shape, beta] += 1
        real_sgemm(a, b, out, beta)
    monkeypatch.setattr(lib, "sgemm", sgemm)
    model = _training_model()
    data = np.random.default_rng(0)
    x = data.standard_normal((32, 3, 24, 24)).astype(np.float32)
    y = data.integers(0, 10, 32)
    crit, sgd = nn.ClassNLLCriterion(), SGD(learningrate=0.05, momentum=0.9)
    for _ in range(3):
        model.zero_grad()
        out = model.forward(x)
        crit.forward(out, y)
        model.backward(x, crit.backward(out, y))
        sgd.update(model)
    monkeypatch.undo()
    assert bool(shared_calls) == (mode != "quiet")  # the busy modes did take the shared path
    return model.state_dict(), products


def test_training_steps_give_the_same_bits_on_a_quiet_and_a_busy_machine(monkeypatch):
    lib = blas.backend().backend
    if lib.name == "mkl":
        # Another library in the process (PyTorch's set_num_threads, once kindling had loaded MKL)
        # sets MKL's thread count for the calling thread: kindling's products must not follow it,
        # or a piece the calling thread runs comes out with other bits than on a pool thread.
        lib._lib.MKL_Set_Num_Threads_Local(2)
    try:
        quiet, quiet_products = _train("quiet", monkeypatch)
        for mode in ("busy", "flapping"):
            other, products = _train(mode, monkeypatch)
            assert products == quiet_products, f"{mode}: other products"
            assert len(quiet) == len(other)  # (layer names are numbered anew in each build)
            for (k, a), b in zip(quiet.items(), other.values()):
                assert np.array_equal(a, b), f"{mode}: {k} differs"
    finally:
        if lib.name == "mkl":
            lib._lib.MKL_Set_Num_Threads_Local(0)  # back to the global setting
