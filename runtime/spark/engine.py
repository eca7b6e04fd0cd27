"""The driver's half of distributed training: the engine that the one training loop
(``Optimizer.optimize``) drives when the data is a Spark DataFrame or RDD.

It starts one long-lived barrier stage (one task per slot, ``rdd.barrier().mapPartitions``) and
keeps a control connection to each task. Each iteration the loop asks for a step; the tasks
compute on their members of the global batch, combine gradients through the exchange (weighted
by how many records each had), update the shard of the parameters each owns and all-gather the
weights; the driver gets back the count and loss. The driver's model and optim method, the one
copy that validation fallbacks, checkpoints, summaries and the caller see, are brought up to date
on demand (``pull``), and are the state a retried stage restarts from: if a task is lost, Spark
retries the barrier stage, the new tasks get the driver's copy, and the iterations since it was
pulled are replayed (every choice in them is a function of seed, epoch and position, so the run
ends exactly as an uninterrupted one would).
"""
from __future__ import annotations

import logging
import math
import queue
import secrets
import socket
import tempfile
import threading
import time
from multiprocessing.connection import Listener
from pathlib import Path

import numpy as np

from .. import format as kdl
from ..data.transforms import Pipeline
from ..optim.engine import Engine, StepResult
from ..optim.metrics import RESULT_TYPES, ValidationResult
from ..optim.optimizer import is_spark_dataset
from ..optim.validation import Evaluation, evaluate
from . import preflight, relay, wire
from .data import TRAIN, VALIDATION, count, indexed, to_tasks
from .flat import FlatLayout
from .task import TaskPlan, run

log = logging.getLogger("kindling.spark")

CHUNK = 4 << 20  # the model travels to each task in pieces of this size
COLLECTIVES = {"reduce_scatter", "all_gather"}
# optimizer state slots per parameter, for the memory pre-flight
SLOTS = {"SGD": lambda m: 1 if m.momentum else 0, "Adam": lambda m: 2, "RMSprop": lambda m: 1,
         "Adagrad": lambda m: 1}


class TaskFailed(ValueError):
    """A task raised (a bad model, a shape error, ...): not retried, reported with its message."""


class _Job(threading.Thread):
    """Runs the barrier stage; Spark retries it when a task is lost."""

    def __init__(self, sc, rdd, plan, group: str):
        super().__init__(name="kindling-barrier-stage", daemon=True)
        self.sc, self.rdd, self.plan, self.group = sc, rdd, plan, group
        self.error: BaseException | None = None

    def run(self):
        plan = self.plan
        self.sc.setJobGroup(self.group, "kindling: distributed training", interruptOnCancel=True)
        try:
            # Spark retries a failed barrier stage only when a shuffle follows it (a result stage
            # may have handed out output already): end the stage in one, to one partition.
            self.rdd.barrier().mapPartitions(lambda it: run(it, plan)).repartition(1).collect()
        except BaseException as e:
            self.error = e


