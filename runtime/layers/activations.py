"""Elementwise activations (ReLU, LeakyReLU, ELU, SELU, Sigmoid, Tanh, Clip/ReLU6, Swish, the
hard sigmoid and hard swish of MobileNetV3, and YOLOv4's Mish). Outputs keep the input's memory order (an NCHW view of NHWC memory
stays one), so each is a single straight pass over memory."""
from __future__ import annotations

import numpy as np

from ..module import Module, same_shape
from ..parallel import pool
from ..workspace import gradient_buffer

# Below this many elements a pass is too short to be worth handing to another thread.
_SPLIT_MIN_ELEMENTS = 1 << 17


def _split(fn, out, *arrays):
    """``fn(*slices, out_slice)`` over blocks of the leading (batch) axis, shared among kindling's
    threads: numpy's elementwise loops are single-threaded, and a big activation is memory-bound
    work that a second core speeds up."""
    if out.size < _SPLIT_MIN_ELEMENTS or out.ndim == 0 or out.shape[0] < 2:
        fn(*arrays, out)
    else:
        pool.run(out.shape[0], lambda _, lo, hi: fn(*(a[lo:hi] for a in arrays), out[lo:hi]),
                 pieces_per_thread=pool.pieces_for(out.size, _SPLIT_MIN_ELEMENTS))
    return out


class _Elementwise(Module):
    """forward computes y = f(x) into a reused buffer (or over x, for modules whose backward needs
    only y: ``runs_in_place``); backward uses x or the cached y."""
    output_shape = same_shape

    def forward(self, x, in_place: bool = False):
        x = np.asarray(x, np.float32)
        out = x if in_place and self.runs_in_place and x.flags.writeable else self._buffer_like("out", x)
        self.output = _split(self._f, out, x)
        return self.output

    def backward(self, x, grad_out):
        x = np.asarray(x, np.float32)
        g = np.asarray(grad_out, np.float32)
        return _split(self._df, gradient_buffer(self, "grad_in", x, avoid=g), x, self.output, g)


class ReLU(_Elementwise):
    runs_in_place = True  # its backward reads only y
    def _f(self, x, out):
        return np.maximum(x, 0, out=out)

    def _df(self, x, y, g, out):
        np.greater(y, 0, out=out)  # 1.0 where it passed, else 0.0: g * it, as g * (y > 0)
        return np.multiply(g, out, out=out)


class LeakyReLU(_Elementwise):
    def __init__(self, negative_slope: float = 0.01, name: str | None = None):
        super().__init__(name)
        self.negative_slope = float(negative_slope)

    def config(self):
        return {"negative_slope": self.negative_slope}

    def _f(self, x, out):
        np.multiply(x, self.negative_slope, out=out)
        return np.maximum(x, out, out=out) if self.negative_slope <= 1 else np.minimum(x, out, out=out)

    def _df(self, x, y, g, out):
        return np.multiply(g, np.where(x > 0, np.float32(1), np.float32(self.negative_slope)), out=out)


class ELU(_Elementwise):
    def __init__(self, alpha: float = 1.0, name: str | None = None):
        super().__init__(name)
        self.alpha = float(alpha)

    def config(self):
        return {"alpha": self.alpha}

    def _f(self, x, out):
        np.expm1(np.minimum(x, 0), out=out)
        out *= self.alpha
        np.copyto(out, x, where=x > 0)
        return out

    def _df(self, x, y, g, out):
        # d/dx = 1 for x > 0, else alpha * exp(x) = y + alpha
        return np.multiply(g, np.where(x > 0, np.float32(1), y + np.float32(self.alpha)), out=out)


class Sigmoid(_Elementwise):
    def _f(self, x, out):
        # 1 / (1 + exp(-x)) written via tanh: no overflow for large |x|.
        np.multiply(x, 0.5, out=out)
        np.tanh(out, out=out)
        out += 1
        out *= 0.5
        return out

    def _df(self, x, y, g, out):
        np.subtract(1, y, out=out)
        out *= y
        out *= g
        return out


class Tanh(_Elementwise):
    def _f(self, x, out):
        return np.tanh(x, out=out)

    def _df(self, x, y, g, out):
        np.multiply(y, y, out=out)
        np.subtract(1, out, out=out)
        out *= g
        return out


class SELU(_Elementwise):
    """gamma * (x if x > 0 else alpha * (exp(x) - 1)), by default with the self-normalising
    constants (ONNX's Selu takes others)."""
    ALPHA = 1.6732632423543772848170429916717
    SCALE = 1.0507009873554804934193349852946

    def __init__(self, alpha: float = ALPHA, gamma: float = SCALE, name: str | None = None):
        super().__init__(name)
        self.alpha, self.gamma = float(alpha), float(gamma)

    def config(self):
        return {"alpha": self.alpha, "gamma": self.gamma}

    def _f(self, x, out):
        np.expm1(np.minimum(x, 0), out=out)
        out *= np.float32(self.alpha)
        np.copyto(out, x, where=x > 0)
        out *= np.float32(self.gamma)
        return out

    def _df(self, x, y, g, out):
        # d/dx = gamma for x > 0, else gamma * alpha * exp(x) = y + gamma * alpha
        slope = np.where(x > 0, np.float32(self.gamma), y + np.float32(self.gamma * self.alpha))
        return np.multiply(g, slope, out=out)


