"""2-D convolution (cross-correlation, as PyTorch and Caffe), with stride, padding, dilation and groups.

Inside, the work is done in NHWC, a block of images at a time: the receptive field of every output
pixel of the block is gathered into one row of a column matrix (im2col through a strided view: a
copy of contiguous C-length runs), and the block becomes one GEMM against the weight, with the
bias added while the block is still in cache. Blocks are sized to stay in cache and are shared
out among kindling's threads (runtime/parallel.py), so the gathering runs on every core too. The
result is returned as an NCHW *view* of NHWC memory, which the next convolution reads back
without a transpose. A true NCHW input (a model's first layer) is gathered from its channel planes
instead, the column matrix built transposed (``_reads_planes``). Depthwise convolution (groups == in_channels) skips GEMM: one multiply-add
per kernel offset.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import blas
from .. import init
from ..init import kaiming_uniform
from ..module import Module
from ..parallel import pool
from ..workspace import fill_border, for_this_thread, gradient_buffer

# Bytes of column matrix per block: about a core's L2 share and then some (this host's L3 is large). Measured
# quiet against 4 MB: the VGG-style CNN's 64-channel 32x32 layer fwd 28.9 -> 23.4 ms and bwd 57 -> 48 ms,
# VGG-style training 0.74 -> 0.87x PyTorch, ResNet-18 inference 0.94 -> 1.00x (fewer, longer GEMMs per layer).
_BLOCK_BYTES = 8 << 20
# Multiply-adds a band of rows should hold at least: a block costs tens of microseconds of Python
# around its GEMM, so a small layer is better left whole than cut up for the threads.
_BLOCK_MIN_MACS = 4_000_000
# Multiply-adds a piece of a forward pass should hold at least to be taken by whichever thread is
# free (about 0.1 ms of GEMM), so that a thread slowed by a busy neighbour holds nobody up.
_SHARED_MIN_MACS = 16_000_000
# Output rows per thread below which a forward is not cut into bands: GEMMs that short run slowly.
_FEW_ROWS = 128
# Bytes of output (and its temporary) per depthwise block: its passes then run in a core's L2.
_DEPTHWISE_BLOCK_BYTES = 512 << 10


def pair(v, what: str, owner: str) -> tuple[int, int]:
    """An int or an (h, w) pair, as PyTorch accepts them."""
    t = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    if len(t) != 2:
        raise ValueError(f"{owner}: {what} must be an int or a pair, got {v!r}")
    return int(t[0]), int(t[1])


def output_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


class _Shape:
    """Stands in for an array where only its shape is read."""

    def __init__(self, shape):
        self.shape, self.ndim = tuple(shape), len(shape)


class Conv2d(Module):
    backward_reads_output = False
    shared_scratch = ("wmat", "wmat_key")  # the evaluate-mode weight matrix (see _weight_matrix)

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, name: str | None = None):
        super().__init__(name)
        self.kernel_size = pair(kernel_size, "kernel_size", self.name)
        self.stride = pair(stride, "stride", self.name)
        self.padding = pair(padding, "padding", self.name)
        self.dilation = pair(dilation, "dilation", self.name)
        if in_channels <= 0 or out_channels <= 0 or groups <= 0 or in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d {self.name!r}: in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must be positive and divisible by groups ({groups})")
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

    @property
    def _pointwise(self) -> bool:
        """1x1, stride 1, no padding: the input itself is the column matrix."""
        return self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)

    # ---- geometry and views -----------------------------------------------------------------
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
        """The input as NHWC with zero borders, in the thread's workspace (only this call reads it:
        backward pads the input again)."""
        xh = x.transpose(0, 2, 3, 1)
        ph, pw = self.padding
        if ph == 0 and pw == 0:
            return xh
        n, h, w, c = xh.shape
        buf = self._ws.array("xpad", (n, h + 2 * ph, w + 2 * pw, c))

        def copy(_, lo, hi):
            fill_border(buf[lo:hi], (ph, ph + h), (pw, pw + w), 0.0)
            np.copyto(buf[lo:hi, ph:ph + h, pw:pw + w, :], xh[lo:hi])
        pool.run(n, copy)
        return buf

    def _reads_planes(self, x: np.ndarray) -> bool:
        """Whether the forward gathers its columns from channel planes: an NCHW array (a model's
        input, or any one-channel map), read at stride 1 along the width, so that every kernel
        offset's columns are copies of whole output rows. Gathered from NHWC instead, the runs
        would be only kw*C long (5 floats for LeNet's first layer: 0.94 ms of its 1.46 ms
        im2col+GEMM, against 0.29 ms for the runs of planes)."""
        s = x.strides
        return (self.groups == 1 and self.stride[1] == 1 and not self._pointwise and s[3] == x.itemsize
                and (x.shape[1] == 1 or s[1] >= s[2] * x.shape[2]))

    def _padded_planes(self, x: np.ndarray) -> np.ndarray:
        """The NCHW input with zero borders, in the thread's workspace (as ``_padded_nhwc``)."""
        ph, pw = self.padding
        if ph == 0 and pw == 0:
            return x
        n, c, h, w = x.shape
        buf = self._ws.array("xpad_planes", (n, c, h + 2 * ph, w + 2 * pw))

        def copy(_, lo, hi):
            fill_border(buf[lo:hi].transpose(0, 2, 3, 1), (ph, ph + h), (pw, pw + w), 0.0)
            np.copyto(buf[lo:hi, :, ph:ph + h, pw:pw + w], x[lo:hi])
        pool.run(n, copy)
        return buf

    def _plane_windows(self, xp: np.ndarray, oh: int, ow: int) -> np.ndarray:
        """(kh, kw, C, N, OH, OW) strided view of padded planes: each kernel offset's inputs."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        n, c = xp.shape[:2]
        s = xp.strides
        return as_strided(xp, (kh, kw, c, n, oh, ow), (s[2] * dh, s[3] * dw, s[1], s[0], s[2] * sh, s[3] * sw),
                          writeable=False)

    def _plane_columns(self, worker: int, win: np.ndarray, lo: int, hi: int, r0: int = 0,
                       r1: int | None = None) -> np.ndarray:
        """``_columns`` from plane windows: the matrix is built transposed, (kh*kw*C, rows), one
        run of output rows per kernel offset and channel, and handed to BLAS as its transpose."""
        kh, kw, c, _, oh, ow = win.shape
        r1 = oh if r1 is None else r1
        cols = self._prefix_buffer(f"cols{worker}", (kh, kw, c, hi - lo, r1 - r0, ow))
        np.copyto(cols, win[:, :, :, lo:hi, r0:r1])
        k = kh * kw * c
        return cols.reshape(k, -1).T.reshape(-1, 1, k)

    def _windows(self, xp: np.ndarray, oh: int, ow: int) -> np.ndarray:
        """(N, OH, OW, kh, kw, C) strided view of every receptive field."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        n, c = xp.shape[0], xp.shape[3]
        s = xp.strides
        return as_strided(xp, (n, oh, ow, kh, kw, c), (s[0], s[1] * sh, s[2] * sw, s[1] * dh, s[2] * dw, s[3]),
                          writeable=False)

    def _block_images(self, oh: int, ow: int) -> int:
        kh, kw = self.kernel_size
        row_bytes = kh * kw * self.in_channels * 4
        # each block's GEMMs stream the whole weight matrix and the weight gradient's partial sum
        # through the cache: where those are larger than a cache-sized block of columns (late
        # layers: 512 channels on 7x7 maps), blocks as large as the weights amortise them
        budget = max(_BLOCK_BYTES, self.params["weight"].nbytes)
        return max(1, budget // max(oh * ow * row_bytes, 1))

    def _columns(self, worker: int, win: np.ndarray, xp: np.ndarray, lo: int, hi: int,
                 r0: int = 0, r1: int | None = None) -> np.ndarray:
        """im2col for images lo..hi (output rows r0..r1 of them) as (rows, G, kh*kw*C/G), in the
        worker's reused block buffer."""
        (kh, kw), g, c = self.kernel_size, self.groups, self.in_channels
        ow = win.shape[2]
        r1 = win.shape[1] if r1 is None else r1
        rows = (hi - lo) * (r1 - r0) * ow
        if self._pointwise and xp[lo:hi, r0:r1].flags.c_contiguous:
            return xp[lo:hi, r0:r1].reshape(rows, g, c // g)
        cols = self._prefix_buffer(f"cols{worker}", (rows, g, kh, kw, c // g))
        src = win[lo:hi, r0:r1]
        if g == 1 and self.dilation[1] == 1 and xp.strides[3] == 4 and xp.strides[2] == 4 * c:
            # a kernel row's kw pixels are one contiguous run of kw*C values in NHWC: copied as such
            # (numpy does not merge those axes of a strided view itself; a quarter faster)
            s = src.strides
            src = as_strided(src, (*src.shape[:4], kw * c), (*s[:4], 4), writeable=False)
            np.copyto(cols.reshape(src.shape), src)
        else:
            np.copyto(cols.reshape(hi - lo, r1 - r0, ow, g, kh, kw, c // g),
                      src.reshape(hi - lo, r1 - r0, ow, kh, kw, g, c // g).transpose(0, 1, 2, 5, 3, 4, 6))
        return cols.reshape(rows, g, kh * kw * (c // g))

    def _prefix_buffer(self, key: str, shape) -> np.ndarray:
        """A view of a flat buffer of the thread's workspace kept at the largest size asked for,
        so blocks of varying size (a shorter last block) do not reallocate it in turn."""
        return self._ws.array(key, shape)

    def _weight_matrix(self) -> np.ndarray:
        """Weight as (G, kh*kw*C/G, Cout/G), matching the column layout. In evaluate mode the
        rearranged copy is kept while the weight array and a sample of its values stay the same
        (inference calls forward many times on fixed weights); training rebuilds it each pass, in
        the thread's workspace."""
        w = self.params["weight"]
        g = self.groups
        co, cg, kh, kw = w.shape
        if self.training:
            # rebuilt every pass: only each output channel's (cg, kh, kw) block is reordered (in
            # cache), and BLAS reads the result transposed; a full transpose of a late layer's
            # weights (9 MB at 512 channels) took a quarter of its forward
            self._scratch.pop("wmat_key", None)  # the kept copy (if any) is no longer known to match
            wt = self._ws.array("wmat", (g, co // g, kh * kw * cg))
            np.copyto(wt.reshape(g, co // g, kh, kw, cg), w.reshape(g, co // g, cg, kh, kw).transpose(0, 1, 3, 4, 2))
            return wt.transpose(0, 2, 1)
        key = (id(w), w.ctypes.data, w.reshape(-1)[::max(1, w.size // 16)].tobytes())
        wm = self._scratch.get("wmat")
        if wm is not None and self._scratch.get("wmat_key") == key:
            return wm
        wm = self._buffer("wmat", (g, kh * kw * cg, co // g))
        np.copyto(wm.reshape(g, kh, kw, cg, co // g), w.reshape(g, co // g, cg, kh, kw).transpose(0, 3, 4, 2, 1))
        self._scratch["wmat_key"] = key
        return wm

    def _blocks(self, n, oh, ow, fn, pieces_per_thread: int = 1) -> None:
        """Runs ``fn(worker, lo, hi)`` over cache-sized blocks of images, shared among the threads
        (see ``pool.run`` for ``pieces_per_thread``)."""
        step = self._block_images(oh, ow)

        def worker(wi, lo, hi):
            for start in range(lo, hi, step):
                fn(wi, start, min(start + step, hi))
        pool.run(n, worker, pieces_per_thread=pieces_per_thread)

    def _row_costs(self, ow: int) -> tuple[int, int, int]:
        """For one output row of a forward block: the bytes it keeps in cache, the cache budget
        for them, and its work in GEMM multiply-adds."""
        (kh, kw), c = self.kernel_size, self.in_channels
        if self.depthwise:  # numpy passes over the output and a temporary, kept in a core's L2;
            # an elementwise multiply-add costs about 16 of a GEMM's
            return ow * self.out_channels * 8, _DEPTHWISE_BLOCK_BYTES, ow * kh * kw * self.out_channels * 16
        return ow * kh * kw * c * 4, _BLOCK_BYTES, ow * kh * kw * c * self.out_channels // self.groups

    def _row_blocks(self, n, oh, ow, fn) -> None:
        """Runs ``fn(worker, lo, hi, r0, r1)`` over blocks of output rows: whole images while there
        are enough of them to keep every thread busy, else bands of rows of each image, so a
        batch of one (serving) still uses every core and a large image still fits the cache.
        (Forward only: every output row is written by exactly one block.) The cut depends on
        the pool's size, never on the current load, so results do not change with it."""
        threads = pool.max_threads
        row_bytes, budget, row_work = self._row_costs(ow)
        budget_rows = max(1, budget // max(row_bytes, 1))
        if n >= 2 * threads and budget_rows >= oh:  # enough whole images, each fits the cache
            self._blocks(n, oh, ow, lambda wi, lo, hi: fn(wi, lo, hi, 0, oh), pool.pieces_for(n * oh * row_work, _SHARED_MIN_MACS))
            return
        if n * oh * ow < _FEW_ROWS * threads and not self.depthwise:
            # Too few output pixels to cut (a late layer at batch 1): one block whose GEMM the
            # threads share by columns (blas.gemm splits a short, wide product that way).
            fn(0, 0, n, 0, oh, parallel=True)
            return
        bands = max(-(-oh // budget_rows), -(-2 * threads // n))  # per image
        rows = max(-(-oh // bands), min(oh, -(-_BLOCK_MIN_MACS // max(row_work, 1))))
        blocks = [(i, i + 1, r, min(r + rows, oh)) for i in range(n) for r in range(0, oh, rows)]

        def worker(wi, lo, hi):
            for b in blocks[lo:hi]:
                fn(wi, *b)
        pool.run(len(blocks), worker, pieces_per_thread=pool.pieces_for(n * oh * row_work, _SHARED_MIN_MACS))

    def output_shape(self, shape) -> tuple:
        """The output shape for an input shape, without computing anything."""
        n, h, w, oh, ow = self._geometry(_Shape(shape))
        return (n, self.out_channels, oh, ow)

    # ---- forward ----------------------------------------------------------------------------
    def forward(self, x, epilogue=None):
        """``epilogue`` (runtime/fusion.py): a per-channel scale and shift (replacing the bias) and
        an optional ReLU, applied to each block while it is in cache."""
        return self._forward(x, epilogue)

    def _forward(self, x, epilogue=None, wm=None, out=None):
        """``wm``: a weight matrix to use instead of this module's own, and ``out`` an NHWC array to
        write into instead of its own (the input gradient's)."""
        x = np.asarray(x, np.float32)
        n, h, w, oh, ow = self._geometry(x)
        self._ws = for_this_thread()
        planes = self._reads_planes(x)
        xp = self._padded_planes(x) if planes else self._padded_nhwc(x)
        if out is None:
            out = self._buffer("out", (n, oh, ow, self.out_channels))
        if self.depthwise:
            self._depthwise_forward(xp, out, epilogue)
        else:
            self._gemm_forward(xp, out, epilogue, wm, planes)
        self.output = out.transpose(0, 3, 1, 2)
        return self.output

    def _finish(self, o, epilogue):
        """Bias, or a fused epilogue, on a block of output rows (NHWC, channels last)."""
        if epilogue is None:
            if self.has_bias:
                o += self.params["bias"]
            return
        if epilogue.scale is not None:
            o *= epilogue.scale
        if epilogue.shift is not None:
            o += epilogue.shift
        if epilogue.relu:
            np.maximum(o, 0, out=o)

    def _gemm_forward(self, xp, out, epilogue=None, wm=None, planes=False):
        """``planes``: ``xp`` is NCHW (``_reads_planes``), else NHWC."""
        n, oh, ow, co = out.shape
        g = self.groups
        cog = co // g
        win = self._plane_windows(xp, oh, ow) if planes else self._windows(xp, oh, ow)
        wm = self._weight_matrix() if wm is None else wm

        def block(wi, lo, hi, r0, r1, parallel=False):
            if planes:
                cols = self._plane_columns(wi, win, lo, hi, r0, r1)
            else:
                cols = self._columns(wi, win, xp, lo, hi, r0, r1)
            o = out[lo:hi, r0:r1].reshape(-1, co)
            for gi in range(g):
                blas.gemm(cols[:, gi], wm[gi], o[:, gi * cog:(gi + 1) * cog], parallel=parallel)
            self._finish(o, epilogue)
        self._row_blocks(n, oh, ow, block)

    def _depthwise_forward(self, xp, out, epilogue=None):
        n, oh, ow, _ = out.shape
        c, mult = self.in_channels, self.out_channels // self.in_channels
        kh, kw = self.kernel_size
        win = self._windows(xp, oh, ow)
        # Per kernel offset, one weight row, contiguous. numpy is slow on short inner loops, so
        # with one output per channel (the usual depthwise case) each output row is one run of
        # OW*C values against the weight row tiled OW times; strided windows (stride > 1) are
        # gathered into such runs first. A channel multiplier keeps the (C, mult) form.
        w = np.ascontiguousarray(self.params["weight"].reshape(c, mult, kh, kw).transpose(2, 3, 0, 1))
        flat = mult == 1
        w = np.tile(w[:, :, :, 0], (1, 1, ow)) if flat else w
        gathered = flat and self.stride[1] != 1

        def block(wi, lo, hi, r0, r1):
            b, r = hi - lo, r1 - r0
            shape = (b, r, ow * c) if flat else (b, r, ow, c, mult)
            o = out[lo:hi, r0:r1].reshape(shape)
            tmp = self._prefix_buffer(f"dw_tmp{wi}", shape)
            run = self._prefix_buffer(f"dw_run{wi}", (b, r, ow, c)) if gathered else None
            for i in range(kh):
                for j in range(kw):
                    xv = win[lo:hi, r0:r1, :, i, j, :]
                    if gathered:
                        xv = np.copyto(run, xv) or run
                    xv = xv.reshape(shape) if flat else xv[..., None]
                    first = i == 0 and j == 0
                    np.multiply(xv, w[i, j], out=o if first else tmp)
                    if not first:
                        o += tmp
            self._finish(out[lo:hi, r0:r1].reshape(-1, c * mult), epilogue)
        self._row_blocks(n, oh, ow, block)

    # ---- backward ---------------------------------------------------------------------------
    def backward(self, x, grad_out):
        x = np.asarray(x, np.float32)
        n, h, w, oh, ow = self._geometry(x)
        self._ws = for_this_thread()
        gh = np.asarray(grad_out, np.float32).transpose(0, 2, 3, 1)
        if not gh.flags.c_contiguous:
            buf = self._ws.array("gy", gh.shape)
            pool.run(n, lambda _, lo, hi: np.copyto(buf[lo:hi], gh[lo:hi]))
            gh = buf
        xp = self._padded_nhwc(x)
        (ph, pw) = self.padding
        want_input, want_params = self.propagate_down, self.needs_param_grads
        by_correlation = want_input and self._input_grad_is_correlation(h * w, oh * ow)
        dxp = None
        if want_input and not by_correlation:
            dxp = gradient_buffer(self, "dxpad", (n, h + 2 * ph, w + 2 * pw, self.in_channels), avoid=grad_out)
        if self.depthwise:
            partials = self._depthwise_backward(xp, gh, dxp, want_params)
            bias_partials = [gh.reshape(-1, self.out_channels).sum(axis=0)] if want_params else []
        else:
            partials, bias_partials = self._gemm_backward(xp, gh, dxp, want_params)
        if want_params:
            self._add_weight_grad(partials)
            if self.has_bias:
                self._accumulate("bias", self._summed("bgrad", bias_partials))
        if by_correlation:
            helper = self._flipped()
            out = gradient_buffer(self, "grad_in", (n, h, w, self.in_channels), avoid=[grad_out, gh])
            return helper._forward(gh.transpose(0, 3, 1, 2), wm=self._flipped_matrix(helper), out=out)
        if not want_input:
            return None
        return dxp[:, ph:ph + h, pw:pw + w, :].transpose(0, 3, 1, 2)

    # Output channels of the weight gradient added at a time: their partial sums stay in cache.
    _GRAD_BAND = 16

    def _add_weight_grad(self, partials: list) -> None:
        """``grads["weight"] += p0 + p1 + ...`` where each thread's partial is (Cout, kh, kw, C/G),
        contiguous: a band of output channels at a time, the partials added in cache and read back
        as (Cout, C/G, kh, kw), the bands shared among the threads (in one pass: 0.5 ms at 512
        channels, where adding whole arrays through transposed views took 46 ms)."""
        w = self.params["weight"]
        co, cg, kh, kw = w.shape
        grad = self.grads.get("weight")
        if grad is None:
            grad = self.grads["weight"] = np.zeros_like(w)
        parts = [p.reshape(co, kh * kw * cg) for p in partials]
        band = self._GRAD_BAND

        def work(_, lo, hi):
            tmp = for_this_thread().array("wgrad_band", (band, kh * kw * cg))
            for b0 in range(lo, hi, band):
                b1 = min(b0 + band, hi)
                total = parts[0][b0:b1]
                if len(parts) > 1:
                    total = np.add(parts[0][b0:b1], parts[1][b0:b1], out=tmp[:b1 - b0])
                    for p in parts[2:]:
                        total += p[b0:b1]
                grad[b0:b1] += total.reshape(b1 - b0, kh, kw, cg).transpose(0, 3, 1, 2)
        pool.run(co, work, min_per_worker=band)

    def _summed(self, key: str, parts: list) -> np.ndarray:
        """The threads' partial gradients added in order (p0 + p1 + ...), into a reused buffer."""
        if len(parts) == 1:
            return parts[0]
        total = self._ws.array(key, parts[0].shape)
        np.add(parts[0], parts[1], out=total)
        for p in parts[2:]:
            total += p
        return total

    # The correlation's work grows with the input's area, the slab path's with the output's: past
    # this ratio of the two the slabs win (LeNet's 5x5 valid conv2, 12x12 -> 8x8, area ratio 2.25:
    # slabs 36 ms against 138 ms; 28x28 -> 24x24, ratio 1.36: 62 against 155 ms), below it the
    # correlation does ('same' 3x3 convolutions, ratio 1: VGG's 64-channel layer 0.51 s against 1.5 s).
    _CORRELATION_MAX_AREA_RATIO = 1.2

    def _input_grad_is_correlation(self, in_area: int, out_area: int) -> bool:
        """At stride 1 the input gradient is itself a convolution, of the output gradient with the
        kernel flipped and the channels swapped (padding d*(k-1) - p): computed that way it costs
        what a forward costs, a third less than GEMMs per kernel offset added into place, while
        the input is not much larger than the output (padding that keeps the size)."""
        (kh, kw), (ph, pw), (dh, dw) = self.kernel_size, self.padding, self.dilation
        return (self.stride == (1, 1) and not self.depthwise
                and ph <= dh * (kh - 1) and pw <= dw * (kw - 1)
                and in_area <= self._CORRELATION_MAX_AREA_RATIO * out_area)

    def _flipped(self) -> "Conv2d":
        """The convolution of ``_input_grad_is_correlation`` (its weights are never read: the
        weight matrix comes from ``_flipped_matrix``)."""
        helper = self.__dict__.get("_flipped_conv")
        if helper is None:
            (kh, kw), (ph, pw), (dh, dw) = self.kernel_size, self.padding, self.dilation
            with init.deferred():  # no random draw
                helper = Conv2d(self.out_channels, self.in_channels, (kh, kw), 1,
                                (dh * (kh - 1) - ph, dw * (kw - 1) - pw), (dh, dw), self.groups, bias=False,
                                name=f"{self.name}.input_grad")
            self._flipped_conv = helper
        return helper

    def _flipped_matrix(self, helper) -> np.ndarray:
        """This weight, kernel flipped and channels swapped, in the helper's (G, kh*kw*Cout/G, C/G)
        column layout: built straight from the weight in one copy."""
        w, g = self.params["weight"], self.groups
        co, cg, kh, kw = w.shape
        wm = self._ws.array("wmat", (g, kh * kw * (co // g), cg))
        dst = wm.reshape(g, kh, kw, co // g, cg)
        src = w.reshape(g, co // g, cg, kh, kw)[:, :, :, ::-1, ::-1].transpose(0, 3, 4, 1, 2)
        for lo in range(0, co // g, 16):  # 16 output channels at a time stay in cache: 2.4x faster at 512
            np.copyto(dst[:, :, :, lo:lo + 16], src[:, :, :, lo:lo + 16])
        return wm

    def _gemm_backward(self, xp, gh, dxp, want_params):
        """Per block of images: gather the columns again (cheaper than keeping them), weight
        gradient by one GEMM added into the worker's partial sum (and the bias gradient while the
        block is in cache); and, when ``dxp`` is given (stride > 1), the input gradient kernel
        offset by kernel offset: one GEMM gives that offset's (rows, C) slab, added into the input
        positions it came from with one strided add (no column matrix, no scatter)."""
        n, oh, ow, co = gh.shape
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        g, c = self.groups, self.in_channels
        cg, cog = c // g, co // g
        win = self._windows(xp, oh, ow)
        wm = self._weight_matrix() if dxp is not None else None  # the slab path's; not rebuilt for nothing
        dwm, dbias = {}, {}

        def block(wi, lo, hi):
            rows = (hi - lo) * oh * ow
            g2 = gh[lo:hi].reshape(rows, co)
            if want_params:
                cols = self._columns(wi, win, xp, lo, hi)
                acc = dwm.get(wi)
                fresh = acc is None
                if fresh:
                    acc = dwm[wi] = self._ws.array(f"dwmat{wi}", (g, cog, kh * kw * cg))
                for gi in range(g):  # one row per output channel: the weight's own order of rows
                    blas.gemm(g2[:, gi * cog:(gi + 1) * cog].T, cols[:, gi], acc[gi], parallel=False,
                              accumulate=not fresh)
                if self.has_bias:
                    part = g2.sum(axis=0)
                    dbias[wi] = part if fresh else dbias[wi] + part
            if dxp is None:
                return
            dx = dxp[lo:hi]
            dx.fill(0)
            slab = self._ws.array(f"dslab{wi}", (rows, c))
            for i in range(kh):
                for j in range(kw):
                    k = i * kw + j
                    for gi in range(g):
                        blas.gemm(g2[:, gi * cog:(gi + 1) * cog], wm[gi, k * cg:(k + 1) * cg].T,
                                  slab[:, gi * cg:(gi + 1) * cg], parallel=False)
                    dx[:, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw, :] += \
                        slab.reshape(hi - lo, oh, ow, c)
        if want_params or dxp is not None:
            self._blocks(n, oh, ow, block)
        if not want_params:
            return [], []
        # the threads' partial sums stay (Cout, kh, kw, C/G), contiguous, and are added that way:
        # only their total is read back as (Cout, C/G, kh, kw), a transpose within each output
        # channel's row (adding the partials through the transposed views took 46 ms on a
        # 512-channel layer, 2 ms this way)
        return [dwm[wi] for wi in sorted(dwm)], [dbias[wi] for wi in sorted(dbias)]

    def _depthwise_backward(self, xp, gh, dxp, want_params):
        n, oh, ow, _ = gh.shape
        c, mult = self.in_channels, self.out_channels // self.in_channels
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        win = self._windows(xp, oh, ow)
        wt = self.params["weight"].reshape(c, mult, kh, kw)
        partials = {}

        def block(wi, lo, hi):
            g5 = gh[lo:hi].reshape(hi - lo, oh, ow, c, mult)
            if want_params:
                dw_ = partials.setdefault(wi, np.zeros((c, mult, kh, kw), np.float32))
                for i in range(kh):
                    for j in range(kw):
                        dw_[:, :, i, j] += np.einsum("nhwc,nhwcm->cm", win[lo:hi, :, :, i, j, :], g5, optimize=True)
            if dxp is None:
                return
            dx = dxp[lo:hi]
            dx.fill(0)
            slab = self._ws.array(f"dslab{wi}", (hi - lo, oh, ow, c))
            for i in range(kh):
                for j in range(kw):
                    np.einsum("nhwcm,cm->nhwc", g5, wt[:, :, i, j], out=slab)
                    dx[:, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw, :] += slab
        self._blocks(n, oh, ow, block)
        return [p.reshape(self.params["weight"].shape) for _, p in sorted(partials.items())]
