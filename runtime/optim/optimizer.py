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

import numpy as np

from ..data import batches
from .checkpoint import load_checkpoint, save_checkpoint
from .validation import evaluate

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


class Optimizer:
    def __init__(self, model, training_set, criterion, optim_method, end_trigger, batch_size: int = 32, *,
                 seed: int = 0, workers: int = 2, strict_data: bool = False, progress: bool | None = None):
        if batch_size <= 0:
            raise ValueError(f"Optimizer: batch_size must be positive, got {batch_size}")
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

    def _prepare_model(self):
        m = self.model
        m.train()
        m.propagate_down = False  # nobody needs the gradient w.r.t. the images
        m.skip_frozen_prefix = True  # frozen leading layers are not back-propagated at all

    def optimize(self):
        self._prepare_model()
        state = self._state()
        n = len(self.training_set)
        per_epoch = -(-n // self.batch_size)
        wall = time.perf_counter()
        bar = self._bar(per_epoch)
        done = False
        loss = None
        while not done:
            epoch = state["epoch"]
            self.optim_method.set_epoch(epoch)
            fresh_epoch, yielded = state["position"] == 0, False
            seen = state["position"] * self.batch_size
            for x, y in batches(self.training_set, self.batch_size, seed=self.seed, epoch=epoch,
                                start=state["position"], workers=self.workers, strict=self.strict_data):
                yielded = True
                start = time.perf_counter()
                lr_used = self.optim_method.current_learning_rate()
                hyper = self.optim_method.hyper_parameters()
                loss = self._step(x, y)
                took = time.perf_counter() - start
                state["position"] += 1
                state["epoch_end"] = state["position"] >= per_epoch
                trig = {**state, "loss": loss, "score": self._score()}
                self._log(epoch, seen, n, state["iteration"], time.perf_counter() - wall, len(y), took, loss,
                          hyper, lr_used)
                seen += len(y)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", epoch=epoch)
                self._after_iteration(trig, loss, len(y) / took, lr_used)
                if self.end_trigger(trig):
                    done = True
                    break
                if state["epoch_end"]:
                    break
            if state.get("epoch_end") or state["position"] >= per_epoch:
                state["epoch"] += 1
                state["position"] = 0
                state["epoch_end"] = False
                self.optim_method.set_epoch(state["epoch"])
            if fresh_epoch and not yielded:
                raise ValueError(f"{getattr(self.training_set, 'name', 'training set')}: no usable samples")
        if bar is not None:
            bar.close()
        for s in (self.train_summary, self.val_summary):
            if s is not None:
                s.flush()
        return self.model

    def _step(self, x, y) -> float:
        m = self.model
        m.zero_grad()
        out = m.forward(x)
        loss = float(self.criterion.forward(out, y))
        m.backward(x, self.criterion.backward(out, y))
        self.optim_method.update(m)
        return loss

    def _score(self):
        return self.last_validation["score"] if self.last_validation else None

    def _after_iteration(self, trig, loss, throughput, lr):
        it = trig["iteration"]
        self.history.append({"iteration": it, "epoch": trig["epoch"], "loss": loss})
        if self.train_summary is not None:
            self.train_summary.add_scalar("Loss", loss, it)
            self.train_summary.add_scalar("Throughput", throughput, it)
            self.train_summary.add_scalar("LearningRate", lr, it)
            hist = self.train_summary.trigger("Parameters")
            if hist is not None and hist(trig):
                for name, w, _ in self.model.named_parameters():
                    self.train_summary.add_histogram(name, w, it)
        if self.validation is not None and self.validation[0](trig):
            self._validate(trig)
            trig["score"] = self._score()
        if self.checkpoint is not None and self.checkpoint[1](trig):
            path = save_checkpoint(self.checkpoint[0], self.model, self.optim_method, trig, self._validation_record(),
                                   self.metadata)
            log.info("[Iteration %d] saved %s and optimMethod.%d", it, path, it)

    def _validate(self, trig):
        _, val_set, metrics, batch_size = self.validation
        results = evaluate(self.model, val_set, metrics, batch_size, workers=self.workers)
        for line in str(results).splitlines():
            log.info("[Epoch %d][Iteration %d] %s", trig["epoch"], trig["iteration"], line)
        score = results.score()
        self.last_validation = {"dataset": getattr(val_set, "name", "validation"), "results": results.as_dict(),
                                "count": results[0][1].count if results else 0, "score": score}
        if score is not None:
            self.optim_method.on_validation(score)  # a Plateau schedule's mode says which way is better
        if self.val_summary is not None:
            for m, r in results:
                self.val_summary.add_scalar(str(m), r.result()[0], trig["iteration"])
        self.model.train()

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


LocalOptimizer = Optimizer