class Clip(_Elementwise):
    """min(max(x, low), high), either bound optional (TensorFlow's Maximum/Minimum with a number,
    PyTorch's clamp). The gradient passes where low < x < high."""

    def __init__(self, low: float | None = None, high: float | None = None, name: str | None = None):
        super().__init__(name)
        if low is None and high is None:
            raise ValueError(f"Clip {self.name!r}: give low, high or both")
        self.low = None if low is None else float(low)
        self.high = None if high is None else float(high)
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"Clip {self.name!r}: low {self.low} is above high {self.high}")

    def config(self):
        return {"low": self.low, "high": self.high}

    def _f(self, x, out):
        return np.clip(x, self.low, self.high, out=out)

    def _inside(self, x):
        inside = np.ones(x.shape, bool) if self.low is None else x > self.low
        return inside if self.high is None else inside & (x < self.high)

    def _df(self, x, y, g, out):
        return np.multiply(g, self._inside(x), out=out)


class ReLU6(Clip):
    """min(max(x, 0), 6) (MobileNets)."""

    def __init__(self, name: str | None = None):
        super().__init__(0.0, 6.0, name=name)

    def config(self):
        return {}


class Swish(_Elementwise):
    """x * sigmoid(beta * x): SiLU with beta 1 (EfficientNet), Keras's swish."""

    def __init__(self, beta: float = 1.0, name: str | None = None):
        super().__init__(name)
        self.beta = float(beta)

    def config(self):
        return {"beta": self.beta}

    def _sigmoid(self, x, out):
        np.multiply(x, np.float32(0.5 * self.beta), out=out)
        np.tanh(out, out=out)
        out += 1
        out *= 0.5
        return out

    def _f(self, x, out):
        return np.multiply(self._sigmoid(x, out), x, out=out)

    def _df(self, x, y, g, out):
        # d/dx = s + beta * x * s * (1 - s) = s + beta * y * (1 - s), s = sigmoid(beta * x)
        s = self._sigmoid(x, np.empty_like(out))
        np.subtract(1, s, out=out)
        out *= y
        out *= np.float32(self.beta)
        out += s
        out *= g
        return out


class HardSigmoid(_Elementwise):
    """max(0, min(1, alpha * x + beta)); by default relu6(x + 3) / 6, as Keras and PyTorch define it
    (MobileNetV3); ONNX's HardSigmoid defaults to alpha 0.2."""

    def __init__(self, alpha: float = 1 / 6, beta: float = 0.5, name: str | None = None):
        super().__init__(name)
        self.alpha, self.beta = float(alpha), float(beta)

    def config(self):
        return {"alpha": self.alpha, "beta": self.beta}

    def _f(self, x, out):
        np.multiply(x, np.float32(self.alpha), out=out)
        out += np.float32(self.beta)
        return np.clip(out, 0, 1, out=out)

    def _df(self, x, y, g, out):
        return np.multiply(g, np.float32(self.alpha) * ((y > 0) & (y < 1)), out=out)


class HardSwish(_Elementwise):
    """x * relu6(x + 3) / 6 (MobileNetV3)."""

    def _f(self, x, out):
        np.add(x, np.float32(3), out=out)
        np.clip(out, 0, 6, out=out)
        out *= x
        out /= np.float32(6)
        return out

    def _df(self, x, y, g, out):
        # relu6(x + 3) / 6 + x / 6 inside (-3, 3)
        np.add(x, np.float32(3), out=out)
        np.clip(out, 0, 6, out=out)
        out += np.where((x > -3) & (x < 3), x, np.float32(0))
        out /= np.float32(6)
        out *= g
        return out


class Mish(_Elementwise):
    """x * tanh(softplus(x)) (YOLOv4)."""

    def _f(self, x, out):
        np.logaddexp(np.float32(0), x, out=out)  # softplus without overflow
        np.tanh(out, out=out)
        return np.multiply(out, x, out=out)

    def _df(self, x, y, g, out):
        # d/dx = tanh(sp) + x * (1 - tanh(sp)^2) * sigmoid(x), sp = softplus(x)
        t = np.tanh(np.logaddexp(np.float32(0), x)).astype(np.float32)
        sig = (np.float32(0.5) * (1 + np.tanh(np.float32(0.5) * x))).astype(np.float32)
        np.multiply(t, t, out=out)
        np.subtract(1, out, out=out)
        out *= sig
        out *= x
        out += t
        out *= g
        return out
