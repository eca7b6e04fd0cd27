"""kindling's own intra-op parallelism: a small pool of threads that split work by rows.

Why not the BLAS library's threads: a convolution is more than its GEMM (gathering the columns,
the bias, the scatter of gradients), and those parts are single-threaded numpy. Splitting the
*batch* across threads lets each thread gather a cache-sized block of columns and multiply it at
once, so every part runs on every core and the columns never leave the cache. The BLAS libraries
are therefore held at one thread each, and numpy and ctypes release the GIL while they work.

The pool waits passively (condition variables, no spinning) and follows the machine's load: when
other processes keep cores busy, fewer workers take part (``LoadMonitor``), so a busy neighbour
costs kindling its share of the machine, not a spin-lock convoy.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable


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


class Pool:
    def __init__(self, threads: int | None = None):
        self.max_threads = threads or default_threads()
        self.active = self.max_threads
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        adaptive = os.environ.get("KINDLING_ADAPTIVE_THREADS", "1") != "0" and os.path.exists("/proc/stat")
        self._monitor = LoadMonitor() if adaptive else None

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

    def run(self, n: int, fn: Callable[[int, int, int], None], min_per_worker: int = 1) -> None:
        """Calls ``fn(chunk, start, stop)`` over ``range(n)`` cut into contiguous chunks, one per
        thread the pool may use at most. How the range is cut never depends on how many threads
        are free right now (those only decide how many chunks run at once), so results are
        bit-identical under any load. The calling thread takes the first chunk. Re-raises the first
        error."""
        k = min(self.max_threads, max(1, n // max(min_per_worker, 1)))
        bounds = [n * i // k for i in range(k + 1)]
        if k == 1 or self.workers() == 1 or threading.current_thread().name.startswith("kindling-"):
            for i in range(k):
                fn(i, bounds[i], bounds[i + 1])
            return
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(self.max_threads - 1, thread_name_prefix="kindling-")
        futures = [self._executor.submit(fn, i, bounds[i], bounds[i + 1]) for i in range(1, k)]
        try:
            fn(0, bounds[0], bounds[1])
        finally:
            errors = [f.exception() for f in futures]
        for e in errors:
            if e is not None:
                raise e


pool = Pool()
