"""Dynamic batching on a pool of compute workers, apart from gRPC's threads.

Requests become Tasks in one bounded queue (overflow raises QueueFull at once instead of growing
memory). A worker takes the oldest task and every queued task for the same version, up to
``max_batch`` rows; while another worker is computing it also waits up to ``max_delay`` from the
oldest task's arrival for more to fill the batch. When every other worker is idle, waiting could
only add latency (a lone client's next request comes after this answer), so it goes at once.

Each worker computes on its own replica of the version (``servable.replicas[i]``). A task whose
deadline passed or whose caller gave up is dropped before any work is done for it. Each task
prepares its own inputs on the worker (decoding images is compute too): one bad image fails only
its own request. A worker runs its forward pass on the whole kindling thread pool while it is the
only one busy (a lone request is as fast as bare inference) and on its own thread otherwise.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from kindling.runtime.parallel import pool


class QueueFull(Exception):
    """The queue holds its limit of rows: the request is turned away (RESOURCE_EXHAUSTED)."""


class Expired(Exception):
    """The request's deadline passed before it was computed; its work was dropped."""


class Cancelled(Exception):
    """The caller went away before the request was computed; its work was dropped."""


@dataclass(eq=False)
class Task:
    servable: object                      # has .replicas: one Predictor per worker
    rows: int
    prepare: Callable                     # (predictor) -> list of input arrays, first axis = rows
    finish: Callable                      # (predictor, outputs for these rows) -> result
    done: Callable                        # (result, error) -> None, called exactly once
    deadline: float | None = None         # time.monotonic() by which it must be answered
    cancelled: bool = False
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(self, workers: int, max_batch: int = 32, max_delay: float = 0.005, max_queue: int = 512,
                 on_batch: Callable[[object, int], None] | None = None,
                 on_depth: Callable[[int], None] | None = None):
        if workers < 1 or max_batch < 1 or max_queue < 1 or max_delay < 0:
            raise ValueError(f"Batcher: workers, max_batch, max_queue must be >= 1 and max_delay >= 0; got "
                             f"{workers}, {max_batch}, {max_queue}, {max_delay}")
        self.workers, self.max_batch, self.max_delay, self.max_queue = workers, max_batch, max_delay, max_queue
        self.on_batch = on_batch or (lambda servable, rows: None)
        self.on_depth = on_depth or (lambda rows: None)
        self._queue: collections.deque[Task] = collections.deque()
        self._rows = 0
        self._busy = 0
        self._stopping = False
        self._cond = threading.Condition()
        self._threads = [threading.Thread(target=self._work, args=(i,), name=f"serving-worker-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    # ---- the queue -----------------------------------------------------------------------------
    def submit(self, task: Task) -> None:
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if self._queue and self._rows + task.rows > self.max_queue:
                raise QueueFull(f"the request queue is full ({self._rows} images queued, limit {self.max_queue}); "
                                f"retry later")
            self._queue.append(task)
            self._rows += task.rows
            self.on_depth(self._rows)
            self._cond.notify()

    def depth(self) -> int:
        return self._rows

    def busy(self) -> int:
        """Workers computing a batch now."""
        return self._busy

    def _take(self) -> list[Task] | None:
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            head = self._queue.popleft()
            batch, rows = [head], head.rows
            while rows < self.max_batch:
                for t in [t for t in self._queue if t.servable is head.servable]:
                    if rows + t.rows > self.max_batch:
                        break
                    self._queue.remove(t)
                    batch.append(t)
                    rows += t.rows
                wait = head.enqueued + self.max_delay - time.monotonic()
                if rows >= self.max_batch or self._busy == 0 or wait <= 0 or self._stopping:
                    break
                self._cond.wait(wait)
            self._rows -= rows
            self._busy += 1
            self.on_depth(self._rows)
            return batch

    # ---- the workers ---------------------------------------------------------------------------
    def _work(self, i: int) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._run(i, batch)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    @staticmethod
    def _answer(task: Task, result=None, error: BaseException | None = None) -> None:
        try:
            task.done(result, error)
        except Exception:  # a caller's callback must not take a worker down
            pass

    def _run(self, i: int, batch: list[Task]) -> None:
        predictor = batch[0].servable.replicas[i]
        now = time.monotonic()
        ready: dict[tuple, list[tuple[Task, list[np.ndarray]]]] = {}
        for t in batch:
            if t.cancelled:
                self._answer(t, error=Cancelled())
                continue
            if t.deadline is not None and now >= t.deadline:
                self._answer(t, error=Expired(f"the deadline passed after {now - t.enqueued:.3f} s in the queue"))
                continue
            try:
                xs = t.prepare(predictor)
            except Exception as e:  # this request's own bad input
                self._answer(t, error=e)
                continue
            ready.setdefault(tuple(x.shape[1:] for x in xs), []).append((t, xs))
        for group in ready.values():
            self._forward(predictor, batch[0].servable, group)

    def _forward(self, predictor, servable, group) -> None:
        inputs = [np.concatenate([xs[k] for _, xs in group]) if len(group) > 1 else group[0][1][k]
                  for k in range(len(group[0][1]))]
        self.on_batch(servable, len(inputs[0]))
        try:
            with pool.serial(self._busy > 1):
                outs = predictor.forward(inputs)
        except Exception as e:  # the model failed on these inputs: every request in the batch hears why
            for t, _ in group:
                self._answer(t, error=e)
            return
        lo = 0
        for t, xs in group:
            hi = lo + len(xs[0])
            try:
                result = t.finish(predictor, [o[lo:hi] for o in outs])
            except Exception as e:
                self._answer(t, error=e)
            else:
                self._answer(t, result)
            lo = hi

    def stop(self) -> None:
        """Finishes what is queued, then stops the workers."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for t in self._threads:
            t.join()
