"""Max and average pooling with padding, Caffe's ceil rounding, count_include_pad and global pooling.

Work happens in NHWC (the memory order a Conv2d output already has): one strided view per kernel
offset, so a k x k window costs k*k vectorized passes, never a loop over pixels. Images are shared
among kindling's threads (numpy's loops are single-threaded).
"""
from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..module import Module
from ..parallel import pool
from .conv2d import pair


def pooled_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool) -> int:
    """Caffe's and PyTorch's rule: ceil rounding, but the last window must start inside the
    input or its left padding."""
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return max(out, 1) if span >= 0 else 0


class _Pool2d(Module):
    pad_value = 0.0

    def __init__(self, kernel_size=None, stride=None, padding=0, ceil_mode: bool = False,
                 global_pooling: bool = False, name: str | None = None):
        super().__init__(name)
        if kernel_size is None and not global_pooling:
            raise ValueError(f"{type(self).__name__} {self.name!r}: kernel_size is required unless global_pooling")
        self.kernel_size = pair(kernel_size, "kernel_size", self.name) if kernel_size is not None else None
        self.stride = pair(stride, "stride", self.name) if stride is not None else self.kernel_size
        self.padding = pair(padding, "padding", self.name)
        self.ceil_mode, self.global_pooling = bool(ceil_mode), bool(global_pooling)
        if self.kernel_size and any(p >= k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{type(self).__name__} {self.name!r}: padding {self.padding} must be smaller than "
                             f"the kernel {self.kernel_size}")

    def config(self):
        return {"kernel_size": list(self.kernel_size) if self.kernel_size else None,
                "stride": list(self.stride) if self.stride else None, "padding": list(self.padding),
                "ceil_mode": self.ceil_mode, "global_pooling": self.global_pooling}

    def geometry(self, h: int, w: int):
        """(kernel, stride, padding, output size) for an h x w input."""
        if self.global_pooling:
            return (h, w), (1, 1), (0, 0), (1, 1)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        oh, ow = pooled_size(h, kh, sh, ph, self.ceil_mode), pooled_size(w, kw, sw, pw, self.ceil_mode)
        if oh <= 0 or ow <= 0:
            raise ValueError(f"{type(self).__name__} {self.name!r}: input {h}x{w} is smaller than the kernel "
                             f"{kh}x{kw}")
        return (kh, kw), (sh, sw), (ph, pw), (oh, ow)

    def output_shape(self, shape) -> tuple:
        if len(shape) != 4:
            raise ValueError(f"{type(self).__name__} {self.name!r} expects (N, C, H, W), got {tuple(shape)}")
        _, _, _, o = self.geometry(shape[2], shape[3])
        return (shape[0], shape[1], *o)

    def _padded(self, xh: np.ndarray, k, s, p, o) -> np.ndarray:
        """NHWC input with the borders the windows need (left/top padding, and on the right/bottom
        whatever ceil mode's last window reaches past), filled with pad_value."""
        n, h, w, c = xh.shape
        hp = max(h + 2 * p[0], (o[0] - 1) * s[0] + k[0])
        wp = max(w + 2 * p[1], (o[1] - 1) * s[1] + k[1])
        if (hp, wp) == (h, w):
            return xh
        buf = self._scratch.get("xpad")
        if buf is None or buf.shape != (n, hp, wp, c):
            buf = self._scratch["xpad"] = np.full((n, hp, wp, c), self.pad_value, np.float32)
        pool.run(n, lambda _, lo, hi: np.copyto(buf[lo:hi, p[0]:p[0] + h, p[1]:p[1] + w], xh[lo:hi]))
        return buf

    @staticmethod
    def _offset(xp: np.ndarray, i: int, j: int, s, o) -> np.ndarray:
        """The (N, OH, OW, C) view of every window's element at kernel offset (i, j)."""
        return xp[:, i:i + s[0] * (o[0] - 1) + 1:s[0], j:j + s[1] * (o[1] - 1) + 1:s[1]]

    def forward(self, x):
        x = np.asarray(x, np.float32)
        if x.ndim != 4:
            raise ValueError(f"{type(self).__name__} {self.name!r} expects (N, C, H, W), got {x.shape}")
        n, c, h, w = x.shape
        k, s, p, o = self.geometry(h, w)
        xp = self._padded(x.transpose(0, 2, 3, 1), k, s, p, o)
        out = self._buffer("out", (n, o[0], o[1], c))
        pool.run(n, lambda _, lo, hi: self._pool(xp[lo:hi], out[lo:hi], k, s, p, o, (h, w)))
        self.output = out.transpose(0, 3, 1, 2)
        return self.output

    def backward(self, x, grad_out):
        x = np.asarray(x, np.float32)
        n, c, h, w = x.shape
        k, s, p, o = self.geometry(h, w)
        xp = self._padded(x.transpose(0, 2, 3, 1), k, s, p, o)
        g = np.asarray(grad_out, np.float32).transpose(0, 2, 3, 1)
        dxp = self._buffer("dxpad", xp.shape)
        self._unpool(xp, g, dxp, k, s, p, o, (h, w))
        return dxp[:, p[0]:p[0] + h, p[1]:p[1] + w].transpose(0, 3, 1, 2)


