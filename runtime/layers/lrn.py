"""Local response normalisation, Caffe's two regions.

across channels (Caffe ACROSS_CHANNELS, PyTorch LocalResponseNorm):
    y = x / (k + alpha/size * sum_{c' in window(c)} x_{c'}^2) ^ beta
within a channel (Caffe WITHIN_CHANNEL): the sum runs over a size x size spatial window
(zero-padded, divisor size^2), and k is 1 in Caffe.

Across channels, the window sum is ``size`` shifted adds along the channel axis, done channels-last
(the NHWC memory a convolution hands on) in bands of rows shared among kindling's threads; the
within-channel sums are running sums (a cumulative sum along each spatial axis).
"""
from __future__ import annotations

import numpy as np

from ..module import Module
from ..parallel import pool


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


def _shifted_sum(a: np.ndarray, out: np.ndarray, before: int, after: int) -> None:
    """out[..., c] = sum of a[..., c - before .. c + after] along the last axis (zeros beyond)."""
    np.copyto(out, a)
    for d in range(1, before + 1):
        out[..., d:] += a[..., :-d]
    for d in range(1, after + 1):
        out[..., :-d] += a[..., d:]


def _power(s: np.ndarray, exponent: float, out: np.ndarray) -> np.ndarray:
    """s ** exponent; the usual LRN exponents by square roots, several times faster than pow."""
    if exponent == -0.75:  # AlexNet, CaffeNet, GoogLeNet: 1 / (sqrt(s) * s^(1/4))
        np.sqrt(s, out=out)
        np.multiply(out, np.sqrt(out), out=out)
        return np.reciprocal(out, out=out)
    if exponent == -1.75:  # its backward: s^-0.75 / s
        _power(s, -0.75, out)
        return np.divide(out, s, out=out)
    return np.power(s, np.float32(exponent), out=out)


def _bands(x4: np.ndarray, fn) -> None:
    """Runs ``fn(index)`` over bands of (image, rows) of an (N, H, W, C) array among the threads."""
    n, h = x4.shape[:2]
    if n >= 2 * pool.max_threads:
        pool.run(n, lambda _, lo, hi: fn(np.s_[lo:hi]))
    else:
        pool.run(n * h, lambda _, lo, hi: [fn(np.s_[i, max(lo - i * h, 0):min(hi - i * h, h)])
                                           for i in range(lo // h, -(-hi // h))])


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

    def forward(self, x):
        x = np.asarray(x, np.float32)
        if self.region == "within":
            self._scale = self.k + self.alpha * self._within_sum(x * x)
            self.output = x * self._scale ** -self.beta
            return self.output
        if x.ndim != 4:
            raise ValueError(f"LocalResponseNorm {self.name!r} expects (N, C, H, W), got {x.shape}")
        xh = x.transpose(0, 2, 3, 1)
        scale = self._buffer("scale", xh.shape)
        out = self._buffer("out", xh.shape)
        before, after = self.size // 2, (self.size - 1) // 2
        a, k = np.float32(self.alpha / self.size), np.float32(self.k)

        def band(i):
            sq = np.multiply(xh[i], xh[i], out=out[i])
            _shifted_sum(sq, scale[i], before, after)
            scale[i] *= a
            scale[i] += k
            np.multiply(xh[i], _power(scale[i], -self.beta, out[i]), out=out[i])
        _bands(xh, band)
        self._scale = scale
        self.output = out.transpose(0, 3, 1, 2)
        return self.output

    def backward(self, x, grad_out):
        # dy_i/dx_j = delta_ij s_i^-b - 2 b alpha/n x_i x_j s_i^(-b-1) for j in window(i). The
        # gradient therefore needs the *transposed* window sum: the same sum with the window
        # mirrored (before and after swapped), which matters for even sizes only.
        x = np.asarray(x, np.float32)
        g = np.asarray(grad_out, np.float32)
        if self.region == "within":
            t = g * x * self._scale ** (-self.beta - 1)
            back = self._within_sum(t, mirrored=True)
            return g * self._scale ** -self.beta - 2 * self.beta * self.alpha * x * back
        xh, gh, scale = x.transpose(0, 2, 3, 1), g.transpose(0, 2, 3, 1), self._scale
        out = self._buffer("grad_in", xh.shape)
        tmp = self._buffer("tmp", xh.shape)
        before, after = self.size // 2, (self.size - 1) // 2
        c = np.float32(2 * self.beta * self.alpha / self.size)

        def band(i):
            t = _power(scale[i], -self.beta - 1, tmp[i])
            t *= gh[i]
            t *= xh[i]
            _shifted_sum(t, out[i], after, before)
            out[i] *= xh[i]
            out[i] *= -c
            np.multiply(gh[i], _power(scale[i], -self.beta, tmp[i]), out=tmp[i])
            out[i] += tmp[i]
        _bands(xh, band)
        return out.transpose(0, 3, 1, 2)

    def _within_sum(self, a, mirrored: bool = False):
        if mirrored and self.size % 2 == 0:
            return np.flip(self._within_sum(np.flip(a, axis=(2, 3))), axis=(2, 3))
        return _window_sum(_window_sum(a, 2, self.size), 3, self.size) / (self.size * self.size)
