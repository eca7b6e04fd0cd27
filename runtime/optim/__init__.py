"""Training: optimisation methods, learning-rate schedules, triggers, validation metrics, and the
Optimizer loop (names as in BigDL, Python style)."""
from importlib import import_module

# public name -> file under runtime/optim/ that defines it
EXPORTS = {
    "OptimMethod": "base", "SGD": "sgd", "Adam": "adaptive", "RMSprop": "adaptive", "Adagrad": "adaptive",
    "EpochStep": "schedules", "Step": "schedules", "MultiStep": "schedules", "Poly": "schedules",
    "Exponential": "schedules", "Plateau": "schedules", "Warmup": "schedules", "SequentialSchedule": "schedules",
    "Default": "schedules",
    "Trigger": "triggers", "EveryEpoch": "triggers", "SeveralIteration": "triggers", "MaxEpoch": "triggers",
    "MaxIteration": "triggers", "MinLoss": "triggers", "MaxScore": "triggers", "TriggerAnd": "triggers",
    "TriggerOr": "triggers",
    "Top1Accuracy": "metrics", "Top5Accuracy": "metrics", "TopKAccuracy": "metrics", "Loss": "metrics",
    "MAE": "metrics", "ValidationMethod": "metrics", "ValidationResult": "metrics",
    "Optimizer": "optimizer", "LocalOptimizer": "optimizer",
    "TrainSummary": "summary", "ValidationSummary": "summary",
    "evaluate": "validation",
}

__all__ = list(EXPORTS)


def __getattr__(name):
    if name in EXPORTS:
        return getattr(import_module(f".{EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'kindling.runtime.optim' has no attribute {name!r}")
