"""Layers that combine a tensor with a learned or second-input tensor broadcast from an axis:
Bias (Caffe's Bias layer), ScaleBy (Caffe's Scale with two bottoms), Axpy (SENet's a * x + y)."""
from __future__ import annotations

import numpy as np

from .. import init
from ..module import Module
from .merge import _unbroadcast


def _aligned(t: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """``t`` reshaped to broadcast against an ``ndim``-d tensor from ``axis`` on."""
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for an input with {ndim} axes")
    axis = axis % ndim
    return t.reshape((1,) * axis + t.shape + (1,) * (ndim - axis - t.ndim))


class Bias(Module):
    def __init__(self, shape, axis: int = 1, name: str | None = None):
        super().__init__(name)
        self.shape = [int(shape)] if np.isscalar(shape) else [int(s) for s in shape]
        self.axis = int(axis)
        self.params["bias"] = init.constant(self.shape, 0.0)

    def config(self):
        return {"shape": list(self.shape), "axis": self.axis}

    def forward(self, x):
        x = np.asarray(x, np.float32)
        self.output = x + _aligned(self.params["bias"], x.ndim, self.axis)
        return self.output

    def backward(self, x, grad_out):
        g = np.asarray(grad_out, np.float32)
        if self.needs_param_grads:
            b = _aligned(self.params["bias"], g.ndim, self.axis)
            self._accumulate("bias", _unbroadcast(g, b.shape).reshape(self.shape))
        return g


class ScaleBy(Module):
    """Two inputs (x, s): y = x * s, with s broadcast over x's dims from ``axis`` on."""
    multi_input = True

    def __init__(self, axis: int = 1, name: str | None = None):
        super().__init__(name)
        self.axis = int(axis)

    def config(self):
        return {"axis": self.axis}

    def forward(self, xs):
        x, s = (np.asarray(v, np.float32) for v in xs)
        self.output = x * _aligned(s, x.ndim, self.axis)
        return self.output

    def backward(self, xs, grad_out):
        x, s = (np.asarray(v, np.float32) for v in xs)
        g = np.asarray(grad_out, np.float32)
        sa = _aligned(s, x.ndim, self.axis)
        return [g * sa, _unbroadcast(g * x, sa.shape).reshape(s.shape)]


class Axpy(Module):
    """Three inputs (a, x, y): a * x + y, a of shape (N, C) or (N, C, 1, 1) (SENet)."""
    multi_input = True

    def forward(self, xs):
        a, x, y = (np.asarray(v, np.float32) for v in xs)
        self._a = a.reshape(a.shape[:2] + (1,) * (x.ndim - 2))
        self.output = self._a * x + y
        return self.output

    def backward(self, xs, grad_out):
        a, x, y = (np.asarray(v, np.float32) for v in xs)
        g = np.asarray(grad_out, np.float32)
        ga = (g * x).sum(axis=tuple(range(2, x.ndim))).reshape(a.shape)
        return [ga, g * self._a, g]
