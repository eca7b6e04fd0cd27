"""Per-channel statistics and affine passes over float32 (N, C, ...) arrays, as batch normalisation
needs them: in either memory order, in place, a cache-sized block at a time.

The array is seen, without copying, as a C-contiguous matrix each of whose lines belongs to one
channel:

- channels last (an NCHW view of NHWC memory, what Conv2d returns, or a plain (N, C) batch): the
  matrix is (M / k, k * C) and column j is channel j % C. ``k`` > 1 widens the rows of layers with
  few channels, so that numpy's inner loops run over many elements rather than a handful.
- channels first (contiguous NCHW): the matrix is (N * C, S) and row i is channel i % C.

The matrix is cut into blocks of whole rows of about ``BLOCK`` elements: a block stays in the
core's cache while the two to five numpy calls of a pass run over it, so memory sees one read of
each input and one write of the output per pass. Each block writes its partial sums to its own
slots and the slots are combined in float64 in a fixed order afterwards: the cut depends on the
shape alone, so results are bit-identical however many threads ran the blocks, and every pass
is shared among kindling's threads in runs of whole blocks. The per-channel tiles and the slots
come from the calling thread's workspace (runtime/workspace.py) and each thread's scratch block is
its own, so a warmed-up call allocates nothing the size of a block.

The variance is never E[x^2] - E[x]^2, which in float32 loses everything when a channel's mean is
large against its spread: it is the corrected two-pass formula (Chan, Golub and LeVeque): a centre
c near the mean (the mean of an even sample of rows), then sum(d^2) - sum(d)^2 / n over the
deviations d = x - c, whose sum also gives the exact mean. Sums run as matrix-vector products with
a vector of ones (BLAS, held to one thread by runtime.blas: 2-5x faster than numpy's reductions
over the same block), in float32 along the lines of a block and in float64 across blocks.
"""
from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass

import numpy as np

from . import blas
from .parallel import pool
from .workspace import for_this_thread

# Elements per block: its input, the scratch and (in backward) the second input and the output fit
# in a core's L2 cache together. The widest useful row is WIDE elements.
BLOCK = 1 << 16
WIDE = 64
# Elements per thread below which a pass runs on the calling thread alone: a second
# thread made ResNet-18's 64x56x56 maps (3.2M elements, batch 16) 1.1-1.3x faster and its 512x7x7
# maps (0.4M) 1.2x slower (each numpy call is short, and the threads take turns for the GIL).
SPLIT_MIN = 1 << 20
# Elements per piece of a shared pass: a quarter of SPLIT_MIN, so that a 3.2M-element map is cut
# into 8 pieces of 6-7 blocks, 4 per thread, where whole SPLIT_MINs made 3 (one thread ran two of
# them while the other waited); 56x56 maps, fwd + bwd, measured interleaved on a busy machine:
# 19.6 against 21.6 ms (NHWC memory), 21.4 against 22.1 (NCHW).
PIECE_MIN = SPLIT_MIN // 4

_local = threading.local()
_ones = np.ones(BLOCK, np.float32)  # read only: the vector sums multiply by (replaced when too short)


def _ones_of(n: int) -> np.ndarray:
    global _ones
    if _ones.size < n:
        _ones = np.ones(n, np.float32)
    return _ones[:n]


def _scratch(rows: int, cols: int) -> np.ndarray:
    """A (rows, cols) float32 array owned by the calling thread (kindling's pool threads live on,
    so each allocates its block-sized scratch once)."""
    buf = getattr(_local, "scratch", None)
    if buf is None or buf.size < rows * cols:
        buf = _local.scratch = np.empty(max(rows * cols, BLOCK), np.float32)
    return buf[:rows * cols].reshape(rows, cols)


