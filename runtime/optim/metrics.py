"""Validation methods (BigDL's ValidationMethod): each scores one batch into a result; results
add up over batches and print as BigDL printed them."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ValidationResult:
    total: float
    count: int

    def __add__(self, other):
        return type(self)(self.total + other.total, self.count + other.count)

    def result(self) -> tuple[float, int]:
        return (self.total / self.count if self.count else 0.0), self.count


class AccuracyResult(ValidationResult):
    def __str__(self):
        value, count = self.result()
        return f"Accuracy(correct: {int(self.total)}, count: {count}, accuracy: {value:.4f})"


class LossResult(ValidationResult):
    def __str__(self):
        value, count = self.result()
        return f"(Loss: {self.total:.4f}, count: {count}, Average Loss: {value:.4f})"


class ContinuousResult(ValidationResult):
    def __str__(self):
        value, count = self.result()
        return f"({type(self).__name__[:-6] or 'Value'}: {value:.4f}, count: {count})"


# result types by name: a distributed validation sums each task's (total, count) into its type
RESULT_TYPES = {c.__name__: c for c in (ValidationResult, AccuracyResult, LossResult, ContinuousResult)}


class ValidationMethod:
    higher_is_better = True

    def __call__(self, output, target) -> ValidationResult:
        raise NotImplementedError

    def __str__(self):
        return type(self).__name__


class TopKAccuracy(ValidationMethod):
    def __init__(self, k: int):
        self.k = int(k)

    def __call__(self, output, target):
        out = np.asarray(output).reshape(len(target), -1)
        t = np.asarray(target).astype(np.int64).reshape(-1)
        k = min(self.k, out.shape[1])
        top = np.argpartition(-out, k - 1, axis=1)[:, :k] if k < out.shape[1] else np.arange(out.shape[1])[None]
        return AccuracyResult(float((top == t[:, None]).any(axis=1).sum()), len(t))

    def __str__(self):
        return f"Top{self.k}Accuracy"


class Top1Accuracy(TopKAccuracy):
    def __init__(self):
        super().__init__(1)

    def __call__(self, output, target):
        out = np.asarray(output).reshape(len(target), -1)
        t = np.asarray(target).astype(np.int64).reshape(-1)
        return AccuracyResult(float((out.argmax(axis=1) == t).sum()), len(t))


class Top5Accuracy(TopKAccuracy):
    def __init__(self):
        super().__init__(5)


class Loss(ValidationMethod):
    """The criterion's loss (default ClassNLL over log-probabilities), averaged per sample."""
    higher_is_better = False

    def __init__(self, criterion=None):
        from kindling.runtime import nn
        self.criterion = criterion or nn.ClassNLLCriterion()

    def __call__(self, output, target):
        n = len(target)
        return LossResult(float(self.criterion.forward(output, target)) * n, n)


class MAE(ValidationMethod):
    higher_is_better = False

    def __call__(self, output, target):
        d = np.abs(np.asarray(output, np.float64) - np.asarray(target, np.float64).reshape(np.shape(output)))
        return ContinuousResult(float(d.mean(axis=tuple(range(1, d.ndim))).sum()) if d.ndim > 1 else float(d.sum()),
                                len(d))
