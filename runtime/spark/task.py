"""The barrier task: one per slot, alive for a whole ``optimize()``. It connects back to the
driver, receives the model (in chunks, one copy) and its optimizer state, keeps its share of the
samples in memory, and then serves the driver's commands until told to stop:

    step      compute the gradients of its members of the global batch, exchange, update its
              shard of the parameters, all-gather the weights; reply with count, loss, timings
    evaluate  run its validation samples through the model; reply with the metric sums
    pull      reply with the weights (rank 0), its optimizer state slices and BatchNorm buffers
    stop      finish
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Client

import numpy as np

from .. import blas
from .. import format as kdl
from ..data.loader import epoch_order, sample_rng
from ..optim.engine import compute_gradients, prepare_for_training, sample_keys
from . import preflight, wire
from .allreduce import SocketExchange
from .exchange import DriverExchange
from .data import TRAIN, VALIDATION, Share
from .flat import HEADER, FlatLayout
from .mesh import ExchangeError
from .relay import RelayExchange

log = logging.getLogger("kindling.spark")


@dataclass
class TaskPlan:
    """What every task is given in its closure (small things; the model comes over the channel)."""
    address: tuple
    authkey: bytes
    exchange: str
    timeout: float
    criterion: object
    method_type: type
    method_hyper: dict
    pipeline: object
    val_pipeline: object
    feature_shape: tuple | None
    metrics: list
    seed: int
    batch_size: int
    val_batch_size: int
    samples: int
    averaging_frequency: int | None = None  # None: synchronous; k: parameter averaging every k steps


def run(iterator, plan: TaskPlan):
    """The barrier stage's function (``rdd.barrier().mapPartitions(lambda it: run(it, plan))``)."""
    from pyspark import BarrierTaskContext
    ctx = BarrierTaskContext.get()
    rank, infos = ctx.partitionId(), ctx.getTaskInfos()
    threads = max(1, int(ctx.cpus()))
    blas.set_threads(threads)
    conn = Client(tuple(plan.address), authkey=plan.authkey)
    try:
        wire.send(conn, {"op": "hello", "rank": rank, "world": len(infos), "pid": os.getpid(),
                         "executor": infos[rank].address, "attempt": ctx.taskAttemptId(), "threads": threads,
                         "memory": preflight.worker_memory(), "blas": blas.backend().backend.name})
        task = Task(plan, rank, len(infos), threads, conn, ctx)
        task.receive_model()
        task.take(iterator)
        task.serve()
    except wire.TaskLost:
        raise
    except BaseException as e:
        try:
            # A peer gone from the exchange is a lost task, which Spark's retry of the stage mends;
            # anything else is this task's own failure.
            wire.send(conn, {"op": "error", "rank": rank, "message": f"{type(e).__name__}: {e}",
                             "lost": isinstance(e, ExchangeError), "traceback": traceback.format_exc()})
        except wire.TaskLost:
            pass
        raise
    finally:
        conn.close()
    yield rank


def _exchange(plan: TaskPlan, ctx, conn, rank: int, world: int):
    """The collective the tasks use (``exchange=`` of DistriOptimizer)."""
    makers = {
        "relay": lambda: RelayExchange(rank, world, conn),
        "driver": lambda: DriverExchange.from_barrier(ctx),
        "socket": lambda: _socket_exchange(ctx, plan.timeout),
    }
    return makers[plan.exchange]()


def _socket_exchange(ctx, timeout):
    return SocketExchange.from_barrier(ctx, timeout=timeout)