class MaxPool2d(_Pool2d):
    pad_value = -np.inf

    def _pool(self, xp, out, k, s, p, o, hw):
        n, hp, wp, c = xp.shape
        if k == s and hp == o[0] * k[0] and wp == o[1] * k[1] and xp.flags.c_contiguous:
            # Non-overlapping windows tiling the input: one reduction over a reshaped view.
            np.max(xp.reshape(n, o[0], k[0], o[1], k[1], c), axis=(2, 4), out=out)
            return
        np.copyto(out, self._offset(xp, 0, 0, s, o))
        for i in range(k[0]):
            for j in range(k[1]):
                if i or j:
                    np.maximum(out, self._offset(xp, i, j, s, o), out=out)

    def _unpool(self, xp, g, dxp, k, s, p, o, hw):
        # Each window's gradient goes to its first maximum in scan order, as in PyTorch. Windows
        # that tile the input write every position once (no zero fill, no add); images are
        # shared among the threads.
        out = self.output.transpose(0, 2, 3, 1)
        tiles = k == s and dxp.shape[1] == o[0] * k[0] and dxp.shape[2] == o[1] * k[1]
        taken_all = self._buffer("taken", out.shape, np.bool_)
        hit_all = self._buffer("hit", out.shape, np.bool_)
        tmp_all = self._buffer("tmp", out.shape)

        def work(_, lo, hi):
            taken, hit, tmp = taken_all[lo:hi], hit_all[lo:hi], tmp_all[lo:hi]
            taken.fill(False)
            if not tiles:
                dxp[lo:hi] = 0
            for i in range(k[0]):
                for j in range(k[1]):
                    np.equal(self._offset(xp[lo:hi], i, j, s, o), out[lo:hi], out=hit)
                    np.greater(hit, taken, out=hit)  # hit and not yet taken
                    np.logical_or(taken, hit, out=taken)
                    target = self._offset(dxp[lo:hi], i, j, s, o)
                    if tiles:
                        np.multiply(g[lo:hi], hit, out=target)
                    else:
                        np.multiply(g[lo:hi], hit, out=tmp)
                        target += tmp
        pool.run(out.shape[0], work)


class AvgPool2d(_Pool2d):
    def __init__(self, kernel_size=None, stride=None, padding=0, ceil_mode: bool = False,
                 count_include_pad: bool = True, global_pooling: bool = False, name: str | None = None):
        super().__init__(kernel_size, stride, padding, ceil_mode, global_pooling, name)
        self.count_include_pad = bool(count_include_pad)

    def config(self):
        return {**super().config(), "count_include_pad": self.count_include_pad}

    def _divisor(self, k, s, p, o, hw) -> np.ndarray:
        """(OH, OW, 1) window sizes: clipped to the padded input (Caffe's AVE, count_include_pad)
        or to the input itself."""
        def sizes(out, kk, ss, pp, size):
            start = np.arange(out) * ss - pp
            if self.count_include_pad:
                return np.minimum(start + kk, size + pp) - start
            return np.minimum(start + kk, size) - np.maximum(start, 0)
        dh = sizes(o[0], k[0], s[0], p[0], hw[0])
        dw = sizes(o[1], k[1], s[1], p[1], hw[1])
        return (dh[:, None] * dw[None, :]).astype(np.float32)[:, :, None]

    def _pool(self, xp, out, k, s, p, o, hw):
        n, hp, wp, c = xp.shape
        if self.global_pooling:
            np.mean(xp, axis=(1, 2), out=out.reshape(n, c))
            return
        np.copyto(out, self._offset(xp, 0, 0, s, o))
        for i in range(k[0]):
            for j in range(k[1]):
                if i or j:
                    out += self._offset(xp, i, j, s, o)
        out /= self._divisor(k, s, p, o, hw)

    def _unpool(self, xp, g, dxp, k, s, p, o, hw):
        divisor = self._divisor(k, s, p, o, hw)

        def work(_, lo, hi):
            dx, gd = dxp[lo:hi], g[lo:hi] / divisor
            dx.fill(0)
            for i in range(k[0]):
                for j in range(k[1]):
                    self._offset(dx, i, j, s, o)[...] += gd
        pool.run(g.shape[0], work)