@dataclass(frozen=True)
class Layout:
    """How an (N, C, ...) array's memory is seen as a matrix of per-channel lines (module docstring)."""
    channels: int
    last: bool  # channels last: (M / k, k * C), lines are columns; else (N * C, S), lines are rows
    rows: int
    cols: int
    per_block: int  # matrix rows per block
    order: tuple[int, ...]  # the axes in memory order

    @classmethod
    def of(cls, x: np.ndarray) -> "Layout | None":
        """The layout of ``x``'s memory, or None when it is neither order (a strided slice: copy it)."""
        return _layout(x.shape, x.strides, x.itemsize)

    def fits(self, a: np.ndarray) -> bool:
        """Whether ``a`` (same shape as the array this layout describes) has the same memory order."""
        return Layout.of(a) == self

    def matrix(self, a: np.ndarray) -> np.ndarray:
        """``a`` (of this layout) as the matrix, a view: results written to it land in ``a``."""
        m = a.transpose(self.order).reshape(self.rows, self.cols)
        if a.size and not np.may_share_memory(m, a):
            raise ValueError(f"array of shape {a.shape} and strides {a.strides} does not have this layout")
        return m

    @property
    def blocks(self) -> int:
        return -(-self.rows // self.per_block)

    # ---- per-channel values against a block ---------------------------------------------------
    def tile(self, v, slot: int) -> np.ndarray:
        """A per-channel vector laid out against the blocks (see ``part``), in workspace buffer
        ``slot`` of the calling thread (a pass uses one slot per vector). Channels last: one row
        of the matrix, repeated to a whole block's worth when there are several blocks (numpy's
        loops over two contiguous operands beat broadcasting a row 1.6x, and a block-sized tile
        is built once per call by doubling copies). Channels first: a column of per-row values."""
        ws, key = for_this_thread(), f"channelwise.tile{slot}"
        if not self.last:
            t = ws.array(key, (self.rows // self.channels, self.channels))
            t[...] = v
            return t.reshape(-1, 1)
        if self.blocks == 1:
            row = ws.array(key, (self.cols,))
            row.reshape(-1, self.channels)[...] = v
            return row
        t = ws.array(key, (min(self.per_block, self.rows), self.cols))
        t[0].reshape(-1, self.channels)[...] = v
        done = 1
        while done < len(t):
            more = min(done, len(t) - done)
            t[done:done + more] = t[:more]
            done += more
        return t

    def part(self, tiled: np.ndarray, lo: int, hi: int) -> np.ndarray:
        if self.last:
            return tiled if tiled.ndim == 1 else tiled[:hi - lo]
        return tiled[lo:hi]

    # ---- sums of each line of a block, into one slot per line ---------------------------------
    def partials(self, slot: int) -> np.ndarray:
        """Slots for one sum of every line of every block, in the calling thread's workspace."""
        shape = (self.blocks, self.cols) if self.last else (self.rows,)
        return for_this_thread().array(f"channelwise.sums{slot}", shape)

    def line_sums(self, blk: np.ndarray, partial: np.ndarray, lo: int) -> None:
        """The sums of ``blk``'s (matrix rows lo:lo + len(blk)) lines into their slots."""
        if self.last:
            np.matmul(_ones_of(len(blk)), blk, out=partial[lo // self.per_block])
        else:
            np.matmul(blk, _ones_of(self.cols), out=partial[lo:lo + len(blk)])

    def per_channel(self, partial: np.ndarray) -> np.ndarray:
        """The float64 per-channel totals of line sums."""
        return partial.reshape(-1, self.channels).sum(axis=0, dtype=np.float64)

    # ---- running over the blocks -------------------------------------------------------------
    def run(self, fn) -> None:
        """``fn(lo, hi)`` for every block (matrix rows lo:hi), shared among kindling's threads in
        runs of whole blocks when big enough (``SPLIT_MIN``), else in order on the calling thread.
        Each block writes its own slots, so which thread ran it changes no result."""
        blas.backend()  # holds the BLAS libraries to one thread each
        step, rows = self.per_block, self.rows

        def piece(_, first, stop):
            for b in range(first, stop):
                fn(b * step, min(rows, (b + 1) * step))
        if self.rows * self.cols < 2 * SPLIT_MIN:
            piece(0, 0, self.blocks)
            return
        least = -(-PIECE_MIN // (step * self.cols))  # blocks per piece
        pool.run(self.blocks, piece, min_per_worker=least,
                 pieces_per_thread=pool.pieces_for(rows * self.cols, SPLIT_MIN // 4))


@functools.lru_cache(maxsize=256)
def _layout(shape: tuple, strides: tuple, itemsize: int) -> Layout | None:
    c, size = shape[1], math.prod(shape)
    last_first = (0, *range(2, len(shape)), 1)  # axes in channels-last order
    order = tuple(range(len(shape)))
    if _contiguous([shape[a] for a in last_first], [strides[a] for a in last_first], itemsize):
        order = last_first
        m = size // c
        k = next(k for k in range(min(-(-WIDE // c), max(m, 1)), 0, -1) if m % k == 0)
        rows, cols, last = m // k, k * c, True
    elif _contiguous(shape, strides, itemsize):
        rows, cols, last = shape[0] * c, size // max(shape[0] * c, 1), False
    else:
        return None
    return Layout(c, last, rows, cols, max(1, BLOCK // max(cols, 1)), order)


def _contiguous(shape, strides, itemsize: int) -> bool:
    """C-contiguity of these axes in this order (axes of length 1 have any stride)."""
    expected = itemsize
    for n, st in zip(reversed(shape), reversed(strides)):
        if n != 1 and st != expected:
            return False
        expected *= n
    return True


def _sample_mean(lay: Layout, xm: np.ndarray) -> np.ndarray:
    """The per-channel mean of about a block's worth of rows spread evenly over the matrix (all of
    it when small), in float32: a centre near the mean without a pass over all the data. A centre
    at distance delta from the mean costs only precision, relatively (delta / spread)^2 times
    float32's epsilon in the variance; and for a sample of m of the n values per channel,
    (delta / spread)^2 <= n / m whatever the data (Cauchy-Schwarz), so at most about 200 * epsilon
    (1e-5) on ResNet-18's largest map, and typically far less."""
    if lay.last:
        step = max(1, lay.rows // lay.per_block)
        sample = xm[::step]
        sums = np.matmul(_ones_of(len(sample)), sample)
    else:
        n = lay.rows // lay.channels
        images = xm.reshape(n, lay.channels, lay.cols)
        sample = images[::max(1, n * lay.channels * lay.cols // BLOCK)]
        sums = np.matmul(sample, _ones_of(lay.cols))
    count = len(sample) * (lay.cols // lay.channels if lay.last else lay.cols)  # per channel
    return (sums.reshape(-1, lay.channels).sum(axis=0, dtype=np.float64) / count).astype(np.float32)


def moments(lay: Layout, x: np.ndarray):
    """Per-channel (centre, mean, biased variance) of ``x``: the centre is the float32 mean the
    deviations were taken about, mean and variance are float64. One read of ``x``; the deviations
    stay in each thread's cache-sized scratch."""
    xm = lay.matrix(x)
    total = x.size // lay.channels
    center = _sample_mean(lay, xm)
    tiled = lay.tile(center, 0)
    dev, dev_sq = lay.partials(0), lay.partials(1)

    def block(lo, hi):
        d = np.subtract(xm[lo:hi], lay.part(tiled, lo, hi), out=_scratch(hi - lo, lay.cols))
        lay.line_sums(d, dev, lo)
        np.square(d, out=d)
        lay.line_sums(d, dev_sq, lo)
    lay.run(block)
    ds = lay.per_channel(dev)
    var = np.maximum(lay.per_channel(dev_sq) - ds * ds / total, 0.0) / total
    return center, center + ds / total, var


def affine(lay: Layout, x: np.ndarray, out: np.ndarray, scale, shift=None, center=None) -> np.ndarray:
    """out = (x - center) * scale + shift per channel (``center`` and ``shift`` optional);
    ``out`` has ``x``'s layout."""
    xm, om = lay.matrix(x), lay.matrix(out)
    scale = lay.tile(scale, 0)
    shift = None if shift is None else lay.tile(shift, 1)
    center = None if center is None else lay.tile(center, 2)

    def block(lo, hi):
        o = om[lo:hi]
        if center is None:
            np.multiply(xm[lo:hi], lay.part(scale, lo, hi), out=o)
        else:
            np.subtract(xm[lo:hi], lay.part(center, lo, hi), out=o)
            o *= lay.part(scale, lo, hi)
        if shift is not None:
            o += lay.part(shift, lo, hi)
    lay.run(block)
    return out


def grad_sums(lay: Layout, g: np.ndarray, x: np.ndarray, center, subtract: bool = True):
    """Per channel, in float64: sum(g) and sum(g * (x - center)), in one read of g and x. With
    ``subtract`` False the second is sum(g * x) - center * sum(g), one numpy call per block fewer:
    for callers that know ``center`` is small against the spread of x (else it cancels)."""
    gm, xm = lay.matrix(g), lay.matrix(x)
    tiled = lay.tile(center, 0) if subtract else None
    g_sum, gd_sum = lay.partials(0), lay.partials(1)

    def block(lo, hi):
        gb = gm[lo:hi]
        lay.line_sums(gb, g_sum, lo)
        d = _scratch(hi - lo, lay.cols)
        if subtract:
            np.subtract(xm[lo:hi], lay.part(tiled, lo, hi), out=d)
            d *= gb
        else:
            np.multiply(xm[lo:hi], gb, out=d)
        lay.line_sums(d, gd_sum, lo)
    lay.run(block)
    sums = lay.per_channel(g_sum)
    products = lay.per_channel(gd_sum)
    return sums, products if subtract else products - np.asarray(center, np.float64) * sums


def combine(lay: Layout, g: np.ndarray, x: np.ndarray, out: np.ndarray, g_scale, x_scale, shift,
            center=None) -> np.ndarray:
    """out = g * g_scale + (x - center) * x_scale + shift per channel, in one read of g and x
    (``center`` optional: without it, one numpy call per block fewer)."""
    gm, xm, om = lay.matrix(g), lay.matrix(x), lay.matrix(out)
    g_scale, x_scale, shift = (lay.tile(v, i) for i, v in enumerate((g_scale, x_scale, shift)))
    center = None if center is None else lay.tile(center, 3)

    def block(lo, hi):
        o = om[lo:hi]
        d = _scratch(hi - lo, lay.cols)
        if center is None:
            np.multiply(xm[lo:hi], lay.part(x_scale, lo, hi), out=d)
        else:
            np.subtract(xm[lo:hi], lay.part(center, lo, hi), out=d)
            d *= lay.part(x_scale, lo, hi)
        np.multiply(gm[lo:hi], lay.part(g_scale, lo, hi), out=o)
        o += d
        o += lay.part(shift, lo, hi)
    lay.run(block)
    return out
