"""Loss functions: ``forward(input, target) -> float`` and ``backward(input, target) -> grad``.

Targets are 0-based class indices (as in PyTorch; BigDL's were 1-based)."""
from __future__ import annotations

import numpy as np

from ..module import Module


class _Criterion(Module):
    def __init__(self, size_average: bool = True, name: str | None = None):
        super().__init__(name)
        self.size_average = bool(size_average)

    def config(self):
        return {"size_average": self.size_average}


class ClassNLLCriterion(_Criterion):
    """Negative log-likelihood of the target class, given log-probabilities (N, C) or (N, C, ...).
    With class weights the mean divides by the sum of the targets' weights, as PyTorch does."""

    def __init__(self, weights=None, size_average: bool = True, name: str | None = None):
        super().__init__(size_average, name)
        self.weights = None if weights is None else np.asarray(weights, np.float32)

    def config(self):
        return {"weights": None if self.weights is None else self.weights.tolist(), "size_average": self.size_average}

    def _check(self, x, target):
        x = np.asarray(x, np.float32)
        t = np.asarray(target).astype(np.int64).reshape(x.shape[0], *x.shape[2:])
        if t.size and (t.min() < 0 or t.max() >= x.shape[1]):
            raise ValueError(f"{type(self).__name__} {self.name!r}: targets must be class indices in "
                             f"[0, {x.shape[1]}), got {t.min()}..{t.max()}")
        w = np.ones(t.shape, np.float32) if self.weights is None else self.weights[t]
        return x, t, w

    def _picked(self, x, t):
        return np.take_along_axis(x, t[:, None], axis=1)[:, 0]

    def forward(self, x, target):
        x, t, w = self._check(x, target)
        loss = -(self._picked(x, t) * w).sum(dtype=np.float64)
        if self.size_average:
            loss /= max(float(w.sum(dtype=np.float64)), 1e-12)
        self.output = float(loss)
        return self.output

    def backward(self, x, target):
        x, t, w = self._check(x, target)
        g = self._buffer("grad_in", x.shape)
        g.fill(0)
        scale = -w / (float(w.sum(dtype=np.float64)) if self.size_average else 1.0)
        np.put_along_axis(g, t[:, None], scale[:, None].astype(np.float32), axis=1)
        return g


class CrossEntropyCriterion(ClassNLLCriterion):
    """LogSoftmax over axis 1 followed by ClassNLL, on raw scores."""

    def _log_softmax(self, x):
        x = np.asarray(x, np.float32)
        z = x - x.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    def forward(self, x, target):
        return super().forward(self._log_softmax(x), target)

    def backward(self, x, target):
        logp = self._log_softmax(x)
        g = super().backward(logp, target)
        # d/dx of NLL(logsoftmax(x)) = g - softmax(x) * sum(g over classes)
        return g - np.exp(logp) * g.sum(axis=1, keepdims=True)


class MSECriterion(_Criterion):
    def forward(self, x, target):
        d = np.asarray(x, np.float32) - np.asarray(target, np.float32)
        loss = float(np.square(d, dtype=np.float64).sum())
        self.output = loss / d.size if self.size_average else loss
        return self.output

    def backward(self, x, target):
        d = np.asarray(x, np.float32) - np.asarray(target, np.float32)
        return d * np.float32(2.0 / d.size if self.size_average else 2.0)


class ProbClassNLLCriterion(ClassNLLCriterion):
    """ClassNLL on probabilities (a Softmax's output): their log, floored at 1e-30, taken first."""
    FLOOR = 1e-30

    def forward(self, x, target):
        return super().forward(np.log(np.maximum(np.asarray(x, np.float32), self.FLOOR)), target)

    def backward(self, x, target):
        x = np.maximum(np.asarray(x, np.float32), self.FLOOR)
        return super().backward(np.log(x), target) / x
