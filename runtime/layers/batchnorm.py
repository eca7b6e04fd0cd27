"""Batch normalisation over the channel axis of (N, C, ...) inputs: (N, C, H, W), (N, C) or more axes.

Training normalises with the batch's statistics and updates the running ones as PyTorch does
(momentum, unbiased variance); evaluate mode uses the running statistics. The passes over the data
(statistics, output, the gradient's two sums and the input gradient) are runtime/channelwise.py's,
which reads either memory order in place (an NCHW view of Conv2d's NHWC output stays one) and
splits the work among kindling's threads."""
from __future__ import annotations

import numpy as np

from .. import init
from ..channelwise import Layout, affine, combine, grad_sums, moments
from ..module import Module
from ..workspace import gradient_buffer

# Channels whose mean is at most NEAR standard deviations from zero are normalised as x * scale +
# shift (PyTorch's form, one numpy call per block fewer than (x - mean) * scale + bias): rounding
# then costs at most about (1 + NEAR) float32 epsilons of the output's spread. A layer with a
# channel further out subtracts its mean first, which keeps large-mean inputs exact.
NEAR = 8.0


class BatchNorm2d(Module):
    backward_reads_output = False  # backward reads x and the statistics: a ReLU after it may run over the output
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

    def _laid_out(self, x) -> tuple[np.ndarray, Layout]:
        """``x`` and its Layout; a strided slice in neither memory order is copied first."""
        x = np.asarray(x, np.float32)
        if x.ndim < 2 or x.shape[1] != self.num_features or x.size == 0:
            raise ValueError(f"BatchNorm2d {self.name!r} expects a non-empty (N, {self.num_features}, ...), "
                             f"got {x.shape}")
        lay = Layout.of(x)
        if lay is None:
            buf = self._buffer("x", x.shape)
            np.copyto(buf, x)
            x, lay = buf, Layout.of(buf)
        return x, lay

    def _gamma(self) -> np.ndarray:
        return self.params["weight"].astype(np.float64) if self.affine else np.ones(self.num_features)

    def forward(self, x):
        x, lay = self._laid_out(x)
        out = self._buffer_like("out", x)
        if self.training:
            center, mean, var = moments(lay, x)
            count, m = x.size // self.num_features, self.momentum
            self.buffers["running_mean"][...] = (1 - m) * self.buffers["running_mean"] + m * mean
            self.buffers["running_var"][...] = ((1 - m) * self.buffers["running_var"]
                                                + m * var * count / max(count - 1, 1))
        else:
            mean, var = self.buffers["running_mean"].astype(np.float64), self.buffers["running_var"]
        self._inv_std = 1.0 / np.sqrt(np.asarray(var, np.float64) + self.eps)
        scale = self._inv_std * self._gamma()
        bias = self.params["bias"] if self.affine else 0.0
        self._mean = np.asarray(mean, np.float64)
        # the float32 centre the passes subtract, or None where every channel's mean is near zero
        # against its spread (evaluate mode: the running mean, for the parameter gradients)
        near = np.all(np.abs(self._mean) * self._inv_std <= NEAR)
        self._center = None if near else center if self.training else self._mean.astype(np.float32)
        if self._center is None or not self.training:  # x * scale + shift, as PyTorch computes it
            self.output = affine(lay, x, out, scale, bias - self._mean * scale)
        else:  # (x - center) * scale + bias - (mean - center) * scale
            self.output = affine(lay, x, out, scale, bias - (self._mean - self._center) * scale, self._center)
        return self.output

    def backward(self, x, grad_out):
        x, lay = self._laid_out(x)
        g = np.asarray(grad_out, np.float32)
        if g.shape != x.shape:
            raise ValueError(f"BatchNorm2d {self.name!r}: grad_out has shape {g.shape}, input {x.shape}")
        if not lay.fits(g):  # the other memory order: read it in x's
            buf = self._buffer_like("grad_out", x)
            np.copyto(buf, g)
            g = buf
        want_params = self.needs_param_grads and self.affine
        want_input = self.propagate_down
        g_scale = self._gamma() * self._inv_std
        centered = self._center is not None
        if want_params or (want_input and self.training):
            center = self._center if centered else self._mean
            g_sum, gd_sum = grad_sums(lay, g, x, center, subtract=centered)  # sum(g), sum(g * (x - center))
            if centered:  # about the batch mean
                gd_sum = gd_sum - (self._mean - center) * g_sum
            if want_params:
                self._accumulate("weight", gd_sum * self._inv_std)  # sum(g * xhat)
                self._accumulate("bias", g_sum)
        if not want_input:
            return None
        gx = gradient_buffer(self, "grad_in", x, avoid=grad_out)
        if not self.training:
            return affine(lay, g, gx, g_scale)
        # gx = gamma * inv_std * (g - mean(g) - xhat * mean(g * xhat)), as per-channel coefficients
        count = x.size // self.num_features
        x_scale = -g_scale * self._inv_std ** 2 * gd_sum / count
        shift = -g_scale * g_sum / count
        if centered:  # (x - center) * x_scale stands for (x - mean) * x_scale
            return combine(lay, g, x, gx, g_scale, x_scale, shift - (self._mean - self._center) * x_scale,
                           self._center)
        return combine(lay, g, x, gx, g_scale, x_scale, shift - self._mean * x_scale)
