"""Tasks of an exchange played by threads or by processes, and rendezvous that work like
``BarrierTaskContext.allGather``: every task hands in a line and gets every task's line back, in
rank order. The process rendezvous is served by the parent, as Spark's driver serves allGather."""
from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
import traceback
import tracemalloc

import numpy as np

from kindling.runtime.spark.allreduce import SocketExchange
from kindling.runtime.spark.exchange import DriverExchange


def vector(rank: int, round_: int, n: int) -> np.ndarray:
    """Task ``rank``'s vector in round ``round_``: normal noise with signed zeros, an infinity and
    tiny values at fixed places, so bit-equality checks the summation order, not just values."""
    v = np.random.default_rng([rank, round_, n]).standard_normal(n).astype(np.float32)
    v[::17] = -0.0
    v[5::23] = np.float32(1e-38) * (rank + 1)
    if n > 100:
        v[100] = np.inf if rank == 0 else 1.0
    return v


def reference_sum(world: int, round_: int, n: int) -> np.ndarray:
    """The tasks' vectors added in rank order, ((v0 + v1) + v2) + ..., in float32."""
    total = vector(0, round_, n)
    for r in range(1, world):
        total += vector(r, round_, n)
    return total


def all_reduce(ex, round_: int, n: int) -> np.ndarray:
    """reduce_scatter then all_gather of the plain sum: every task ends with the whole sum."""
    shard = ex.reduce_scatter(vector(ex.rank, round_, n))
    flat = np.full(n, np.nan, np.float32)
    lo, hi = ex.shard(n)
    flat[lo:hi] = shard
    ex.all_gather(flat)
    return flat


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


# ---- threads ---------------------------------------------------------------------------------
class ThreadRendezvous:
    def __init__(self, world: int, timeout: float = 30):
        self.world, self.timeout = world, timeout
        self._barrier = threading.Barrier(world)
        self._slots: list[str | None] = [None] * world

    def for_rank(self, rank: int):
        def all_gather(text: str) -> list[str]:
            self._slots[rank] = text
            self._barrier.wait(self.timeout)
            lines = list(self._slots)
            self._barrier.wait(self.timeout)
            return lines
        return all_gather


