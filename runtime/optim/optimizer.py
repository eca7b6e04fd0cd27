"""The training loop (BigDL's Optimizer, on one machine):

    opt = Optimizer(model=model, training_set=train, criterion=nn.ClassNLLCriterion(),
                    optim_method=SGD(learningrate=1e-2, momentum=0.9), end_trigger=Trigger.max_epoch(3),
                    batch_size=32)
    opt.set_validation(Trigger.every_epoch(), val_set, [Top1Accuracy(), Loss()])
    opt.set_checkpoint("./checkpoints", Trigger.every_epoch())
    trained = opt.optimize()

Each iteration: forward, criterion, backward (not into frozen leading layers, nor into the
input), one update, then the triggers. It logs one line per iteration as BigDL did, shows a tqdm
bar on a terminal, and writes TensorBoard summaries when asked.
"""
from __future__ import annotations

import logging
import sys
import time

from .checkpoint import load_checkpoint, save_checkpoint
from .engine import LocalEngine

log = logging.getLogger("kindling.optim")


def java_number(x) -> str:
    """Numbers as BigDL's (Java's) log printed them: 1.0E-4, 0.8, true."""
    if isinstance(x, bool):
        return "true" if x else "false"
    x = float(x)
    if x == 0:
        return "0.0"
    if 1e-3 <= abs(x) < 1e7:
        return repr(round(x, 10)) if "." in repr(round(x, 10)) else f"{x:.1f}"
    mantissa, exp = f"{x:.15e}".split("e")
    mantissa = mantissa.rstrip("0")
    mantissa = mantissa + "0" if mantissa.endswith(".") else mantissa
    return f"{mantissa}E{int(exp)}"


def is_spark_dataset(data) -> bool:
    """A Spark DataFrame or RDD (told apart without importing pyspark)."""
    return type(data).__module__.split(".")[0] == "pyspark"