class SparkEngine(Engine):
    def __init__(self, training_set, *, num_tasks: int | None = None, exchange: str = "socket",
                 timeout: float = 600.0, pipeline=None, val_pipeline=None, feature_col: str | None = None,
                 label_col: str = "label", feature_shape=None, averaging_frequency: int | None = None,
                 slot_wait: float = 30.0):
        from .optimizer import EXCHANGES
        if exchange not in EXCHANGES:
            raise ValueError(f"exchange={exchange!r}: expected one of {', '.join(EXCHANGES)}")
        if averaging_frequency is not None and averaging_frequency < 1:
            raise ValueError(f"averaging_frequency must be >= 1 (or None: synchronous), got {averaging_frequency}")
        self.training_set, self.num_tasks, self.exchange, self.timeout = training_set, num_tasks, exchange, timeout
        self.pipeline, self.val_pipeline, self.feature_col, self.label_col = pipeline, val_pipeline, feature_col, label_col
        self.feature_shape, self.averaging_frequency, self.slot_wait = feature_shape, averaging_frequency, slot_wait
        self.samples = 0  # counted when training starts
        self.hellos: list[dict] = []
        self.replayed = 0  # iterations run again after a lost task
        self.recoveries = 0
        self.preflight: list[str] = []
        self.conns: list = []
        self._since_pull: list[dict] = []
        self._skipped: set[str] = set()
        self._unaveraged = 0  # local steps since the weights were last averaged (averaging mode)

    # ---- start ----------------------------------------------------------------------------------
    def start(self, opt) -> None:
        from .optimizer import spark_context
        self.opt = opt
        self.hellos, self._since_pull, self._unaveraged = [], [], 0  # the driver's copy is current
        sc = spark_context(self.training_set)
        self.world = preflight.check_barrier(sc, self.num_tasks, self.slot_wait)
        self.samples = count(self.training_set)
        if not self.samples:
            raise ValueError("the training DataFrame is empty")
        self.local_validation = opt.validation is not None and not is_spark_dataset(opt.validation[1])
        val = opt.validation[1] if opt.validation is not None and not self.local_validation else None
        rdds = [indexed(self.training_set, TRAIN, self.feature_col, self.label_col)]
        if val is not None:
            rdds.append(indexed(val, VALIDATION, self.feature_col, self.label_col))
        conf = sc.getConf()
        host = conf.get("spark.driver.host", None) or socket.gethostname()
        self.authkey = secrets.token_bytes(32)
        self.listener = Listener((conf.get("spark.driver.bindAddress", None) or host, 0), authkey=self.authkey)
        address = (host, self.listener.address[1])
        self._accepted: queue.Queue = queue.Queue()
        self._closing = False
        threading.Thread(target=self._accept, name="kindling-control-accept", daemon=True).start()
        model = opt.model
        pre = (getattr(model, "metadata", None) or {}).get("preprocessing")
        pipeline = self.pipeline or (Pipeline.from_metadata(pre) if pre else None)
        shape = tuple(self.feature_shape) if self.feature_shape else _input_shape(model)
        plan = TaskPlan(address=address, authkey=self.authkey, exchange=self.exchange, timeout=self.timeout,
                        criterion=opt.criterion, method_type=type(opt.optim_method),
                        method_hyper=opt.optim_method.hyper(), pipeline=pipeline,
                        val_pipeline=self.val_pipeline or (pipeline.evaluation() if pipeline else None),
                        feature_shape=shape,
                        metrics=list(opt.validation[2]) if val is not None else [], seed=opt.seed,
                        batch_size=opt.batch_size, val_batch_size=opt.validation[3] if val is not None else 1,
                        samples=self.samples, averaging_frequency=self.averaging_frequency)
        self.sample_shape = shape
        self.layout = FlatLayout(model, self.world)
        self.group = f"kindling-{secrets.token_hex(6)}"
        self.job = _Job(sc, to_tasks(rdds, self.world), plan, self.group)
        self.sc = sc
        self.job.start()
        try:
            self._connect()
        except BaseException:
            self.close()
            raise

    def _accept(self):
        while not self._closing:
            try:
                self._accepted.put(self.listener.accept())
            except Exception:  # closed, or a connection that failed authentication
                continue

    def _check_job(self) -> None:
        if not self.job.is_alive() and self.job.error is not None:
            raise RuntimeError(f"the barrier stage failed: {_spark_message(self.job.error)}") from self.job.error

    def _connect(self) -> None:
        """Waits for every task of the (new) stage attempt to say hello, runs the memory
        pre-flight the first time, sends the driver's model and optimizer state, and waits until
        every task holds its share of the data."""
        hellos: dict[int, tuple] = {}
        deadline = time.monotonic() + self.timeout
        seen = {h["attempt"] for h in self.hellos}
        while len(hellos) < self.world:
            self._check_job()
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(hellos)} of {self.world} tasks started within {self.timeout:.0f} s")
            try:
                conn = self._accepted.get(timeout=0.5)
            except queue.Empty:
                continue
            header, _ = self._recv(conn)
            if header.get("op") != "hello" or header["attempt"] in seen:
                conn.close()
                continue
            old = hellos.get(header["rank"])
            if old is not None:
                old[1].close()
            hellos[header["rank"]] = (header, conn)
        self.conns = [hellos[r][1] for r in range(self.world)]
        first = not self.hellos
        self.hellos = [hellos[r][0] for r in range(self.world)]
        if first:
            opt = self.opt
            slots = SLOTS.get(type(opt.optim_method).__name__, lambda m: 2)(opt.optim_method)
            need = preflight.per_task_bytes(opt.model, slots, self.world, opt.batch_size,
                                            preflight.activation_bytes(opt.model, self.sample_shape),
                                            self.averaging_frequency is not None)
            self.preflight = preflight.check_memory(self.hellos, need)
        self._send_state()
        for header, _ in self._gather():
            pass

    def _send_state(self) -> None:
        opt = self.opt
        with tempfile.TemporaryDirectory(prefix="kindling-driver-") as tmp:
            path = kdl.save(opt.model, Path(tmp) / "model.kdl")
            size = path.stat().st_size
            chunks = max(1, math.ceil(size / CHUNK))
            for conn in self.conns:
                wire.send(conn, {"op": "model", "chunks": chunks, "bytes": size})
                with open(path, "rb") as f:
                    for _ in range(chunks):
                        wire.send(conn, {"op": "chunk"}, f.read(CHUNK))
        method = opt.optim_method
        state = {k: method.state[k] for k in ("iteration", "epoch") if k in method.state}
        averaging = self.averaging_frequency is not None
        for rank, conn in enumerate(self.conns):
            slots, out = [], []
            owned = [(p.key, 0, p.size) for p in self.layout.params] if averaging else self.layout.owned(rank)
            for key, a, b in owned:
                for slot, full in method.buffers.get(key, {}).items():
                    slots.append([key, slot])
                    out.append(np.asarray(full, np.float32).reshape(-1)[a:b])
            wire.send(conn, {"op": "state", "state": state, "slots": slots}, *out)

    # ---- talking to the tasks -------------------------------------------------------------------
    def _recv(self, conn):
        """One message, watching the stage while waiting (a lost task is a closed connection or a
        failed stage, whichever Spark reports first)."""
        while True:
            try:
                if conn.poll(0.5):
                    break
            except (OSError, EOFError) as e:
                raise wire.TaskLost(str(e)) from e
            if not self.job.is_alive():
                raise wire.TaskLost("the barrier stage ended")
        header, buffers = wire.recv(conn)
        if header.get("op") == "error" and header.get("lost"):
            raise wire.TaskLost(f"task {header['rank']} lost a peer: {header['message']}")
        if header.get("op") == "error":
            self.sc.cancelJobGroup(self.group)
            raise TaskFailed(f"task {header['rank']} failed: {header['message']}\n{header.get('traceback', '')}")
        return header, buffers

    def _gather(self):
        return [self._recv(c) for c in self.conns]

    def _round(self, command: dict):
        """Sends ``command`` to every task and returns their replies, relaying the collectives of
        a RelayExchange on the way."""
        for conn in self.conns:
            wire.send(conn, command)
        while True:
            replies = self._gather()
            header = replies[0][0]
            if header["op"] not in COLLECTIVES:
                return replies
            relay.serve(self.conns, header, [b for _, b in replies])

    def _command(self, command: dict):
        while True:
            try:
                return self._round(command)
            except wire.TaskLost as e:
                self._recover(e)

    def _recover(self, error) -> None:
        self.recoveries += 1
        log.warning("lost a task (%s); waiting for Spark to retry the barrier stage, then replaying %d "
                    "iteration(s) from the last synchronised state (iteration %d)", error, len(self._since_pull),
                    self.opt.optim_method.state["iteration"] - len(self._since_pull))
        for conn in self.conns:
            conn.close()
        self._connect()
        for command in list(self._since_pull):
            self._round(command)  # a loss during the replay starts the recovery over
            self.replayed += command["op"] == "step"

    # ---- the engine contract --------------------------------------------------------------------
    def steps(self, epoch, start):
        opt, method, k = self.opt, self.opt.optim_method, self.averaging_frequency
        for position in range(start, self.iterations_per_epoch(opt.batch_size)):
            lr = method.current_learning_rate()
            command = {"op": "step", "epoch": epoch, "position": position, "iteration": method.state["iteration"],
                       "lr": lr}
            if k is not None:
                command["average"] = (self._unaveraged + 1) % k == 0
            begin = time.perf_counter()
            replies = self._command(command)
            wall = time.perf_counter() - begin
            self._warn_skipped(replies)
            records = int(sum(h["records"] for h, _ in replies))
            loss = sum(h["loss_sum"] for h, _ in replies) / records if records else None
            if records:
                self._since_pull.append(command)
                self._unaveraged = 0 if command.get("average") else self._unaveraged + 1
                method.apply((), lr)  # the tasks updated the weights; the driver keeps the count
            yield StepResult(position, loss, records, wall, _split(replies, wall))

    def _synchronise(self) -> None:
        """In averaging mode, averages the tasks' weights now (before they are scored or pulled)."""
        if self.averaging_frequency is not None and self._unaveraged:
            command = {"op": "average"}
            self._command(command)
            self._since_pull.append(command)
            self._unaveraged = 0

    def evaluate(self, val_set, metrics, batch_size):
        if self.local_validation:  # a local DataSet: the driver's up-to-date copy scores it
            self.pull()
            return evaluate(self.opt.model, val_set, metrics, batch_size, workers=self.opt.workers)
        self._synchronise()
        replies = self._command({"op": "evaluate"})
        self._warn_skipped(replies)
        totals = [None] * len(metrics)
        for header, _ in replies:
            for i, r in enumerate(header["results"]):
                if r is not None:
                    kind, total, n = r
                    result = RESULT_TYPES.get(kind, ValidationResult)(total, n)
                    totals[i] = result if totals[i] is None else totals[i] + result
        return Evaluation((m, r) for m, r in zip(metrics, totals) if r is not None)

    def pull(self) -> None:
        if not self._since_pull:
            return  # nothing has changed since the driver's copy was made
        self._synchronise()
        replies = self._command({"op": "pull"})
        model, method = self.opt.model, self.opt.optim_method
        buffers = []
        for header, data in replies:
            data = list(data)
            if header["weights"]:
                self.layout.read_weights(wire.floats(data.pop(0)))
            for (key, slot, a, b), arr in zip(header["slots"], data):
                full = method.buffers.setdefault(key, {}).get(slot)
                if full is None:
                    full = method.buffers[key][slot] = np.zeros_like(_param(model, key))
                full.reshape(-1)[a:b] = wire.floats(arr)
            buffers.append(wire.floats(data[-1]))
        if buffers and buffers[0].size:  # BatchNorm's running statistics: the tasks' average
            mean = np.mean(buffers, axis=0, dtype=np.float64).astype(np.float32)
            off = 0
            for m in model.modules():
                for v in m.buffers.values():
                    v.reshape(-1)[:] = mean[off:off + v.size]
                    off += v.size
        self._since_pull = []

    def close(self) -> None:
        for conn in self.conns:
            try:
                wire.send(conn, {"op": "stop"})
            except wire.TaskLost:
                pass
        job = getattr(self, "job", None)
        if job is not None:
            job.join(timeout=30)
            if job.is_alive():
                self.sc.cancelJobGroup(self.group)
                job.join(timeout=30)
        for conn in self.conns:
            conn.close()
        self.conns = []
        listener = getattr(self, "listener", None)
        if listener is not None:
            self._closing = True
            listener.close()

    def _warn_skipped(self, replies) -> None:
        for header, _ in replies:
            for what in header.get("skipped", ()):
                if what not in self._skipped:
                    self._skipped.add(what)
                    logging.getLogger("kindling.data").warning("skipping %s (not repeated in later epochs)", what)


