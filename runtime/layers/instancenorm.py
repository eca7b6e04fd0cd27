"""Instance normalisation: each (image, channel) plane normalised by its own mean and (biased)
variance, then scaled and shifted per channel (ONNX InstanceNormalization, PyTorch InstanceNorm2d
with affine weights; the same in training and evaluate mode, no running statistics)."""
from __future__ import annotations

import numpy as np

from ..module import Module


class InstanceNorm(Module):
    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True, name: str | None = None):
        super().__init__(name)
        self.num_features, self.eps, self.affine = int(num_features), float(eps), bool(affine)
        if affine:
            self.params["weight"] = np.ones(self.num_features, np.float32)
            self.params["bias"] = np.zeros(self.num_features, np.float32)

    def config(self):
        return {"num_features": self.num_features, "eps": self.eps, "affine": self.affine}

    def _check(self, x):
        if x.ndim < 3 or x.shape[1] != self.num_features:
            raise ValueError(f"InstanceNorm {self.name!r} expects (N, {self.num_features}, ...), got {x.shape}")
        return tuple(range(2, x.ndim)), (1, -1) + (1,) * (x.ndim - 2)

    def forward(self, x):
        x = np.asarray(x, np.float32)
        axes, bshape = self._check(x)
        mean = x.mean(axis=axes, keepdims=True, dtype=np.float64)
        var = x.var(axis=axes, keepdims=True, dtype=np.float64)
        self._inv_std = (1.0 / np.sqrt(var + self.eps)).astype(np.float32)
        self._xhat = ((x - mean.astype(np.float32)) * self._inv_std).astype(np.float32)
        y = self._xhat
        if self.affine:
            y = y * self.params["weight"].reshape(bshape) + self.params["bias"].reshape(bshape)
        self.output = y.astype(np.float32, copy=False)
        return self.output

    def backward(self, x, grad_out):
        x = np.asarray(x, np.float32)
        axes, bshape = self._check(x)
        g = np.asarray(grad_out, np.float32)
        if self.affine and self.needs_param_grads:
            self._accumulate("weight", (g * self._xhat).sum(axis=(0, *axes)))
            self._accumulate("bias", g.sum(axis=(0, *axes)))
        gxhat = g * self.params["weight"].reshape(bshape) if self.affine else g
        count = int(np.prod([x.shape[a] for a in axes]))
        return (self._inv_std / count * (count * gxhat - gxhat.sum(axis=axes, keepdims=True)
                                          - self._xhat * (gxhat * self._xhat).sum(axis=axes, keepdims=True))
                ).astype(np.float32)