class Optimizer:
    """The training loop (BigDL's Optimizer). Given a Spark DataFrame or RDD instead of a local
    DataSet it is a ``kindling.runtime.spark.DistriOptimizer``, as BigDL's ``Optimizer.create``
    chose; the loop is the same, only the engine that runs an iteration differs."""

    def __new__(cls, model=None, training_set=None, *args, **kwargs):
        if cls is Optimizer and is_spark_dataset(training_set):
            from kindling.runtime.spark.optimizer import DistriOptimizer  # pyspark is optional: load it when used
            return super().__new__(DistriOptimizer)
        return super().__new__(cls)

    def __init__(self, model, training_set, criterion, optim_method, end_trigger, batch_size: int = 32, *,
                 seed: int = 0, workers: int = 2, strict_data: bool = False, progress: bool | None = None):
        if batch_size <= 0:
            raise ValueError(f"{type(self).__name__}: batch_size must be positive, got {batch_size}")
        self.model, self.training_set, self.criterion = model, training_set, criterion
        self.optim_method, self.end_trigger, self.batch_size = optim_method, end_trigger, int(batch_size)
        self.seed, self.workers, self.strict_data = int(seed), int(workers), strict_data
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.validation = None
        self.checkpoint = None
        self.train_summary = self.val_summary = None
        self.last_validation: dict | None = None
        self.metadata: dict = dict(getattr(model, "metadata", {}) or {})
        self.metadata.pop("training", None)
        self.history: list[dict] = []
        self.engine = self._engine()

    def _engine(self):
        """What runs an iteration; DistriOptimizer gives a Spark engine."""
        return LocalEngine(self.training_set, self.workers, self.strict_data)

    @classmethod
    def create(cls, model, training_set, criterion, *args, **kwargs) -> "Optimizer":
        """BigDL's factory: a DistriOptimizer for a Spark DataFrame or RDD, else a local one."""
        return Optimizer(model, training_set, criterion, *args, **kwargs)

    # ---- configuration (BigDL's setters) -------------------------------------------------
    def set_validation(self, trigger, val_set, metrics, batch_size: int | None = None) -> "Optimizer":
        self.validation = (trigger, val_set, list(metrics), batch_size or self.batch_size)
        return self

    def set_checkpoint(self, path, trigger) -> "Optimizer":
        self.checkpoint = (path, trigger)
        return self

    def set_train_summary(self, summary) -> "Optimizer":
        self.train_summary = summary
        return self

    def set_val_summary(self, summary) -> "Optimizer":
        self.val_summary = summary
        return self

    @classmethod
    def resume(cls, snapshot, training_set, criterion, end_trigger, batch_size: int = 32, **kwargs) -> "Optimizer":
        """Continues from ``DIR/model.N`` and its ``DIR/optimMethod.N``: same weights, optimiser
        state, epoch and position in the epoch's (seeded) order."""
        model, method = load_checkpoint(snapshot)
        kwargs.setdefault("seed", method.state.get("seed", 0))  # the same data order as before
        return cls(model, training_set, criterion, method, end_trigger, batch_size, **kwargs)

    # ---- the loop ---------------------------------------------------------------------------
    def _state(self) -> dict:
        s = self.optim_method.state
        s.setdefault("epoch", 1)
        s.setdefault("position", 0)
        s["seed"] = self.seed
        return s

    def optimize(self):
        state = self._state()
        engine = self.engine
        engine.start(self)
        try:
            self._loop(engine, state)
            engine.pull()
        finally:
            engine.close()
        for s in (self.train_summary, self.val_summary):
            if s is not None:
                s.flush()
        return self.model

    def _loop(self, engine, state) -> None:
        n = engine.samples
        per_epoch = engine.iterations_per_epoch(self.batch_size)
        wall = time.perf_counter()
        bar = self._bar(per_epoch)
        done, loss = False, None
        try:
            while not done:
                epoch = state["epoch"]
                self.optim_method.set_epoch(epoch)
                fresh_epoch, trained, exhausted = state["position"] == 0, False, False
                seen = state["position"] * self.batch_size
                steps = engine.steps(epoch, state["position"])
                while True:
                    lr_used = self.optim_method.current_learning_rate()
                    hyper = self.optim_method.hyper_parameters()
                    step = next(steps, None)
                    if step is None:
                        exhausted = True
                        break
                    state["position"] = step.position + 1
                    state["epoch_end"] = state["position"] >= per_epoch
                    if step.records:
                        trained, loss = True, step.loss
                        self._log(epoch, seen, n, state["iteration"], time.perf_counter() - wall, step.records,
                                  step.seconds, loss, hyper, lr_used)
                        seen += step.records
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss or 0:.4f}", epoch=epoch)
                    trig = {**state, "loss": loss, "score": self._score()}
                    self._after_iteration(trig, step, lr_used)
                    if self.end_trigger(trig):
                        done = True
                        break
                    if state["epoch_end"]:
                        break
                steps.close()
                if fresh_epoch and not trained:
                    raise ValueError(f"{_name(self.training_set, 'training set')}: no usable samples")
                if exhausted or state.get("epoch_end"):  # on to the next epoch (also when done: resume there)
                    state["epoch"] += 1
                    state["position"] = 0
                    state["epoch_end"] = False
                    self.optim_method.set_epoch(state["epoch"])
        finally:
            if bar is not None:
                bar.close()

    def _score(self):
        return self.last_validation["score"] if self.last_validation else None

    def _after_iteration(self, trig, step, lr):
        it = trig["iteration"]
        if step.records:
            self.history.append({"iteration": it, "epoch": trig["epoch"], "loss": step.loss, "records": step.records,
                                 "seconds": step.seconds, "parts": step.parts})
            if self.train_summary is not None:
                self.train_summary.add_scalar("Loss", step.loss, it)
                self.train_summary.add_scalar("Throughput", step.records / max(step.seconds, 1e-9), it)
                self.train_summary.add_scalar("LearningRate", lr, it)
                hist = self.train_summary.trigger("Parameters")
                if hist is not None and hist(trig):
                    self.engine.pull()
                    for name, w, _ in self.model.named_parameters():
                        self.train_summary.add_histogram(name, w, it)
        if self.validation is not None and self.validation[0](trig):
            self._validate(trig)
            trig["score"] = self._score()
        if self.checkpoint is not None and self.checkpoint[1](trig):
            self.engine.pull()
            path = save_checkpoint(self.checkpoint[0], self.model, self.optim_method, trig, self._validation_record(),
                                   self.metadata)
            log.info("[Iteration %d] saved %s and optimMethod.%d", it, path, it)

    def _validate(self, trig):
        _, val_set, metrics, batch_size = self.validation
        results = self.engine.evaluate(val_set, metrics, batch_size)
        for line in str(results).splitlines():
            log.info("[Epoch %d][Iteration %d] %s", trig["epoch"], trig["iteration"], line)
        score = results.score()
        self.last_validation = {"dataset": _name(val_set, "validation"), "results": results.as_dict(),
                                "count": results[0][1].count if results else 0, "score": score}
        if score is not None:
            self.optim_method.on_validation(score)  # a Plateau schedule's mode says which way is better
        if self.val_summary is not None:
            for m, r in results:
                self.val_summary.add_scalar(str(m), r.result()[0], trig["iteration"])

    def _validation_record(self):
        if not self.last_validation:
            return None
        return {k: v for k, v in self.last_validation.items() if k != "score"}

    def _log(self, epoch, seen, n, it, wall, count, took, loss, hyper, lr):
        parts = [f"Current learning rate is {java_number(lr)}."]
        for key in ("weight decay", "momentum", "nesterov"):
            if key in hyper:
                parts.append(f"Current {key} is {java_number(hyper[key])}.")
        log.info("[Epoch %d %d/%d][Iteration %d][Wall Clock %.1fs] Train %d in %.2f seconds. Throughput is %.1f "
                 "records/second. Loss is %.6f. %s", epoch, seen, n, it, wall, count, took, count / max(took, 1e-9),
                 loss, " ".join(parts))

    def _bar(self, total):
        if not self.progress:
            return None
        from tqdm import tqdm
        return tqdm(total=total, unit="batch", leave=False, file=sys.stderr)


def _name(data, default: str) -> str:
    name = getattr(data, "name", None)
    return name if isinstance(name, str) else default


LocalOptimizer = Optimizer
