"""Caffe's Scale layer: y = x * weight + bias, the weight (and bias) broadcast over the input dims
axis .. axis+len(shape)-1 (per channel with the default axis 1)."""
from __future__ import annotations

import numpy as np

from .. import init
from ..module import Module


class Scale(Module):
    def __init__(self, shape, bias: bool = True, axis: int = 1, name: str | None = None):
        super().__init__(name)
        self.shape = [int(shape)] if np.isscalar(shape) else [int(s) for s in shape]
        self.has_bias, self.axis = bool(bias), int(axis)
        self.params["weight"] = init.constant(self.shape, 1.0)
        if bias:
            self.params["bias"] = init.constant(self.shape, 0.0)

    def config(self):
        return {"shape": list(self.shape), "bias": self.has_bias, "axis": self.axis}

    def _view(self, x: np.ndarray):
        if not -x.ndim <= self.axis < x.ndim:
            raise ValueError(f"Scale {self.name!r}: axis {self.axis} is out of range for an input with {x.ndim} axes")
        axis = self.axis % x.ndim
        if tuple(x.shape[axis:axis + len(self.shape)]) != tuple(self.shape):
            raise ValueError(f"Scale {self.name!r}: weight shape {self.shape} does not match input dims from axis "
                             f"{self.axis} of {x.shape}")
        return (1,) * axis + tuple(self.shape) + (1,) * (x.ndim - axis - len(self.shape)), axis

    def forward(self, x):
        x = np.asarray(x, np.float32)
        shape, _ = self._view(x)
        out = np.multiply(x, self.params["weight"].reshape(shape), out=self._buffer_like("out", x))
        if self.has_bias:
            out += self.params["bias"].reshape(shape)
        self.output = out
        return out

    def backward(self, x, grad_out):
        x = np.asarray(x, np.float32)
        g = np.asarray(grad_out, np.float32)
        shape, axis = self._view(x)
        if self.needs_param_grads:
            reduce = tuple(i for i in range(x.ndim) if not axis <= i < axis + len(self.shape))
            self._accumulate("weight", (g * x).sum(axis=reduce).reshape(self.shape))
            if self.has_bias:
                self._accumulate("bias", g.sum(axis=reduce).reshape(self.shape))
        return np.multiply(g, self.params["weight"].reshape(shape), out=self._buffer_like("grad_in", x))