class Task:
    def __init__(self, plan: TaskPlan, rank: int, world: int, threads: int, conn, ctx):
        self.plan, self.rank, self.world, self.threads, self.conn, self.ctx = plan, rank, world, threads, conn, ctx
        self.method = plan.method_type(**plan.method_hyper)
        self.shares = {TRAIN: Share(plan.pipeline, plan.feature_shape, "training"),
                       VALIDATION: Share(plan.val_pipeline, plan.feature_shape, "validation")}
        self.decoders = ThreadPoolExecutor(threads, thread_name_prefix="kindling-data")
        self._order = (None, None)
        self._skipped: set[int] = set()

    # ---- set-up -------------------------------------------------------------------------------
    def receive_model(self) -> None:
        """The model file in chunks, then the optimizer state of the slices this task owns."""
        header, _ = wire.recv(self.conn)
        fd, path = tempfile.mkstemp(suffix=".kdl", prefix="kindling-task-")
        try:
            with os.fdopen(fd, "wb") as f:
                for _ in range(header["chunks"]):
                    _, (chunk,) = wire.recv(self.conn)
                    f.write(chunk)
            self.model = kdl.load(path)
        finally:
            os.unlink(path)
        prepare_for_training(self.model)
        self.layout = FlatLayout(self.model, self.world)
        self.layout.check_contiguous()
        self.vec = self.layout.vector()
        self.averaging = self.plan.averaging_frequency is not None
        self.since = 0  # records trained on since the last average
        self.exchange = _exchange(self.plan, self.ctx, self.conn, self.rank, self.world)
        header, buffers = wire.recv(self.conn)
        self.method.state.update(header["state"])
        for (key, slot), data in zip(header["slots"], buffers):
            self.method.buffers.setdefault(key, {})[slot] = wire.floats(data).copy()

    def take(self, iterator) -> None:
        for key, (payload, label, source) in iterator:
            self.shares[key & 1].add(key >> 1, payload, label, source)
        wire.send(self.conn, {"op": "ready", "samples": [len(self.shares[TRAIN]), len(self.shares[VALIDATION])]})

    def serve(self) -> None:
        commands = {"step": self.step, "evaluate": self.evaluate, "pull": self.pull, "average": self.average}
        while True:
            header, buffers = wire.recv(self.conn)
            if header["op"] == "stop":
                return
            reply, out = commands[header["op"]](header)
            wire.send(self.conn, reply, *out)

    # ---- data ---------------------------------------------------------------------------------
    def _members(self, epoch: int, position: int) -> np.ndarray:
        """This task's members of global batch ``position`` of ``epoch``, in the batch's order."""
        if self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.plan.samples, self.plan.seed, epoch))
        chunk = self._order[1][position * self.plan.batch_size:(position + 1) * self.plan.batch_size]
        return chunk[chunk % self.world == self.rank]

    def _load(self, share: Share, indices, epoch: int):
        def one(i):
            try:
                x, y = share.load(int(i), sample_rng(self.plan.seed, epoch, i))
                return np.asarray(x, np.float32), y
            except Exception as e:  # a corrupt image: skipped, and named to the driver once
                if int(i) not in self._skipped:
                    self._skipped.add(int(i))
                    self._new_skips.append(f"{share.source(int(i))}: {e}")
                return None
        loaded = list(self.decoders.map(one, indices)) if len(indices) > 1 else [one(i) for i in indices]
        kept = [(i, s) for i, s in zip(indices, loaded) if s is not None]
        if not kept:
            return None, None, np.zeros(0, np.int64)
        return (np.stack([s[0] for _, s in kept]), np.asarray([s[1] for _, s in kept]),
                np.asarray([i for i, _ in kept]))

    # ---- commands -----------------------------------------------------------------------------
    def step(self, h):
        self._new_skips = []
        t0 = time.perf_counter()
        x, y, idx = self._load(self.shares[TRAIN], self._members(h["epoch"], h["position"]), h["epoch"])
        t1 = time.perf_counter()
        n = len(idx)
        if n:
            loss = compute_gradients(self.model, self.plan.criterion, x, y, sample_keys(self.plan.seed, h["epoch"], idx))
        else:
            self.model.zero_grad()
            loss = 0.0
        t2 = time.perf_counter()
        self.method.state.update(iteration=h["iteration"], epoch=h["epoch"])
        step = self._averaging_step if self.averaging else self._synchronous_step
        compute, exchange = step(h, n, loss)
        return {"op": "stepped", "records": n, "loss_sum": loss * n, "skipped": self._new_skips,
                "parts": {"data": t1 - t0, "compute": (t2 - t1) + compute, "exchange": exchange}}, ()

    def _synchronous_step(self, h, n, loss):
        """Gradients summed over all tasks (each owner gets its shard with the total count in its
        header), the owner's slice of the parameters updated, the weights all-gathered."""
        t0 = time.perf_counter()
        vec = self.vec
        self.layout.write(vec, "grads", scale=float(n))  # sums over samples; the owner divides by the total
        self.layout.write_header(vec, (n, loss * n))
        shard = self.exchange.reduce_scatter(vec)
        t1 = time.perf_counter()
        total = float(shard[0])
        if total:
            grads = shard[HEADER:]
            grads *= np.float32(1.0 / total)
            self.method.apply(self.layout.owned_entries(self.rank, shard), h["lr"])
            self.layout.write_owned_weights(self.rank, vec)
        t2 = time.perf_counter()
        if total:
            self.exchange.all_gather(vec)
            self.layout.read_weights(vec)
        return t2 - t1, (t1 - t0) + (time.perf_counter() - t2)

    def _averaging_step(self, h, n, loss):
        """Deeplearning4j's parameter averaging: a local update with this task's own gradient, and
        every k-th step (``h["average"]``) the weights and optimizer state averaged over the
        tasks, each weighted by the records it trained on since the last average. With k = 1 and
        SGD (momentum too) that is the synchronous update: it is linear in the gradients."""
        t0 = time.perf_counter()
        if n:
            self.method.update(self.model, h["lr"])  # the local flat update; _average reads its views
            self.since += n
        t1 = time.perf_counter()
        if h.get("average"):
            self._average()
        return t1 - t0, time.perf_counter() - t1

    def _average(self) -> None:
        weight = float(self.since)
        buffers = self.method.buffers

        def slot_of(name):
            def get(p):
                return buffers.get(p.key, {}).get(name)

            def target(p):
                slots = buffers.setdefault(p.key, {})
                if name not in slots:
                    slots[name] = np.zeros_like(p.module.params[p.name])
                return slots[name]
            return get, target
        arrays = [("params", lambda p: p.module.params[p.name])] + [slot_of(s) for s in self.method.slot_names()]
        for get, target in arrays:
            vec = self.vec
            self.layout.write(vec, get, scale=weight)
            self.layout.write_header(vec, (weight, 0.0))
            shard = self.exchange.reduce_scatter(vec)
            total = float(shard[0])
            if not total:
                return  # nobody trained since the last average
            lo, hi = self.layout.shards[self.rank]
            np.multiply(shard[HEADER:], np.float32(1.0 / total), out=vec[lo + HEADER:hi])
            self.exchange.all_gather(vec)
            self.layout.read(vec, target)
        self.since = 0

    def evaluate(self, h):
        self._new_skips = []
        share, metrics = self.shares[VALIDATION], self.plan.metrics
        totals = [None] * len(metrics)
        order = share.indices()
        self.model.evaluate()
        try:
            for lo in range(0, len(order), self.plan.val_batch_size):
                x, y, idx = self._load(share, order[lo:lo + self.plan.val_batch_size], 1)
                if not len(idx):
                    continue
                out = np.asarray(self.model.forward(x))
                for i, m in enumerate(metrics):
                    r = m(out, y)
                    totals[i] = r if totals[i] is None else totals[i] + r
        finally:
            self.model.train()
        return {"op": "evaluated", "skipped": self._new_skips,
                "results": [None if r is None else [type(r).__name__, r.total, r.count] for r in totals]}, ()

    def average(self, h):
        if self.averaging and self.since:
            self._average()
        return {"op": "averaged"}, ()

    def pull(self, h):
        """Rank 0 sends the weights (all-gathered or just averaged: the same on every task); every
        rank its optimizer state (synchronous: the slices it owns; averaging: rank 0 all of it)
        and its buffers (BatchNorm's running statistics, which differ per task)."""
        out, slots = [], []
        if self.rank == 0:
            weights = self.layout.vector()
            for r in range(self.world):
                self.layout.write_owned_weights(r, weights)
            out.append(weights)
        owned = ([(p.key, 0, p.size) for p in self.layout.params] if self.rank == 0 else []) if self.averaging \
            else self.layout.owned(self.rank)
        for key, a, b in owned:
            for slot, arr in self.method.buffers.get(key, {}).items():
                slots.append([key, slot, a, b])
                out.append(np.asarray(arr, np.float32).reshape(-1)[a:b] if self.averaging else
                           np.asarray(arr, np.float32).reshape(-1))
        buffers = [np.asarray(v, np.float32).reshape(-1) for m in self.model.modules() for v in m.buffers.values()]
        out.append(np.concatenate(buffers) if buffers else np.zeros(0, np.float32))
        return {"op": "pulled", "slots": slots, "weights": self.rank == 0}, out
