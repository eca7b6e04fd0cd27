"""How one training iteration runs: the part of training that differs between one machine and a
Spark cluster. The loop around it (triggers, log lines, progress bar, validation, checkpoints,
summaries, resume) is ``Optimizer.optimize`` and exists once.

An engine is started by the loop, then asked for the iterations of an epoch from a position on
(``steps``), to evaluate metrics on a validation set (``evaluate``), and to bring the loop's model
and optim method up to date before they are saved or returned (``pull``). ``LocalEngine`` runs
everything in this process; ``kindling.runtime.spark.SparkEngine`` runs the same step in long-lived
Spark barrier tasks.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..data import indexed_batches
from .validation import evaluate


@dataclass
class StepResult:
    """One iteration: the batch number in its epoch, the mean training loss, the records it
    trained on (0 when every image of the batch was unreadable: no update happened) and the
    seconds it took, split into named parts where the engine can tell them apart."""
    position: int
    loss: float | None
    records: int
    seconds: float
    parts: dict = field(default_factory=dict)


def prepare_for_training(model) -> None:
    model.train()
    model.propagate_down = False  # nobody needs the gradient w.r.t. the images
    model.skip_frozen_prefix = True  # frozen leading layers are not back-propagated at all


def seed_stochastic_layers(model, keys) -> None:
    """Gives every random layer (Dropout) one key per sample of the next batch, so its draws are a
    function of (seed, epoch, sample) whichever process, batch or position the sample is in."""
    for m in model.modules():
        if m.stochastic:
            m.seed_batch(keys)


def compute_gradients(model, criterion, x, y, keys=None) -> float:
    """Forward, criterion, backward: the gradients of the mean loss over the batch accumulate into
    the model's (zeroed) ``grads``; returns the loss."""
    model.zero_grad()
    if keys is not None:
        seed_stochastic_layers(model, keys)
    out = model.forward(x)
    loss = float(criterion.forward(out, y))
    model.backward(x, criterion.backward(out, y))
    return loss


def sample_keys(seed: int, epoch: int, indices) -> list[tuple[int, int, int]]:
    return [(seed, epoch, int(i)) for i in indices]


class Engine:
    """The contract the loop relies on (see the module docstring)."""
    samples = 0

    def start(self, opt) -> None:
        raise NotImplementedError

    def iterations_per_epoch(self, batch_size: int) -> int:
        return -(-self.samples // batch_size)

    def steps(self, epoch: int, start: int):
        """Yields a StepResult for each batch of ``epoch`` from batch number ``start`` on, after
        one update of the weights (and ``optim_method.state["iteration"]`` advanced)."""
        raise NotImplementedError

    def evaluate(self, val_set, metrics, batch_size: int):
        raise NotImplementedError

    def pull(self) -> None:
        """Makes ``opt.model`` and ``opt.optim_method`` hold the current weights and state."""

    def close(self) -> None:
        pass


class LocalEngine(Engine):
    def __init__(self, training_set, workers: int = 2, strict: bool = False):
        self.training_set, self.workers, self.strict = training_set, int(workers), strict
        self.samples = len(training_set)
        self.opt = None

    def start(self, opt) -> None:
        self.opt = opt
        prepare_for_training(opt.model)

    def steps(self, epoch, start):
        opt = self.opt
        for b in indexed_batches(self.training_set, opt.batch_size, seed=opt.seed, epoch=epoch, start=start,
                                 workers=self.workers, strict=self.strict):
            begin = time.perf_counter()
            loss = compute_gradients(opt.model, opt.criterion, b.x, b.y, sample_keys(opt.seed, epoch, b.indices))
            opt.optim_method.update(opt.model)
            took = time.perf_counter() - begin
            yield StepResult(b.position, loss, len(b.y), took, {"compute": took})

    def evaluate(self, val_set, metrics, batch_size):
        return evaluate(self.opt.model, val_set, metrics, batch_size, workers=self.workers)

