"""Fully connected layer: y = x W^T + b (weight stored as (out, in), as in PyTorch and Caffe)."""
from __future__ import annotations

import numpy as np

from .. import blas
from ..init import kaiming_uniform
from ..module import Module
from ..workspace import for_this_thread, gradient_buffer


class Linear(Module):
    backward_reads_output = False
    def __init__(self, in_features: int, out_features: int, bias: bool = True, name: str | None = None):
        super().__init__(name)
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"Linear {self.name!r}: in_features and out_features must be positive, "
                             f"got {in_features}, {out_features}")
        self.in_features, self.out_features, self.has_bias = in_features, out_features, bias
        self.params["weight"] = kaiming_uniform((out_features, in_features), fan_in=in_features)
        if bias:
            self.params["bias"] = kaiming_uniform((out_features,), fan_in=in_features)

    def config(self):
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.has_bias}

    def _flat(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 2:
            x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.in_features:
            raise ValueError(f"Linear {self.name!r} expects {self.in_features} input features, got {x.shape[1]} "
                             f"(input shape {x.shape})")
        return x

    def output_shape(self, shape) -> tuple:
        if int(np.prod(shape[1:])) != self.in_features:
            raise ValueError(f"Linear {self.name!r} expects {self.in_features} input features, got "
                             f"{int(np.prod(shape[1:]))} (input shape {tuple(shape)})")
        return (shape[0], self.out_features)

    def forward(self, x):
        x2 = self._flat(np.asarray(x, np.float32))
        y = blas.gemm(x2, self.params["weight"].T, self._buffer("out", (x2.shape[0], self.out_features)))
        if self.has_bias:
            y += self.params["bias"]
        self.output = y
        return y

    def backward(self, x, grad_out):
        x2 = self._flat(np.asarray(x, np.float32))
        g = np.asarray(grad_out, np.float32).reshape(x2.shape[0], self.out_features)
        if self.needs_param_grads:
            dw = self._accumulate_gemm("weight", g.T, x2)
            if self.has_bias:
                self._accumulate("bias", g.sum(axis=0))
        gx = blas.gemm(g, self.params["weight"], gradient_buffer(self, "grad_in", x2.shape, avoid=g))
        return gx.reshape(np.shape(x))

    def _accumulate_gemm(self, pname, a, b):
        """grads[pname] += a @ b, the product in the thread's workspace (it lives only in this call)."""
        buf = self.grads.get(pname)
        prod = blas.gemm(a, b, for_this_thread().array(f"linear_d{pname}", self.params[pname].shape))
        if buf is None:
            self.grads[pname] = prod.copy()
        else:
            buf += prod
        return prod
