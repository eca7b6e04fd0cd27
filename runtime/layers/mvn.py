"""Caffe's MVN: subtract the mean, and optionally divide by the standard deviation, per channel of
each image (or across all channels of each image). Caffe adds eps to the standard deviation, not
to the variance: y = (x - mean) / (std + eps)."""
from __future__ import annotations

import numpy as np

from ..module import Module


class MVN(Module):
    def __init__(self, normalize_variance: bool = True, across_channels: bool = False, eps: float = 1e-9,
                 name: str | None = None):
        super().__init__(name)
        self.normalize_variance, self.across_channels = bool(normalize_variance), bool(across_channels)
        self.eps = float(eps)

    def config(self):
        return {"normalize_variance": self.normalize_variance, "across_channels": self.across_channels,
                "eps": self.eps}

    def _groups(self, x):
        """(groups, values per group): one group per image, or per image and channel."""
        n = x.shape[0] if self.across_channels or x.ndim < 2 else x.shape[0] * x.shape[1]
        return x.reshape(n, -1)

    def forward(self, x):
        x = np.asarray(x, np.float32)
        g = self._groups(x)
        d = g - g.mean(1, keepdims=True, dtype=np.float64).astype(np.float32)
        if self.normalize_variance:
            self._std = np.sqrt(np.square(d, dtype=np.float64).mean(1, keepdims=True)).astype(np.float32)
            d /= self._std + np.float32(self.eps)
        self.output = d.reshape(x.shape)
        return self.output

    def backward(self, x, grad_out):
        g = self._groups(np.asarray(grad_out, np.float32))
        gx = g - g.mean(1, keepdims=True)
        if self.normalize_variance:
            # The exact gradient of the forward. Caffe's own backward leaves out the factor
            # (std + eps) / std on the last term: the same up to eps / std.
            y, den = self._groups(self.output), self._std + np.float32(self.eps)
            ratio = np.divide(den, self._std, out=np.zeros_like(den), where=self._std > 0)
            gx = (gx - y * (g * y).mean(1, keepdims=True) * ratio) / den
        return gx.reshape(np.shape(x))
