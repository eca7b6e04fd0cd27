"""Transposed convolution (Caffe's Deconvolution): the gradient of a convolution w.r.t. its input.

Weight (in, out/groups, kh, kw), as in PyTorch and Caffe. Forward: for each kernel offset, one
GEMM of the NHWC input with that offset's weights, added at stride into the output (a col2im
without the column matrix); a kernel of whole strides (FCN's upsampling) takes one GEMM and one
plane-sized add per stride x stride block of offsets instead. Backward reads the output gradient
back at the same offsets.
"""
from __future__ import annotations

import numpy as np

from .. import blas
from ..init import kaiming_uniform
from ..module import Module
from .conv2d import _Shape, pair


class ConvTranspose2d(Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, output_padding=0,
                 groups: int = 1, bias: bool = True, dilation=1, name: str | None = None):
        super().__init__(name)
        self.kernel_size = pair(kernel_size, "kernel_size", self.name)
        self.stride = pair(stride, "stride", self.name)
        self.padding = pair(padding, "padding", self.name)
        self.output_padding = pair(output_padding, "output_padding", self.name)
        self.dilation = pair(dilation, "dilation", self.name)
        if in_channels <= 0 or out_channels <= 0 or groups <= 0 or in_channels % groups or out_channels % groups:
            raise ValueError(f"ConvTranspose2d {self.name!r}: in_channels ({in_channels}) and out_channels "
                             f"({out_channels}) must be positive and divisible by groups ({groups})")
        if min(self.kernel_size + self.stride + self.dilation) <= 0 or min(self.padding + self.output_padding) < 0:
            raise ValueError(f"ConvTranspose2d {self.name!r}: kernel, stride and dilation must be positive and "
                             f"padding >= 0")
        if any(op >= max(s, d) for op, s, d in zip(self.output_padding, self.stride, self.dilation)):
            raise ValueError(f"ConvTranspose2d {self.name!r}: output_padding {self.output_padding} must be smaller "
                             f"than stride or dilation")
        self.in_channels, self.out_channels, self.groups, self.has_bias = in_channels, out_channels, groups, bias
        kh, kw = self.kernel_size
        fan_in = out_channels // groups * kh * kw  # PyTorch's choice for transposed convolutions
        self.params["weight"] = kaiming_uniform((in_channels, out_channels // groups, kh, kw), fan_in=fan_in)
        if bias:
            self.params["bias"] = kaiming_uniform((out_channels,), fan_in=fan_in)

    def config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding),
                "output_padding": list(self.output_padding), "groups": self.groups, "bias": self.has_bias,
                "dilation": list(self.dilation)}

    def output_shape(self, shape) -> tuple:
        n, _, _, _, out = self._geometry(_Shape(shape))
        return (n, self.out_channels, *out)

    def _geometry(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ConvTranspose2d {self.name!r} expects (N, {self.in_channels}, H, W), got {x.shape}")
        n, _, h, w = x.shape
        full = [(size - 1) * s + d * (k - 1) + 1 + op for size, s, d, k, op in
                zip((h, w), self.stride, self.dilation, self.kernel_size, self.output_padding)]
        out = [f - 2 * p for f, p in zip(full, self.padding)]
        if min(out) <= 0:
            raise ValueError(f"ConvTranspose2d {self.name!r}: padding {self.padding} leaves no output for {h}x{w}")
        return n, h, w, full, out

    def _offset(self, a, i, j, h, w):
        (sh, sw), (dh, dw) = self.stride, self.dilation
        return a[:, i * dh:i * dh + sh * (h - 1) + 1:sh, j * dw:j * dw + sw * (w - 1) + 1:sw]

    def _weight(self, i, j, gi):
        """(Cin/G, Cout/G) weights of kernel offset (i, j), group gi."""
        cig = self.in_channels // self.groups
        return self.params["weight"][gi * cig:(gi + 1) * cig, :, i, j]

    def _tiles(self) -> bool:
        """Whether the kernel is whole strides (FCN's 4 by 2, 16 by 8): its offsets then make
        (kernel / stride)^2 blocks of stride x stride pixels each, added in one pass apiece."""
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        return self.dilation == (1, 1) and self.groups == 1 and kh % sh == 0 and kw % sw == 0

    def _add_tiled(self, x2, yf, n, h, w) -> None:
        """One GEMM per block of stride x stride kernel offsets, whose result, read as (N, H, sh,
        W, sw, C), is an (H * sh, W * sw) plane added at the block's offset."""
        (kh, kw), (sh, sw), c = self.kernel_size, self.stride, self.out_channels
        weight = self.params["weight"].transpose(0, 2, 3, 1)  # (Cin, kh, kw, Cout)
        cols = self._buffer("cols", (n * h * w, sh * sw * c))
        for bh in range(kh // sh):
            for bw in range(kw // sw):
                block = weight[:, bh * sh:(bh + 1) * sh, bw * sw:(bw + 1) * sw].reshape(self.in_channels, -1)
                blas.gemm(x2, np.ascontiguousarray(block), cols)
                plane = cols.reshape(n, h, w, sh, sw, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h * sh, w * sw, c)
                yf[:, bh * sh:bh * sh + h * sh, bw * sw:bw * sw + w * sw] += plane

    def forward(self, x):
        x = np.asarray(x, np.float32)
        n, h, w, full, out = self._geometry(x)
        g, cig, cog = self.groups, self.in_channels // self.groups, self.out_channels // self.groups
        x2 = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).reshape(n * h * w, self.in_channels)
        yf = self._buffer("full", (n, *full, self.out_channels))
        yf.fill(0)
        kh, kw = self.kernel_size
        if self._tiles():
            self._add_tiled(x2, yf, n, h, w)
        else:
            slab = self._buffer("slab", (n * h * w, self.out_channels))
            for i in range(kh):
                for j in range(kw):
                    for gi in range(g):
                        blas.gemm(x2[:, gi * cig:(gi + 1) * cig], self._weight(i, j, gi),
                                  slab[:, gi * cog:(gi + 1) * cog])
                    self._offset(yf, i, j, h, w)[...] += slab.reshape(n, h, w, self.out_channels)
        (ph, pw) = self.padding
        y = yf[:, ph:ph + out[0], pw:pw + out[1]]
        if self.has_bias:
            y += self.params["bias"]
        self.output = y.transpose(0, 3, 1, 2)
        return self.output

    def backward(self, x, grad_out):
        x = np.asarray(x, np.float32)
        n, h, w, full, out = self._geometry(x)
        g, cig, cog = self.groups, self.in_channels // self.groups, self.out_channels // self.groups
        x2 = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).reshape(n * h * w, self.in_channels)
        gf = self._buffer("gfull", (n, *full, self.out_channels))
        gf.fill(0)
        (ph, pw) = self.padding
        gh = np.asarray(grad_out, np.float32).transpose(0, 2, 3, 1)
        gf[:, ph:ph + out[0], pw:pw + out[1]] = gh
        gx = self._buffer("grad_in", (n * h * w, self.in_channels))
        gx.fill(0)
        window = self._buffer("window", (n * h * w, self.out_channels))
        want = self.needs_param_grads
        dw = np.zeros_like(self.params["weight"]) if want else None
        kh, kw = self.kernel_size
        for i in range(kh):
            for j in range(kw):
                np.copyto(window.reshape(n, h, w, self.out_channels), self._offset(gf, i, j, h, w))
                for gi in range(g):
                    wsl = window[:, gi * cog:(gi + 1) * cog]
                    blas.gemm(wsl, self._weight(i, j, gi).T, gx[:, gi * cig:(gi + 1) * cig], accumulate=True)
                    if want:
                        dw[gi * cig:(gi + 1) * cig, :, i, j] = blas.gemm(x2[:, gi * cig:(gi + 1) * cig].T, wsl)
        if want:
            self._accumulate("weight", dw)
            if self.has_bias:
                self._accumulate("bias", gh.sum(axis=(0, 1, 2)))
        return gx.reshape(n, h, w, self.in_channels).transpose(0, 3, 1, 2)
