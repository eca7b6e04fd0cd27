"""SSD's Normalize layer: L2-normalise across channels (per position) or across everything of an
image, then scale by a learned weight (one, or one per channel), as weiliu89/caffe defines it:
norm = sqrt(sum x^2 + eps)."""
from __future__ import annotations

import numpy as np

from .. import init
from ..module import Module


class Normalize(Module):
    def __init__(self, num_channels: int, across_spatial: bool = True, channel_shared: bool = True,
                 eps: float = 1e-10, name: str | None = None):
        super().__init__(name)
        self.num_channels, self.across_spatial = int(num_channels), bool(across_spatial)
        self.channel_shared, self.eps = bool(channel_shared), float(eps)
        self.params["weight"] = init.constant(1 if channel_shared else self.num_channels, 1.0)

    def config(self):
        return {"num_channels": self.num_channels, "across_spatial": self.across_spatial,
                "channel_shared": self.channel_shared, "eps": self.eps}

    def _axes(self, x):
        return tuple(range(1, x.ndim)) if self.across_spatial else (1,)

    def _w(self, x):
        w = self.params["weight"]
        return w.reshape(()) if self.channel_shared else w.reshape((1, -1) + (1,) * (x.ndim - 2))

    def forward(self, x):
        x = np.asarray(x, np.float32)
        self._norm = np.sqrt((x * x).sum(axis=self._axes(x), keepdims=True, dtype=np.float64) + self.eps).astype(np.float32)
        self._xn = x / self._norm
        self.output = self._xn * self._w(x)
        return self.output

    def backward(self, x, grad_out):
        x = np.asarray(x, np.float32)
        g = np.asarray(grad_out, np.float32)
        if self.needs_param_grads:
            gw = g * self._xn
            self._accumulate("weight", np.array([gw.sum()], np.float32) if self.channel_shared
                             else gw.sum(axis=(0, *range(2, x.ndim))))
        gxn = g * self._w(x)
        dot = (gxn * self._xn).sum(axis=self._axes(x), keepdims=True)
        return (gxn - self._xn * dot) / self._norm
