"""Caffe's elementwise layers without parameters: Power, AbsVal, BNLL."""
from __future__ import annotations

import numpy as np

from ..module import Module


class Power(Module):
    """y = (shift + scale * x) ^ power."""

    def __init__(self, power: float = 1.0, scale: float = 1.0, shift: float = 0.0, name: str | None = None):
        super().__init__(name)
        self.power, self.scale, self.shift = float(power), float(scale), float(shift)

    def config(self):
        return {"power": self.power, "scale": self.scale, "shift": self.shift}

    def forward(self, x):
        base = self.shift + self.scale * np.asarray(x, np.float32)
        self.output = base if self.power == 1.0 else np.power(base, self.power, dtype=np.float32)
        return self.output

    def backward(self, x, grad_out):
        g = np.asarray(grad_out, np.float32)
        if self.power == 1.0:
            return g * np.float32(self.scale)
        base = self.shift + self.scale * np.asarray(x, np.float32)
        return g * np.float32(self.power * self.scale) * np.power(base, self.power - 1, dtype=np.float32)


class AbsVal(Module):
    def forward(self, x):
        self.output = np.abs(np.asarray(x, np.float32))
        return self.output

    def backward(self, x, grad_out):
        return np.asarray(grad_out, np.float32) * np.sign(np.asarray(x, np.float32))


class BNLL(Module):
    """y = log(1 + exp(x)), computed without overflow."""

    def forward(self, x):
        x = np.asarray(x, np.float32)
        self.output = np.logaddexp(np.float32(0), x).astype(np.float32)
        return self.output

    def backward(self, x, grad_out):
        x = np.asarray(x, np.float32)
        sig = 0.5 * (1 + np.tanh(0.5 * x))
        return np.asarray(grad_out, np.float32) * sig.astype(np.float32)
