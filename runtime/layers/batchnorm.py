"""Batch normalisation over the channel axis of (N, C, H, W) or (N, C).

Training normalises with the batch's statistics and updates the running ones as PyTorch does
(momentum, unbiased variance); evaluate mode uses the running statistics."""
from __future__ import annotations

import numpy as np

from .. import init
from ..module import Module


class BatchNorm2d(Module):
    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 name: str | None = None):
        super().__init__(name)
        self.num_features, self.eps, self.momentum, self.affine = int(num_features), float(eps), float(momentum), affine
        if self.num_features < 1:
            raise ValueError(f"BatchNorm2d {self.name!r}: num_features must be positive, got {self.num_features}")
        if affine:
            self.params["weight"] = init.constant(self.num_features, 1.0)
            self.params["bias"] = init.constant(self.num_features, 0.0)
        self.buffers["running_mean"] = init.constant(self.num_features, 0.0)
        self.buffers["running_var"] = init.constant(self.num_features, 1.0)

    def config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum, "affine": self.affine}

    def _axes(self, x):
        if x.ndim < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm2d {self.name!r} expects (N, {self.num_features}, ...), got {x.shape}")
        return (0, *range(2, x.ndim)), (1, -1) + (1,) * (x.ndim - 2)

    def forward(self, x):
        x = np.asarray(x, np.float32)
        axes, bshape = self._axes(x)
        if self.training:
            mean = x.mean(axis=axes, dtype=np.float64)
            var = x.var(axis=axes, dtype=np.float64)
            count = x.size // self.num_features
            m = self.momentum
            self.buffers["running_mean"][...] = (1 - m) * self.buffers["running_mean"] + m * mean
            self.buffers["running_var"][...] = ((1 - m) * self.buffers["running_var"]
                                                + m * var * count / max(count - 1, 1))
        else:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
        self._inv_std = (1.0 / np.sqrt(np.asarray(var, np.float64) + self.eps)).astype(np.float32)
        self._mean = np.asarray(mean, np.float32)
        scale = self._inv_std * (self.params["weight"] if self.affine else 1)
        shift = (self.params["bias"] if self.affine else 0) - self._mean * scale
        # One fused pass: y = x * scale + shift, per channel.
        out = self._buffer_like("out", x)
        np.multiply(x, scale.reshape(bshape), out=out)
        out += shift.reshape(bshape).astype(np.float32)
        self.output = out
        return out

    def backward(self, x, grad_out):
        x = np.asarray(x, np.float32)
        g = np.asarray(grad_out, np.float32)
        axes, bshape = self._axes(x)
        inv_std, mean = self._inv_std.reshape(bshape), self._mean.reshape(bshape)
        gamma = self.params["weight"].reshape(bshape) if self.affine else np.float32(1)
        xhat = (x - mean) * inv_std
        if self.needs_param_grads and self.affine:
            self._accumulate("weight", (g * xhat).sum(axis=axes))
            self._accumulate("bias", g.sum(axis=axes))
        gx = self._buffer_like("grad_in", x)
        if not self.training:
            return np.multiply(g, gamma * inv_std, out=gx)
        count = x.size // self.num_features
        gsum = g.sum(axis=axes, keepdims=True)
        gxhat_sum = (g * xhat).sum(axis=axes, keepdims=True)
        np.multiply(g, count, out=gx)
        gx -= gsum
        gx -= xhat * gxhat_sum
        gx *= gamma * inv_std / count
        return gx
