"""PReLU: y = x for x > 0, else a * x, with a learned per channel (axis 1) or shared."""
from __future__ import annotations

import numpy as np

from .. import init as initializers
from ..module import Module


class PReLU(Module):
    def __init__(self, num_parameters: int = 1, init: float = 0.25, name: str | None = None):
        super().__init__(name)
        self.num_parameters = int(num_parameters)
        self.params["weight"] = initializers.constant(self.num_parameters, init)

    def config(self):
        return {"num_parameters": self.num_parameters}

    def _slope(self, x):
        w = self.params["weight"]
        if self.num_parameters == 1:
            return w.reshape(())
        if x.ndim < 2 or x.shape[1] != self.num_parameters:
            raise ValueError(f"PReLU {self.name!r} has {self.num_parameters} slopes for input {x.shape}")
        return w.reshape((1, -1) + (1,) * (x.ndim - 2))

    def forward(self, x):
        x = np.asarray(x, np.float32)
        out = self._buffer_like("out", x)
        np.multiply(x, self._slope(x), out=out)
        np.copyto(out, x, where=x > 0)
        self.output = out
        return out

    def backward(self, x, grad_out):
        x = np.asarray(x, np.float32)
        g = np.asarray(grad_out, np.float32)
        neg = x <= 0
        if self.needs_param_grads:
            gw = np.where(neg, g * x, np.float32(0))
            if self.num_parameters == 1:
                self._accumulate("weight", np.array([gw.sum()], np.float32))
            else:
                self._accumulate("weight", gw.sum(axis=(0, *range(2, x.ndim))))
        out = self._buffer_like("grad_in", x)
        np.multiply(g, np.where(neg, self._slope(x), np.float32(1)), out=out)
        return out
