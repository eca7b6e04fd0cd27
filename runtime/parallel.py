"""kindling's own intra-op parallelism: a small pool of threads that split work by rows.

Why not the BLAS library's threads: a convolution is more than its GEMM (gathering the columns,
the bias, the scatter of gradients), and those parts are single-threaded numpy. Splitting the
*batch* across threads lets each thread gather a cache-sized block of columns and multiply it at
once, so every part runs on every core and the columns never leave the cache. The BLAS libraries
are therefore held at one thread each, and numpy and ctypes release the GIL while they work.

The pool waits passively (condition variables, no spinning), so a busy neighbour costs kindling
its share of the machine, not a spin-lock convoy, and it follows the machine's load
(``LoadMonitor``) in *who runs what*, never in *how the work is cut*: the pieces are a function
of the problem size and the configured thread count only, so every result is bit-identical
whatever the load. Work whose pieces are independent (forward passes, elementwise work) is cut
into several pieces per thread: on a quiet machine each thread runs its own consecutive pieces,
and while other processes keep cores busy whichever thread is free takes the next piece, so a
thread slowed by a neighbour holds nobody up. Work that keeps a partial sum per piece
(gradients) runs its fixed pieces on the free cores.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator


def default_threads() -> int:
    env = os.environ.get("KINDLING_NUM_THREADS")
    if env:
        return max(1, int(env))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class LoadMonitor:
    """Every half second, reads /proc/stat (all CPU time) and /proc/self/stat (ours): what is busy
    and not ours is the neighbours' share, and the worker count becomes the cores left over."""
    INTERVAL = 0.5

    def __init__(self):
        self._last = None
        self._next = 0.0

    @staticmethod
    def _sample():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        with open("/proc/self/stat") as f:
            stat = f.read().rsplit(")", 1)[1].split()
        ours = int(stat[11]) + int(stat[12])  # utime + stime of all our threads, in clock ticks
        return time.monotonic(), sum(fields) - idle, ours

    def free_cores(self, max_threads: int) -> int | None:
        """Cores not used by other processes, at most ``max_threads``; None between samples."""
        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + self.INTERVAL
        try:
            sample = self._sample()
        except (OSError, ValueError, IndexError):
            return None
        last, self._last = self._last, sample
        if last is None:
            return None
        ticks = os.sysconf("SC_CLK_TCK") * (sample[0] - last[0])
        others = max(0.0, (sample[1] - last[1]) - (sample[2] - last[2])) / max(ticks, 1e-9)
        return max(1, min(max_threads, round(max_threads - others)))


# pieces_per_thread for work whose pieces are independent (see Pool.run)
SHARED = 4


class Pool:
    def __init__(self, threads: int | None = None):
        self.max_threads = threads or default_threads()
        self.active = self.max_threads
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        adaptive = os.environ.get("KINDLING_ADAPTIVE_THREADS", "1") != "0" and os.path.exists("/proc/stat")
        self._monitor = LoadMonitor() if adaptive else None
        self._local = threading.local()

    @contextlib.contextmanager
    def serial(self, on: bool = True) -> Iterator[None]:
        """Within this block the calling thread runs its parallel regions alone, piece after piece
        (the same pieces, so the same numbers): for callers that are themselves one of several
        workers already keeping the cores busy (a server's compute workers)."""
        before = getattr(self._local, "serial", False)
        self._local.serial = on
        try:
            yield
        finally:
            self._local.serial = before

    def set_threads(self, n: int) -> None:
        with self._lock:
            self.max_threads = self.active = max(1, int(n))
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    def workers(self) -> int:
        """How many threads take part in the next parallel region."""
        if self._monitor is not None and self.max_threads > 1:
            free = self._monitor.free_cores(self.max_threads)
            if free is not None:
                self.active = free
        return self.active

    def _ensure_executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(self.max_threads - 1, thread_name_prefix="kindling-")
        return self._executor

    def run(self, n: int, fn: Callable[[int, int, int], None], min_per_worker: int = 1, *,
            pieces_per_thread: int = 1) -> None:
        """Calls ``fn(i, start, stop)`` over ``range(n)`` cut into contiguous pieces. The cut is a
        function of ``n``, ``min_per_worker``, ``pieces_per_thread`` and the configured thread
        count only (``cut``), never of the load: the load decides only which thread runs which
        piece, so results are bit-identical under any load. The calling thread takes part.
        Re-raises the first error.

        With one piece per thread (the default), piece ``i`` is the i-th: a caller may keep a
        partial sum per ``i`` (gradients summed over blocks). While other processes keep cores
        busy the pieces run one after the other on the calling thread, since a thread slowed by a
        neighbour would hold up the rest at the end.

        With more pieces per thread, for work where each piece writes its own outputs and nothing
        is summed across pieces (a forward pass, elementwise work), ``i`` is only the thread (for
        scratch space). On a quiet machine thread ``t`` runs the t-th run of consecutive pieces;
        while other processes keep cores busy every thread of the pool takes the next piece as it
        finishes one: a slowed thread simply takes fewer, and both cores keep working (VGG-style
        inference measured 13% faster than on the free core alone)."""
        bounds, threads = self.cut(n, min_per_worker, pieces_per_thread)
        pieces = len(bounds) - 1
        nested = threading.current_thread().name.startswith("kindling-") or getattr(self._local, "serial", False)
        free = self.workers()
        shared = pieces > threads
        if threads == 1 or nested or (free == 1 and not shared):
            for i in range(pieces):
                fn(0 if shared else i, bounds[i], bounds[i + 1])
            return
        if shared and free < self.max_threads:
            self._run_shared(fn, bounds, threads)
            return
        if shared:  # quiet: a fixed run of consecutive pieces per thread

            def own(t):
                for i in range(pieces * t // threads, pieces * (t + 1) // threads):
                    fn(t, bounds[i], bounds[i + 1])
            futures = [self._ensure_executor().submit(own, t) for t in range(1, threads)]
            self._finish(futures, lambda: own(0))
            return
        futures = [self._ensure_executor().submit(fn, i, bounds[i], bounds[i + 1]) for i in range(1, threads)]
        self._finish(futures, lambda: fn(0, bounds[0], bounds[1]))

    def cut(self, n: int, min_per_worker: int = 1, pieces_per_thread: int = 1) -> tuple[list[int], int]:
        """(piece bounds, threads) for ``run``: from the problem size and the configured thread
        count, nothing else."""
        most = max(1, n // max(min_per_worker, 1))
        threads = min(self.max_threads, most)
        pieces = min(most, threads * max(1, pieces_per_thread)) if threads > 1 else 1
        return [n * i // pieces for i in range(pieces + 1)], threads

    def pieces_for(self, work: float, least: float) -> int:
        """``pieces_per_thread`` for independent work of this size: SHARED while each piece still
        holds at least ``least`` of it (enough to hide the Python around a piece), else 1."""
        return SHARED if work >= least * SHARED * self.max_threads else 1

    def _run_shared(self, fn, bounds: list[int], threads: int) -> None:
        pieces = len(bounds) - 1
        taken = itertools.count()  # next() on it is atomic under the GIL

        def take(wi):
            for i in iter(taken.__next__, None):
                if i >= pieces:
                    return
                fn(wi, bounds[i], bounds[i + 1])
        futures = [self._ensure_executor().submit(take, wi) for wi in range(1, threads)]
        self._finish(futures, lambda: take(0))

    @staticmethod
    def _finish(futures, own) -> None:
        try:
            own()
        finally:
            errors = [f.exception() for f in futures]
        for e in errors:
            if e is not None:
                raise e


pool = Pool()
