"""2-D convolution (cross-correlation, as PyTorch and Caffe), with stride, padding, dilation and groups.

Inside, the work is done in NHWC: the input window of every output pixel is gathered into one
row of a column matrix (im2col through a strided view, a single copy of contiguous C-length
runs), and the whole batch becomes one GEMM against the weight. The result is returned as an NCHW
*view* of that NHWC memory, so the next convolution reads it back without a transpose.
Depthwise convolution (groups == in_channels) skips GEMM: a multiply-add per kernel offset.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import blas
from ..init import kaiming_uniform
from ..module import Module


def pair(v, what: str, owner: str) -> tuple[int, int]:
    """An int or an (h, w) pair, as PyTorch accepts them."""
    t = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    if len(t) != 2:
        raise ValueError(f"{owner}: {what} must be an int or a pair, got {v!r}")
    return int(t[0]), int(t[1])


def output_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


class Conv2d(Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, name: str | None = None):
        super().__init__(name)
        self.kernel_size = pair(kernel_size, "kernel_size", self.name)
        self.stride = pair(stride, "stride", self.name)
        self.padding = pair(padding, "padding", self.name)
        self.dilation = pair(dilation, "dilation", self.name)
        if groups <= 0 or in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d {self.name!r}: in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must both be divisible by groups ({groups})")
        if min(self.kernel_size + self.stride + self.dilation) <= 0 or min(self.padding) < 0:
            raise ValueError(f"Conv2d {self.name!r}: kernel, stride and dilation must be positive and padding >= 0")
        self.in_channels, self.out_channels, self.groups, self.has_bias = in_channels, out_channels, groups, bias
        kh, kw = self.kernel_size
        fan_in = in_channels // groups * kh * kw
        self.params["weight"] = kaiming_uniform((out_channels, in_channels // groups, kh, kw), fan_in=fan_in)
        if bias:
            self.params["bias"] = kaiming_uniform((out_channels,), fan_in=fan_in)

    def config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding),
                "dilation": list(self.dilation), "groups": self.groups, "bias": self.has_bias}

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels

    # ---- shapes and views -------------------------------------------------------------------
    def _geometry(self, x: np.ndarray):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2d {self.name!r} expects input (N, {self.in_channels}, H, W), got {x.shape}")
        n, _, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        oh, ow = output_size(h, kh, sh, ph, dh), output_size(w, kw, sw, pw, dw)
        if oh <= 0 or ow <= 0:
            raise ValueError(f"Conv2d {self.name!r}: input {h}x{w} is smaller than the kernel {kh}x{kw} "
                             f"(padding {ph},{pw}, dilation {dh},{dw})")
        return n, h, w, oh, ow

    def _padded_nhwc(self, x: np.ndarray) -> np.ndarray:
        """The input as NHWC with zero borders (a reused buffer whose border is zeroed once)."""
        xh = x.transpose(0, 2, 3, 1)
        ph, pw = self.padding
        if ph == 0 and pw == 0:
            return xh
        n, h, w, c = xh.shape
        key = ("xpad", n, h, w, c)
        buf = self._scratch.get("xpad")
        if buf is None or self._scratch.get("xpad_key") != key:
            buf = self._scratch["xpad"] = np.zeros((n, h + 2 * ph, w + 2 * pw, c), np.float32)
            self._scratch["xpad_key"] = key
        buf[:, ph:ph + h, pw:pw + w, :] = xh
        return buf

    def _windows(self, xp: np.ndarray, oh: int, ow: int) -> np.ndarray:
        """(N, OH, OW, kh, kw, C) strided view of every receptive field."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        n, c = xp.shape[0], xp.shape[3]
        s = xp.strides
        return as_strided(xp, (n, oh, ow, kh, kw, c), (s[0], s[1] * sh, s[2] * sw, s[1] * dh, s[2] * dw, s[3]),
                          writeable=False)

    def _columns(self, xp: np.ndarray, n: int, oh: int, ow: int) -> np.ndarray:
        """im2col: (N*OH*OW, G, kh, kw, C/G) rows, one copy into a reused buffer; free for 1x1/stride 1."""
        (kh, kw), g = self.kernel_size, self.groups
        c = self.in_channels
        m = n * oh * ow
        if kh == kw == 1 and self.stride == (1, 1) and xp.flags.c_contiguous:
            return xp.reshape(m, g, 1, 1, c // g)
        win = self._windows(xp, oh, ow).reshape(n, oh, ow, kh, kw, g, c // g)
        cols = self._buffer("cols", (m, g, kh, kw, c // g))
        np.copyto(cols.reshape(n, oh, ow, g, kh, kw, c // g), win.transpose(0, 1, 2, 5, 3, 4, 6))
        return cols

    def _weight_matrix(self) -> np.ndarray:
        """Weight as (G, kh*kw*C/G, Cout/G), matching the column layout."""
        w = self.params["weight"]
        g = self.groups
        co, cg, kh, kw = w.shape
        wm = self._buffer("wmat", (g, kh * kw * cg, co // g))
        np.copyto(wm.reshape(g, kh, kw, cg, co // g), w.reshape(g, co // g, cg, kh, kw).transpose(0, 3, 4, 2, 1))
        return wm

    # ---- forward ----------------------------------------------------------------------------
    def forward(self, x):
        x = np.asarray(x, np.float32)
        n, h, w, oh, ow = self._geometry(x)
        xp = self._padded_nhwc(x)
        out = self._buffer("out", (n * oh * ow, self.out_channels))
        if self.depthwise:
            self._depthwise_forward(xp, out, n, oh, ow)
        else:
            cols = self._columns(xp, n, oh, ow)
            wm = self._weight_matrix()
            g, m = self.groups, n * oh * ow
            if g == 1:
                blas.gemm(cols.reshape(m, -1), wm[0], out)
            else:
                cog = self.out_channels // g
                for gi in range(g):
                    out[:, gi * cog:(gi + 1) * cog] = blas.gemm(cols[:, gi].reshape(m, -1), wm[gi])
        if self.has_bias:
            out += self.params["bias"]
        self.output = out.reshape(n, oh, ow, self.out_channels).transpose(0, 3, 1, 2)
        return self.output

    def _depthwise_forward(self, xp, out, n, oh, ow):
        c, mult = self.in_channels, self.out_channels // self.in_channels
        win = self._windows(xp, oh, ow)
        w = self.params["weight"].reshape(c, mult, *self.kernel_size)
        out4 = out.reshape(n, oh, ow, c, mult)
        tmp = self._buffer("dw_tmp", out4.shape)
        out4.fill(0)
        kh, kw = self.kernel_size
        for i in range(kh):
            for j in range(kw):
                np.multiply(win[:, :, :, i, j, :, None], w[:, :, i, j], out=tmp)
                out4 += tmp

    # ---- backward ---------------------------------------------------------------------------
    def backward(self, x, grad_out):
        x = np.asarray(x, np.float32)
        n, h, w, oh, ow = self._geometry(x)
        m = n * oh * ow
        gh = np.asarray(grad_out, np.float32).transpose(0, 2, 3, 1)
        if not gh.flags.c_contiguous:
            gh = self._buffer("gy", gh.shape)
            np.copyto(gh, np.asarray(grad_out, np.float32).transpose(0, 2, 3, 1))
        g2 = gh.reshape(m, self.out_channels)
        if self.depthwise:
            return self._depthwise_backward(x, g2, n, h, w, oh, ow)
        cols = self._cached_columns(x, n, oh, ow)
        g, co = self.groups, self.out_channels
        cog = co // g
        wm = self._weight_matrix()
        if self.needs_param_grads:
            kh, kw = self.kernel_size
            cg = self.in_channels // g
            dwm = self._buffer("dwmat", wm.shape)
            for gi in range(g):
                blas.gemm(cols[:, gi].reshape(m, -1).T, g2[:, gi * cog:(gi + 1) * cog], dwm[gi])
            dw = dwm.reshape(g, kh, kw, cg, cog).transpose(0, 4, 3, 1, 2).reshape(co, cg, kh, kw)
            self._accumulate("weight", dw)
            if self.has_bias:
                self._accumulate("bias", g2.sum(axis=0))
        return self._input_grad(g2, wm, n, h, w, oh, ow)

    def _input_grad(self, g2, wm, n, h, w, oh, ow) -> np.ndarray:
        """col2im without the column matrix: for each kernel offset, one GEMM gives that offset's
        (N*OH*OW, C) gradient slab, added into the input positions it came from with one strided
        add. The slab is small enough to stay in cache, and each add runs over long contiguous rows."""
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        g, c, co = self.groups, self.in_channels, self.out_channels
        cg, cog, m = c // g, co // g, n * oh * ow
        dxp = self._buffer("dxpad", (n, h + 2 * ph, w + 2 * pw, c))
        slab = self._buffer("dslab", (m, c))
        if (kh, kw, sh, sw, ph, pw) != (1, 1, 1, 1, 0, 0):
            dxp.fill(0)
        for i in range(kh):
            for j in range(kw):
                k = i * kw + j
                for gi in range(g):
                    rows = wm[gi, k * cg:(k + 1) * cg].T
                    if g == 1:
                        blas.gemm(g2, rows, slab)
                    else:
                        slab[:, gi * cg:(gi + 1) * cg] = blas.gemm(g2[:, gi * cog:(gi + 1) * cog], rows)
                target = dxp[:, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw, :]
                if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0):
                    np.copyto(target, slab.reshape(n, oh, ow, c))
                else:
                    target += slab.reshape(n, oh, ow, c)
        return dxp[:, ph:ph + h, pw:pw + w, :].transpose(0, 3, 1, 2)

    def _cached_columns(self, x, n, oh, ow):
        """The columns from the forward pass: as in Torch and BigDL, backward follows the forward
        on the same input, so they need not be gathered again."""
        kh, kw = self.kernel_size
        if kh == kw == 1 and self.stride == (1, 1) and self.padding == (0, 0):
            xh = x.transpose(0, 2, 3, 1)
            if xh.flags.c_contiguous:
                return xh.reshape(n * oh * ow, self.groups, 1, 1, self.in_channels // self.groups)
        cols = self._scratch.get("cols")
        if cols is None or cols.shape[0] != n * oh * ow:
            return self._columns(self._padded_nhwc(x), n, oh, ow)
        return cols

    def _depthwise_backward(self, x, g2, n, h, w, oh, ow):
        c, mult = self.in_channels, self.out_channels // self.in_channels
        kh, kw = self.kernel_size
        xp = self._padded_nhwc(x)
        win = self._windows(xp, oh, ow)
        g5 = g2.reshape(n, oh, ow, c, mult)
        wt = self.params["weight"].reshape(c, mult, kh, kw)
        if self.needs_param_grads:
            dw = np.empty((c, mult, kh, kw), np.float32)
            for i in range(kh):
                for j in range(kw):
                    dw[:, :, i, j] = np.einsum("nhwc,nhwcm->cm", win[:, :, :, i, j, :], g5, optimize=True)
            self._accumulate("weight", dw.reshape(self.params["weight"].shape))
            if self.has_bias:
                self._accumulate("bias", g2.sum(axis=0))
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        dxp = self._buffer("dxpad", (n, h + 2 * ph, w + 2 * pw, c))
        dxp.fill(0)
        slab = self._buffer("dslab", (n, oh, ow, c))
        for i in range(kh):
            for j in range(kw):
                np.einsum("nhwcm,cm->nhwc", g5, wt[:, :, i, j], out=slab)
                dxp[:, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw, :] += slab
        return dxp[:, ph:ph + h, pw:pw + w, :].transpose(0, 3, 1, 2)
