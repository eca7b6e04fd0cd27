"""Local response normalisation, Caffe's two regions.

across channels (Caffe ACROSS_CHANNELS, PyTorch LocalResponseNorm):
    y = x / (k + alpha/size * sum_{c' in window(c)} x_{c'}^2) ^ beta
within a channel (Caffe WITHIN_CHANNEL): the sum runs over a size x size spatial window
(zero-padded, divisor size^2), and k is 1 in Caffe.
The window sums are running sums (a cumulative sum along the axis), not a loop over channels.
"""
from __future__ import annotations

import numpy as np

from ..module import Module


def _window_sum(a: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Sum over a centred window of ``size`` along ``axis`` (zeros beyond the edges). Caffe takes
    odd sizes only; an even one is placed as PyTorch does: size // 2 before, (size - 1) // 2 after."""
    before, after = size // 2, (size - 1) // 2
    pad = [(0, 0)] * a.ndim
    pad[axis] = (before + 1, after)
    c = np.cumsum(np.pad(a, pad), axis=axis, dtype=np.float64)
    n = a.shape[axis]
    hi = np.take(c, np.arange(size, size + n), axis=axis)
    lo = np.take(c, np.arange(0, n), axis=axis)
    return (hi - lo).astype(np.float32)


class LocalResponseNorm(Module):
    REGIONS = ("across", "within")

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, region: str = "across",
                 name: str | None = None):
        super().__init__(name)
        if region not in self.REGIONS:
            raise ValueError(f"LocalResponseNorm {self.name!r}: region must be one of {self.REGIONS}, got {region!r}")
        if size <= 0:
            raise ValueError(f"LocalResponseNorm {self.name!r}: size must be positive, got {size}")
        self.size, self.alpha, self.beta, self.k, self.region = int(size), float(alpha), float(beta), float(k), region

    def config(self):
        return {"size": self.size, "alpha": self.alpha, "beta": self.beta, "k": self.k, "region": self.region}

    def _sum(self, a):
        if self.region == "across":
            return _window_sum(a, 1, self.size) / self.size
        return _window_sum(_window_sum(a, 2, self.size), 3, self.size) / (self.size * self.size)

    def forward(self, x):
        x = np.asarray(x, np.float32)
        self._scale = self.k + self.alpha * self._sum(x * x)
        self.output = x * self._scale ** -self.beta
        return self.output

    def backward(self, x, grad_out):
        x = np.asarray(x, np.float32)
        g = np.asarray(grad_out, np.float32)
        # dy_i/dx_j = delta_ij s_i^-b - 2 b alpha/n x_i x_j s_i^(-b-1) for j in window(i); the window
        # relation is symmetric for odd sizes, and _sum's transpose is itself for them (even
        # sizes: the window is mirrored, handled by flipping the axis around the sum).
        t = g * x * self._scale ** (-self.beta - 1)
        back = self._sum_transposed(t)
        return g * self._scale ** -self.beta - 2 * self.beta * self.alpha * x * back

    def _sum_transposed(self, a):
        if self.size % 2:
            return self._sum(a)
        axes = (1,) if self.region == "across" else (2, 3)
        return np.flip(self._sum(np.flip(a, axis=axes)), axis=axes)