def run_threads(world: int, task, timeout: float = 60) -> list:
    """Runs ``task(rank, rendezvous_fn)`` for every rank in threads; its results in rank order,
    re-raising the first error."""
    rv = ThreadRendezvous(world)
    results, errors = [None] * world, [None] * world

    def main(rank):
        try:
            results[rank] = task(rank, rv.for_rank(rank))
        except BaseException as e:  # noqa: BLE001 - handed to the test
            errors[rank] = e
            rv._barrier.abort()

    threads = [threading.Thread(target=main, args=(r,), daemon=True) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "a task thread hung"
    for e in errors:
        if e is not None:
            raise e
    return results


# ---- processes -------------------------------------------------------------------------------
class QueueGather:
    """allGather for one task process: its line goes to the parent, the parent answers with all."""

    def __init__(self, rank: int, inbox, outbox):
        self.rank, self.inbox, self.outbox = rank, inbox, outbox

    def __call__(self, text: str) -> list[str]:
        self.inbox.put((self.rank, text))
        return self.outbox.get(timeout=120)


class ProcessRendezvous:
    def __init__(self, ctx, world: int):
        self.world = world
        self.inbox = ctx.Queue()
        self.outboxes = [ctx.Queue() for _ in range(world)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def for_rank(self, rank: int) -> QueueGather:
        return QueueGather(rank, self.inbox, self.outboxes[rank])

    def _serve(self):
        lines: dict[int, str] = {}
        while not self._stop.is_set():
            try:
                rank, text = self.inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            lines[rank] = text
            if len(lines) == self.world:
                answer = [lines[r] for r in range(self.world)]
                for box in self.outboxes:
                    box.put(answer)
                lines = {}

    def stop(self):
        self._stop.set()
        self._thread.join(5)


class ProcessTasks:
    """``world`` task processes running ``process_task(spec)``, each reporting on a queue of its
    own (a process stopped or killed while writing to a shared queue would hold its lock)."""

    def __init__(self, ctx, world: int, spec: dict):
        self.rendezvous = ProcessRendezvous(ctx, world)
        self.queues = [ctx.Queue() for _ in range(world)]
        self.procs = [ctx.Process(target=process_task, args=(r, world, self.rendezvous.for_rank(r), spec,
                                                             self.queues[r]), daemon=True) for r in range(world)]

    def __enter__(self):
        for p in self.procs:
            p.start()
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            if p.is_alive():
                p.kill()
            p.join(10)
        self.rendezvous.stop()

    def collect(self, kind: str, ranks, timeout: float = 60) -> dict:
        """The next ``kind`` message of each of ``ranks``: {rank: payload}. A task's error, when
        not what is awaited, fails with its traceback."""
        got, deadline = {}, time.monotonic() + timeout
        while len(got) < len(ranks):
            for r in ranks:
                if r in got:
                    continue
                try:
                    what, _, payload = self.queues[r].get(timeout=0.05)
                except queue.Empty:
                    continue
                if what == "error" and kind != "error":
                    raise AssertionError(f"rank {r} failed: {payload[3]}")
                if what == kind:
                    got[r] = payload
            if time.monotonic() > deadline:
                raise AssertionError(f"no {kind!r} from ranks {sorted(set(ranks) - set(got))} in {timeout} s")
        return got

    def wait_for_round(self, rank: int, round_: int) -> None:
        while self.collect("round", [rank])[rank] < round_:
            pass


def process_task(rank: int, world: int, gather: QueueGather, spec: dict, results) -> None:
    """A task process. spec["mode"]:
    - "equal": for each size and round, an all-reduce through SocketExchange and through
      DriverExchange; reports the digests of both.
    - "loop": all-reduces of spec["n"] elements until an error; reports every round and the error.
    - "memory": one update step (reduce_scatter, subtract, all_gather) of spec["n"] elements through
      each exchange; reports the extra memory each took (tracemalloc's peak over its start).
    """
    try:
        ex = SocketExchange.start(rank, world, gather, host="127.0.0.1", timeout=spec["timeout"],
                                  chunk_bytes=spec.get("chunk_bytes", 4 << 20))
        results.put(("started", rank, os.getpid()))
        if spec["mode"] == "equal":
            driver = DriverExchange(rank, world, gather, chunk_bytes=spec.get("driver_chunk_bytes", 8 << 20))
            out = {}
            for n in spec["sizes"]:
                for round_ in range(spec["rounds"]):
                    out[(n, round_)] = (digest(all_reduce(ex, round_, n)), digest(all_reduce(driver, round_, n)))
            ex.close()
            results.put(("done", rank, out))
            return
        if spec["mode"] == "memory":
            results.put(("memory", rank, _update_memory(ex, DriverExchange(rank, world, gather), spec["n"])))
            ex.close()
            return
        round_ = 0
        while True:
            all_reduce(ex, round_, spec["n"])
            round_ += 1
            if round_ <= 3:
                results.put(("round", rank, round_))
    except Exception as e:  # noqa: BLE001 - reported to the parent
        results.put(("error", rank, (type(e).__name__, str(e), time.monotonic(), traceback.format_exc())))


def _update_memory(socket_ex, driver_ex, n: int) -> tuple[int, int]:
    grads, params = vector(socket_ex.rank, 0, n), np.zeros(n, np.float32)
    extra = []
    for ex in (socket_ex, driver_ex):
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        lo, hi = ex.shard(n)
        params[lo:hi] -= ex.reduce_scatter(grads)
        ex.all_gather(params)
        extra.append(tracemalloc.get_traced_memory()[1] - base)
        tracemalloc.stop()
    return tuple(extra)
