"""Softmax and LogSoftmax along an axis (numerically stable: the max is subtracted first)."""
from __future__ import annotations

import numpy as np

from ..module import Module


class _SoftmaxBase(Module):
    def __init__(self, axis: int = 1, name: str | None = None):
        super().__init__(name)
        self.axis = int(axis)

    def config(self):
        return {"axis": self.axis}

    def _log_softmax(self, x: np.ndarray) -> np.ndarray:
        out = self._buffer_like("out", x)
        np.subtract(x, x.max(axis=self.axis, keepdims=True), out=out)
        e = np.exp(out, out=self._buffer_like("exp", out))
        out -= np.log(e.sum(axis=self.axis, keepdims=True))
        return out


class LogSoftmax(_SoftmaxBase):
    def forward(self, x):
        self.output = self._log_softmax(np.asarray(x, np.float32))
        return self.output

    def backward(self, x, grad_out):
        g = np.asarray(grad_out, np.float32)
        gx = self._buffer_like("grad_in", g)
        np.exp(self.output, out=gx)
        gx *= -g.sum(axis=self.axis, keepdims=True)
        gx += g
        return gx


class Softmax(_SoftmaxBase):
    def forward(self, x):
        y = self._log_softmax(np.asarray(x, np.float32))
        self.output = np.exp(y, out=y)
        return self.output

    def backward(self, x, grad_out):
        g = np.asarray(grad_out, np.float32)
        y = self.output
        gx = self._buffer_like("grad_in", g)
        np.multiply(g, y, out=gx)
        gx -= y * gx.sum(axis=self.axis, keepdims=True)
        return gx