def _split(replies, wall: float) -> dict:
    """The iteration's time: compute on the slowest task (its data loading apart), the exchange as
    that task saw it (it waited least for the others), and the rest (driver round trips, Python)."""
    parts = [h["parts"] for h, _ in replies]
    slowest = max(parts, key=lambda p: p["compute"] + p["data"])
    out = {"compute": slowest["compute"], "data": slowest["data"], "exchange": slowest["exchange"]}
    out["overhead"] = max(0.0, wall - sum(out.values()))
    return out


def _param(model, key: str) -> np.ndarray:
    name, _, pname = key.rpartition(".")
    return model.find(name).params[pname]


def _input_shape(model):
    """One sample's shape from the model's metadata, if recorded. A free-size net (-1 in its input
    shape) takes its preprocessing's size for H and W; a dimension still free leaves the shape
    unknown (give feature_shape=), as a flat feature cannot say it."""
    meta = getattr(model, "metadata", None) or {}
    shape = meta.get("input_shape")
    pre = meta.get("preprocessing") or {}
    if shape and len(shape) >= 2:
        dims = [int(v) for v in shape[1:]]
        if len(dims) == 3 and pre.get("input_size"):
            dims[1:] = [d if d > 0 else int(s) for d, s in zip(dims[1:], pre["input_size"])]
        return tuple(dims) if min(dims) > 0 else None
    if pre.get("input_size"):
        return (1 if pre.get("channel_order") == "gray" else 3, *map(int, pre["input_size"]))
    return None


def _spark_message(error) -> str:
    text = str(error)
    for line in text.splitlines():
        if "Exception" in line or "Error" in line:
            return line.strip()[:500]
    return text[:500]
