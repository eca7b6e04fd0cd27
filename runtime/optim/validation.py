"""Scoring a model on a data set with validation methods (BigDL's ``model.evaluate(...)``)."""
from __future__ import annotations

import numpy as np

from .. import nn
from ..layers.criterions import ProbClassNLLCriterion
from ..predict import score_kind
from .metrics import Loss, Top1Accuracy, Top5Accuracy


class Evaluation(list):
    """[(metric, result), ...] that prints one BigDL-style line per metric."""

    def __str__(self):
        return "\n".join(f"{m} is {r}" for m, r in self)

    def score(self) -> float | None:
        return self[0][1].result()[0] if self else None

    def as_dict(self) -> dict:
        return {str(m): r.result()[0] for m, r in self}


def evaluate(model, dataset, metrics, batch_size: int = 32, workers: int = 2) -> Evaluation:
    from kindling.runtime.data import batches
    training = model.training
    model.evaluate()
    totals = [None] * len(metrics)
    try:
        for x, y in batches(dataset, batch_size, shuffle=False, workers=workers):
            out = np.asarray(model.forward(x))
            for i, m in enumerate(metrics):
                r = m(out, y)
                totals[i] = r if totals[i] is None else totals[i] + r
    finally:
        model.train(training)
    return Evaluation((m, r) for m, r in zip(metrics, totals) if r is not None)


def classification_metrics(model) -> list:
    """What ``kindling evaluate`` reports (BigDL's ``Validator.test([Top1Accuracy(), Top5Accuracy(),
    Loss()])``), the loss's criterion fitted to what the model's last layer gives: log-probabilities,
    probabilities or raw scores."""
    criterion = {"log_softmax": nn.ClassNLLCriterion, "softmax": ProbClassNLLCriterion,
                 "raw": nn.CrossEntropyCriterion}[score_kind(model)]()
    return [Top1Accuracy(), Top5Accuracy(), Loss(criterion)]
