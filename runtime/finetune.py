"""Fine-tuning set-up, in one place for ``kindling train``, ``kindling demo`` and Python users:
turn a model brought in from elsewhere into one that trains (a new head, a log-softmax output,
frozen layers), pick its criterion and metrics, build the optim method from command-line-like
settings, and wire an Optimizer with validation, checkpoints and summaries.

    settings = FineTune(epochs=3, lr=0.01, momentum=0.9, nesterov=True, checkpoint="ckpt/")
    notes = prepare_model(model, settings, classes=10)
    opt = fine_tuner(model, train_set, val_set, settings)      # local DataSet or Spark DataFrame
    opt.optimize()
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import nn
from .head import new_head
from .optim import SGD, Adam, Loss, Optimizer, Top1Accuracy, Top5Accuracy, TrainSummary, Trigger, ValidationSummary
from .optim.schedules import parse as parse_schedule


@dataclass
class FineTune:
    """The settings ``kindling train`` takes, with its defaults."""
    epochs: int = 5
    batch_size: int = 32
    optim: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    dampening: float | None = None  # default: the momentum (BigDL), or 0 with nesterov
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str | None = None
    new_head: str | None = None  # "NAME:CLASSES" (classes may be left out: the data's)
    freeze: list[str] = field(default_factory=list)
    checkpoint: str | None = None
    checkpoint_every: int | None = None  # iterations; default every epoch
    log_dir: str | None = None
    app_name: str = "kindling"
    seed: int = 0
    workers: int = 2
    spark: dict = field(default_factory=dict)  # DistriOptimizer's keywords (exchange, num_tasks, ...)


def make_optim_method(s: FineTune):
    """SGD or Adam from the settings (the choices of ``kindling train --optim``)."""
    schedule = parse_schedule(s.schedule) if s.schedule else None
    makers = {
        "sgd": lambda: SGD(learningrate=s.lr, weightdecay=s.weight_decay, momentum=s.momentum,
                           dampening=0.0 if s.nesterov and s.dampening is None else s.dampening,
                           nesterov=s.nesterov, learningrate_schedule=schedule),
        "adam": lambda: Adam(learningrate=s.lr, weightdecay=s.weight_decay, learningrate_schedule=schedule),
    }
    if s.optim not in makers:
        raise ValueError(f"optim {s.optim!r}: expected one of {', '.join(makers)}")
    return makers[s.optim]()


def log_softmax_output(model) -> str | None:
    """Caffe deploy nets end in Softmax (Caffe trained them through SoftmaxWithLoss): train through
    LogSoftmax + ClassNLL instead, the same loss computed stably. Returns a note when it swapped."""
    last = list(model.modules())[-1]
    if type(last) is nn.Softmax:
        model.replace(last.name, nn.LogSoftmax(last.axis, name=last.name))
        return f"{last.name}: Softmax trained as LogSoftmax (outputs are log-probabilities)"
    return None


def criterion_for(model):
    """ClassNLL on a model that outputs log-probabilities, else cross-entropy on its raw scores."""
    last = list(model.modules())[-1]
    return nn.ClassNLLCriterion() if isinstance(last, nn.LogSoftmax) else nn.CrossEntropyCriterion()


def metrics_for(classes: int, criterion) -> list:
    return [Top1Accuracy()] + ([Top5Accuracy()] if classes > 5 else []) + [Loss(criterion)]


def _outputs(layer) -> int:
    return getattr(layer, "out_features", None) or layer.out_channels


def prepare_model(model, s: FineTune, classes: int) -> list[str]:
    """A new head (seeded by the run's seed), frozen layers and a log-softmax output, as the
    settings ask; returns what was changed, for the user."""
    notes = []
    if s.new_head:
        name, _, count = s.new_head.partition(":")
        count = int(count or classes)
        if count != classes:
            raise ValueError(f"--new-head {s.new_head}: the training data has {classes} classes")
        old, _ = new_head(model, name, count, seed=s.seed)
        notes.append(f"replaced {old.name} ({_outputs(old)} outputs) by a new {name} with {count} outputs")
    if s.freeze:
        model.freeze(*s.freeze)
    note = log_softmax_output(model)
    if note:
        notes.append(note)
    return notes


def fine_tuner(model, train_set, val_set, s: FineTune, classes: int, method=None) -> Optimizer:
    """The Optimizer (a DistriOptimizer for a Spark DataFrame) with validation every epoch, the
    checkpoints and TensorBoard summaries the settings ask for. ``method`` continues a resumed run."""
    criterion = criterion_for(model)
    extra = {"seed": s.seed, "workers": s.workers}
    if s.spark:
        extra.update(s.spark)
    opt = Optimizer(model, train_set, criterion, method or make_optim_method(s), Trigger.max_epoch(s.epochs),
                    s.batch_size, **extra)
    if val_set is not None:
        opt.set_validation(Trigger.every_epoch(), val_set, metrics_for(classes, criterion))
    if s.checkpoint:
        every = Trigger.several_iteration(s.checkpoint_every) if s.checkpoint_every else Trigger.every_epoch()
        opt.set_checkpoint(s.checkpoint, every)
    if s.log_dir:
        opt.set_train_summary(TrainSummary(s.log_dir, s.app_name))
        opt.set_val_summary(ValidationSummary(s.log_dir, s.app_name))
    return opt
