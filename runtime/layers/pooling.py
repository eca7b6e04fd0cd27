"""Max and average pooling with padding, Caffe's ceil rounding, count_include_pad and global pooling;
max pooling's argmax indices and the max-unpooling that puts values back at them (SegNet).

Work happens in NHWC (the memory order a Conv2d output already has): one strided view per kernel
offset, clipped at the border instead of padding the input (pool_windows.py), so a k x k window
costs k*k vectorized passes, never a loop over pixels. Images are shared among kindling's threads
(numpy's loops are single-threaded); max pooling of fewer images than threads shares out bands
of output rows instead, and its backward groups of channels.

Max pooling in training keeps, per output, which offset of its window held the maximum (one
byte), and its backward scatters the gradient by it: it never compares the input again.
"""
from __future__ import annotations

import numpy as np

from ..module import Module
from ..parallel import pool
from ..workspace import for_this_thread, gradient_buffer
from . import pool_windows as windows
from .conv2d import pair

# Input elements a piece should hold at least to be taken by whichever thread is free (pool.run).
_SHARED_MIN_ELEMENTS = 1 << 17


def pooled_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool) -> int:
    """Caffe's and PyTorch's rule: ceil rounding, but the last window must start inside the
    input or its left padding."""
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return max(out, 1) if span >= 0 else 0


class _Pool2d(Module):
    def __init__(self, kernel_size=None, stride=None, padding=0, ceil_mode: bool = False,
                 global_pooling: bool = False, name: str | None = None):
        super().__init__(name)
        if kernel_size is None and not global_pooling:
            raise ValueError(f"{type(self).__name__} {self.name!r}: kernel_size is required unless global_pooling")
        self.kernel_size = pair(kernel_size, "kernel_size", self.name) if kernel_size is not None else None
        self.stride = pair(stride, "stride", self.name) if stride is not None else self.kernel_size
        self.padding = pair(padding, "padding", self.name)
        self.ceil_mode, self.global_pooling = bool(ceil_mode), bool(global_pooling)
        if min((*(self.kernel_size or (1, 1)), *(self.stride or (1, 1)))) <= 0 or min(self.padding) < 0:
            raise ValueError(f"{type(self).__name__} {self.name!r}: kernel {self.kernel_size} and stride {self.stride} "
                             f"must be positive and padding {self.padding} at least 0")
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

    def _prepared(self, x):
        """The input checked, its (N, C, H, W), the geometry and the NHWC view of the input."""
        x = np.asarray(x, np.float32)
        if x.ndim != 4:
            raise ValueError(f"{type(self).__name__} {self.name!r} expects (N, C, H, W), got {x.shape}")
        return x.shape, self.geometry(*x.shape[2:]), x.transpose(0, 2, 3, 1)

    def _input_gradient(self, shape, grad_out) -> np.ndarray:
        """The (N, H, W, C) buffer the input gradient is written into (NCHW view of NHWC memory
        once transposed back)."""
        n, c, h, w = shape
        return gradient_buffer(self, "dx", (n, h, w, c), avoid=grad_out)


