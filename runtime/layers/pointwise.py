"""Caffe's elementwise layers without parameters: Power, Exp, Log, AbsVal, BNLL, Threshold."""
from __future__ import annotations

import numpy as np

from ..module import Module, same_shape


class Power(Module):
    """y = (shift + scale * x) ^ power."""
    output_shape = same_shape

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


def _log_base(base: float, who: str) -> float:
    """ln(base); Caffe's base -1 stands for e."""
    if base == -1.0:
        return 1.0
    if not base > 0:
        raise ValueError(f"{who}: base must be positive (or -1 for e), got {base}")
    return float(np.log(base))


class Exp(Module):
    """y = base ^ (shift + scale * x), base -1 meaning e (Caffe's Exp)."""
    output_shape = same_shape

    def __init__(self, base: float = -1.0, scale: float = 1.0, shift: float = 0.0, name: str | None = None):
        super().__init__(name)
        self.base, self.scale, self.shift = float(base), float(scale), float(shift)
        ln_base = _log_base(self.base, f"Exp {self.name!r}")
        # Caffe's split: outer_scale * exp(inner_scale * x), so a shift costs one constant, not a pass.
        self._inner_scale = np.float32(ln_base * self.scale)
        self._outer_scale = np.float32(np.exp(ln_base * self.shift))

    def config(self):
        return {"base": self.base, "scale": self.scale, "shift": self.shift}

    def forward(self, x):
        out = np.multiply(np.asarray(x, np.float32), self._inner_scale, out=self._buffer_like("out", np.asarray(x)))
        np.exp(out, out=out)
        self.output = np.multiply(out, self._outer_scale, out=out)
        return self.output

    def backward(self, x, grad_out):
        # dy/dx = inner_scale * y: the cached output is all it needs.
        return np.asarray(grad_out, np.float32) * self.output * self._inner_scale


class Log(Module):
    """y = log_base(shift + scale * x), base -1 meaning e (Caffe's Log)."""
    output_shape = same_shape

    def __init__(self, base: float = -1.0, scale: float = 1.0, shift: float = 0.0, name: str | None = None):
        super().__init__(name)
        self.base, self.scale, self.shift = float(base), float(scale), float(shift)
        self._ln_base = np.float32(_log_base(self.base, f"Log {self.name!r}"))
        if self._ln_base == 0:
            raise ValueError(f"Log {self.name!r}: base 1 has no logarithm")

    def config(self):
        return {"base": self.base, "scale": self.scale, "shift": self.shift}

    def _inner(self, x):
        return self.shift + self.scale * np.asarray(x, np.float32)

    def forward(self, x):
        out = np.log(self._inner(x), out=self._buffer_like("out", np.asarray(x)))
        self.output = np.divide(out, self._ln_base, out=out)
        return self.output

    def backward(self, x, grad_out):
        return np.asarray(grad_out, np.float32) * (np.float32(self.scale) / self._ln_base) / self._inner(x)


class Threshold(Module):
    """y = 1 where x > threshold, else 0 (Caffe's Threshold, which has no backward)."""
    output_shape = same_shape

    def __init__(self, threshold: float = 0.0, name: str | None = None):
        super().__init__(name)
        self.threshold = float(threshold)

    def config(self):
        return {"threshold": self.threshold}

    def forward(self, x):
        x = np.asarray(x, np.float32)
        self.output = np.greater(x, np.float32(self.threshold), out=self._buffer_like("out", x))
        return self.output

    def backward(self, x, grad_out):
        raise RuntimeError(f"Threshold {self.name!r} is not differentiable (Caffe defines no backward for it)")


class AbsVal(Module):
    output_shape = same_shape
    def forward(self, x):
        self.output = np.abs(np.asarray(x, np.float32))
        return self.output

    def backward(self, x, grad_out):
        return np.asarray(grad_out, np.float32) * np.sign(np.asarray(x, np.float32))


class BNLL(Module):
    """y = log(1 + exp(x)), computed without overflow."""
    output_shape = same_shape

    def forward(self, x):
        x = np.asarray(x, np.float32)
        self.output = np.logaddexp(np.float32(0), x).astype(np.float32)
        return self.output

    def backward(self, x, grad_out):
        x = np.asarray(x, np.float32)
        sig = 0.5 * (1 + np.tanh(0.5 * x))
        return np.asarray(grad_out, np.float32) * sig.astype(np.float32)