class MaxPool2d(_Pool2d):
    """With ``return_indices`` it has two outputs, (values, indices): each maximum's flat position
    h * W + w in its channel plane of the unpadded input, the first maximum in scan order, as a
    float (Caffe's mask top; PyTorch's return_indices, whose int64 they equal). The indices get no
    gradient."""
    backward_reads_output = False  # it reads the winners' offsets recorded by forward

    def __init__(self, kernel_size=None, stride=None, padding=0, ceil_mode: bool = False,
                 global_pooling: bool = False, return_indices: bool = False, name: str | None = None):
        super().__init__(kernel_size, stride, padding, ceil_mode, global_pooling, name)
        self.return_indices = bool(return_indices)
        self._code = None

    @property
    def num_outputs(self) -> int:
        return 2 if self.return_indices else 1

    def config(self):
        return {**super().config(), "return_indices": self.return_indices}

    def output_shape(self, shape):
        out = super().output_shape(shape)
        return [out, out] if self.return_indices else out

    def forward(self, x):
        (n, c, h, w), geo, xh = self._prepared(x)
        k, s, p, o = geo
        out = self._buffer("out", (n, o[0], o[1], c))
        # Training (and indices) need each window's winning offset; evaluate mode only its value.
        record = self.training or self.return_indices
        code = self._buffer("code", out.shape, windows.code_dtype(k)) if record else None
        self._pool(xh, out, code, geo, (h, w))
        self._code = code
        values = out.transpose(0, 3, 1, 2)
        if not self.return_indices:
            self.output = values
            return values
        idx = self._buffer("idx", out.shape)
        # flat input position of each window's top-left element, plus the winner's place in it
        corner = ((np.arange(o[0]) * s[0] - p[0])[:, None] * w + (np.arange(o[1]) * s[1] - p[1])[None, :])
        within = np.arange(k[0] * k[1])
        np.take((within // k[1] * w + within % k[1]).astype(np.float32), code, out=idx)
        idx += corner.astype(np.float32)[:, :, None]
        self.output = [values, idx.transpose(0, 3, 1, 2)]
        return self.output

    def _pool(self, xh, out, code, geo, hw):
        """Maxima into ``out`` (and winners' offsets into ``code`` when given), in cache-sized
        blocks of images or bands of output rows shared among the threads."""
        k, s, p, o = geo
        n, c = xh.shape[0], xh.shape[3]
        work_blocks = windows.blocks(n, o[0], xh[0].nbytes)
        plans = {r: (windows.offsets(k, s, p, o, hw, r), windows.first_inside(k, s, p, o, r))
                 for r in {r for _, r in work_blocks}}
        ws = for_this_thread()

        def work(t, lo, hi):
            for images, rows in work_blocks[lo:hi]:
                found, first = plans[rows]
                top = out[images, rows[0]:rows[1]]
                if code is None:
                    windows.max_values(xh[images], top, found)
                    continue
                hit = ws.array(f"pool_hit.{t}", top.shape, np.bool_)
                spare = ws.array(f"pool_spare.{t}", top.shape, code.dtype)
                windows.max_argmax(xh[images], top, code[images, rows[0]:rows[1]], hit, spare, found, first)
        pool.run(len(work_blocks), work, pieces_per_thread=pool.pieces_for(xh.size, _SHARED_MIN_ELEMENTS))

    def backward(self, x, grad_out):
        g = grad_out[0] if self.return_indices else grad_out
        shape, geo, xh = self._prepared(x)
        k, s, p, o = geo
        n, c, h, w = shape
        code = self._code
        if code is None or code.shape != (n, o[0], o[1], c):  # forward ran in evaluate mode
            code = self._buffer("code", (n, o[0], o[1], c), windows.code_dtype(k))
            self._pool(xh, for_this_thread().array("pool_recompute", code.shape), code, geo, (h, w))
        gh = np.asarray(g, np.float32).transpose(0, 2, 3, 1)
        dx = self._input_gradient(shape, grad_out)
        table, corners = windows.winner_table(k, s, p, o, (h, w), c)
        disjoint = s[0] >= k[0] and s[1] >= k[1]  # windows that share no input
        found = windows.offsets(k, s, p, o, (h, w))
        covered = k == s and o[0] * s[0] - p[0] >= h and o[1] * s[1] - p[1] >= w
        # blocks of whole images (np.add.at indexes a whole image), or a group of channels per
        # thread when there are fewer images than threads
        if n >= pool.max_threads:
            work_blocks = [(images, slice(None)) for images, _ in windows.blocks(n, 1, xh[0].nbytes)]
        else:
            cut = sorted({c * q // pool.max_threads for q in range(pool.max_threads + 1)})
            work_blocks = [(slice(i, i + 1), slice(lo, hi)) for i in range(n) for lo, hi in zip(cut, cut[1:])]
        ws = for_this_thread()

        def work(t, lo, hi):
            for images, channels in work_blocks[lo:hi]:
                gp = gh[images, ..., channels]
                if disjoint:
                    windows.scatter_disjoint(gp, code[images, ..., channels], dx[images, ..., channels], found,
                                             covered, ws.array(f"pool_mask.{t}", gp.shape, np.int8))
                    continue
                if not gp.flags.c_contiguous:  # np.add.at reads the gradient flat
                    gp = _copied(gp, ws.array(f"pool_grad.{t}", gp.shape))
                positions = ws.array(f"pool_positions.{t}", gp.shape, np.int32)
                windows.scatter_max(gp, code[images, ..., channels], dx[images], channels, table, corners, positions)
        pool.run(len(work_blocks), work, pieces_per_thread=1 if n < pool.max_threads else
                 pool.pieces_for(dx.size, _SHARED_MIN_ELEMENTS))
        return dx.transpose(0, 3, 1, 2)


def _copied(a: np.ndarray, into: np.ndarray) -> np.ndarray:
    np.copyto(into, a)
    return into


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

    def forward(self, x):
        (n, c, h, w), (k, s, p, o), xh = self._prepared(x)
        out = self._buffer("out", (n, o[0], o[1], c))
        divisor = self._divisor(k, s, p, o, (h, w))
        work_blocks = windows.blocks(n, o[0], xh[0].nbytes)
        plans = {r: windows.offsets(k, s, p, o, (h, w), r) for r in {r for _, r in work_blocks}}

        def work(_, lo, hi):
            for images, (r0, r1) in work_blocks[lo:hi]:
                top = out[images, r0:r1]
                if self.global_pooling:
                    np.mean(xh[images], axis=(1, 2), out=top.reshape(top.shape[0], c))
                    continue
                windows.sum_windows(xh[images], top, plans[r0, r1])
                top /= divisor[r0:r1]
        pool.run(len(work_blocks), work, pieces_per_thread=pool.pieces_for(xh.size, _SHARED_MIN_ELEMENTS))
        self.output = out.transpose(0, 3, 1, 2)
        return self.output

    def backward(self, x, grad_out):
        (n, c, h, w), (k, s, p, o), _ = self._prepared(x)
        gh = np.asarray(grad_out, np.float32).transpose(0, 2, 3, 1)
        dx = self._input_gradient((n, c, h, w), grad_out)
        divisor = self._divisor(k, s, p, o, (h, w))
        work_blocks = windows.blocks(n, h, h * w * c * 4)
        # bands of input-gradient rows: each row is written by one band, so they are independent
        plans = {}
        for _, r in work_blocks:
            rows = windows.scatter_rows(k, s, p, o, r)
            plans[r] = rows, windows.offsets(k, s, p, o, (h, w), rows, r)
        ws = for_this_thread()

        def work(t, lo, hi):
            for images, in_rows in work_blocks[lo:hi]:
                if self.global_pooling:  # every input position gets its image's gradient over h * w
                    np.copyto(dx[images, in_rows[0]:in_rows[1]], gh[images] / divisor)
                    continue
                (r0, r1), found = plans[in_rows]
                gp = gh[images, r0:r1]
                share = np.divide(gp, divisor[r0:r1], out=ws.array(f"pool_share.{t}", gp.shape))
                windows.scatter_sum(share, dx[images], found, in_rows)
        pool.run(len(work_blocks), work, pieces_per_thread=pool.pieces_for(dx.size, _SHARED_MIN_ELEMENTS))
        return dx.transpose(0, 3, 1, 2)


class MaxUnpool2d(Module):
    """Two inputs (x, indices): every value of x written at the flat position h * W' + w its index
    names in its channel plane of an (H', W') output, zeros elsewhere: SegNet's Upsample with a
    pooling mask, PyTorch's max_unpool2d. The indices are MaxPool2d(return_indices=True)'s second
    output (floats, as Caffe's mask); an index outside the output is an error. The output size is
    ``output_size`` when given, else the input size times ``scale`` less ``pad_out``. A third input,
    the pooling's own input, makes the size checkable: the indices count positions in its plane, so
    the output must have its size, or the values would land in the wrong places (the Caffe
    converter wires it; a net then fits only the input sizes where the two agree). The gradient
    w.r.t. x gathers the output gradient at the indices; the other inputs get none."""
    multi_input = True

    def __init__(self, scale=2, output_size=None, pad_out=0, name: str | None = None):
        super().__init__(name)
        self.scale = pair(scale, "scale", f"MaxUnpool2d {self.name!r}")
        self.output_size = pair(output_size, "output_size", f"MaxUnpool2d {self.name!r}") if output_size else None
        self.pad_out = pair(pad_out, "pad_out", f"MaxUnpool2d {self.name!r}")
        if min(self.scale) < 1 or (self.output_size and min(self.output_size) < 1):
            raise ValueError(f"MaxUnpool2d {self.name!r}: scale {self.scale} and output_size {self.output_size} "
                             f"must be positive")

    def config(self):
        return {"scale": list(self.scale), "output_size": list(self.output_size) if self.output_size else None,
                "pad_out": list(self.pad_out)}

    def size(self, h: int, w: int) -> tuple[int, int]:
        if self.output_size:
            return self.output_size
        return h * self.scale[0] - self.pad_out[0], w * self.scale[1] - self.pad_out[1]

    def _positions(self, x, mask, pooled=None):
        """(N, H*W*C) int64 positions in each image's NHWC output, and the output size."""
        if x.ndim != 4 or np.shape(mask) != x.shape:
            raise ValueError(f"MaxUnpool2d {self.name!r} expects (N, C, H, W) values and indices of the same shape, "
                             f"got {x.shape} and {np.shape(mask)}")
        n, c, h, w = x.shape
        oh, ow = self.size(h, w)
        if pooled is not None and tuple(np.shape(pooled)[2:]) != (oh, ow):
            ph, pw = np.shape(pooled)[2:]
            raise ValueError(f"MaxUnpool2d {self.name!r}: makes {oh}x{ow} from {h}x{w}, but the pooling that made its "
                             f"indices read {ph}x{pw}: its indices count places in a plane of that size")
        m = np.asarray(mask).transpose(0, 2, 3, 1)
        if m.size and (m.min() < 0 or m.max() >= oh * ow):
            raise ValueError(f"MaxUnpool2d {self.name!r}: indices span {int(m.min())}..{int(m.max())}, outside the "
                             f"{oh}x{ow} output; does the output size match the input of the pooling that made them?")
        pos = m.astype(np.int64)  # Caffe truncates the float mask to int
        pos *= c
        pos += np.arange(c)
        return pos.reshape(n, -1), (oh, ow)

    def forward(self, xs):
        x = np.asarray(xs[0], np.float32)
        pos, (oh, ow) = self._positions(x, *xs[1:])
        n, c = x.shape[:2]
        out = self._buffer("out", (n, oh, ow, c))
        values = x.transpose(0, 2, 3, 1).reshape(n, -1)

        def work(_, lo, hi):
            flat = out[lo:hi].reshape(hi - lo, -1)
            flat.fill(0)
            np.put_along_axis(flat, pos[lo:hi], values[lo:hi], axis=1)
        pool.run(n, work)
        self.output = out.transpose(0, 3, 1, 2)
        return self.output

    def backward(self, xs, grad_out):
        x = np.asarray(xs[0], np.float32)
        pos, _ = self._positions(x, *xs[1:])
        n, c, h, w = x.shape
        g = np.asarray(grad_out, np.float32).transpose(0, 2, 3, 1).reshape(n, -1)
        gx = np.take_along_axis(g, pos, axis=1).reshape(n, h, w, c).transpose(0, 3, 1, 2)
        return [gx, *(np.zeros(np.shape(other), np.float32) for other in xs[1:])]
