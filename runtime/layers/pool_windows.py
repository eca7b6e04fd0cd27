"""The arithmetic of pooling windows over NHWC arrays, with no padded copy of the input.

A kh x kw pooling is kh*kw passes, one per kernel offset (i, j): the strided view of the input
holding every window's element at that offset, paired with the outputs whose window has that
element inside the input (``offsets``). The border is handled by clipping those ranges, so
nothing is padded (a padded copy of ResNet-18's stem activations is 53 MB at batch 16).

Max pooling in training records which offset won in each window, one byte per output
(``max_argmax``), and its backward puts each gradient back at that offset (``scatter_max``).
Both follow PyTorch to the bit: the first maximum in row-major window order wins, and an input
position several windows chose receives their gradients summed in row-major output order.
(One known difference: a window holding NaN pools to NaN as in PyTorch, but its gradient goes to
the first maximum before the NaN, where PyTorch picks the last NaN.)

Why these numpy forms: ufuncs with ``where=`` take a slow masked path (an add with ``where`` over
one image's strided view: 8 ms against 0.14 ms unmasked), so winners are kept by ``maximum`` of
offset codes and gradients are masked by a bitwise AND of their bits (exact: a gradient or +0.0).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Offset(NamedTuple):
    code: int       # i * kw + j: the kernel offset's place in row-major window order
    rows: tuple     # (first output row, end, first input row)
    cols: tuple     # the same for columns
    inputs: tuple   # index of the (N, rows, cols, C) input view
    outputs: tuple  # index of the matching outputs (rows relative to the band's first)


def span(i: int, stride: int, pad: int, outputs: tuple[int, int], inputs: tuple[int, int]):
    """(a, b, first): the outputs a..b-1 among ``outputs`` (a range) whose window's element at
    kernel offset ``i`` (input index ``o * stride - pad + i``) lies in ``inputs`` (a range), and
    that input index for output a."""
    a = max(outputs[0], -(-(inputs[0] + pad - i) // stride))
    b = min(outputs[1], (inputs[1] - 1 + pad - i) // stride + 1)
    return a, max(a, b), a * stride - pad + i


def offsets(k, s, p, o, hw, rows=None, in_rows=None) -> list[Offset]:
    """Every kernel offset that reaches an input row of ``in_rows`` (default all) for some output
    of rows ``rows`` (default all), in row-major window order; output rows counted from
    ``rows[0]``."""
    rows, in_rows = rows or (0, o[0]), in_rows or (0, hw[0])
    found = []
    for i in range(k[0]):
        ry = span(i, s[0], p[0], rows, in_rows)
        if ry[1] <= ry[0]:
            continue
        for j in range(k[1]):
            rx = span(j, s[1], p[1], (0, o[1]), (0, hw[1]))
            if rx[1] <= rx[0]:
                continue
            ins = (slice(None), _strided(ry, s[0]), _strided(rx, s[1]))
            outs = (slice(None), slice(ry[0] - rows[0], ry[1] - rows[0]), slice(rx[0], rx[1]))
            found.append(Offset(i * k[1] + j, ry, rx, ins, outs))
    return found


def _strided(r, stride) -> slice:
    a, b, first = r
    return slice(first, first + stride * (b - a - 1) + 1, stride)


# Input bytes one block of work holds: with its outputs and scratch it stays in a core's L2 cache
# (2 MB here) through the k*k passes; whole (N, H, W, C) arrays stream from memory on every pass.
# ResNet-18's stem pool at batch 16 on one thread (busy machine, CPU time): training forward and
# backward 58 and 56 ms as whole arrays; 52/47 ms in 4 MB blocks, 43/42 in 2 MB, 41/41 in 1 MB,
# 43/43 in 512 KB (Python around more pieces).
BLOCK_BYTES = 1 << 20


def blocks(n: int, rows: int, image_bytes: int) -> list[tuple[slice, tuple[int, int]]]:
    """(images, row range) blocks covering n images of ``rows`` rows (of output or of input
    gradient, as the caller cuts), ``image_bytes`` of input each: several whole images per block
    when they are small, else bands of rows of one image."""
    image_bytes = max(1, image_bytes)
    if image_bytes <= BLOCK_BYTES:
        step = max(1, BLOCK_BYTES // image_bytes)
        return [(slice(i, min(i + step, n)), (0, rows)) for i in range(0, n, step)]
    parts = min(rows, -(-image_bytes // BLOCK_BYTES))
    ranges = [(rows * q // parts, rows * (q + 1) // parts) for q in range(parts)]
    return [(slice(i, i + 1), r) for i in range(n) for r in ranges]


def code_dtype(k) -> np.dtype:
    """The smallest unsigned type that numbers every offset of a window (a byte up to 16x16)."""
    return np.min_scalar_type(k[0] * k[1] - 1)


def first_inside(k, s, p, o, rows=None) -> np.ndarray:
    """(R, OW, 1) code of each window's first element inside the input: PyTorch's argmax of a
    window whose every element is -inf."""
    r0, r1 = rows or (0, o[0])
    i0 = np.maximum(0, p[0] - np.arange(r0, r1) * s[0])
    j0 = np.maximum(0, p[1] - np.arange(o[1]) * s[1])
    return (i0[:, None] * k[1] + j0[None, :]).astype(code_dtype(k))[:, :, None]


def _covers(found: list[Offset], out_shape) -> Offset | None:
    """The first offset whose outputs are all of ``out_shape``'s (it may start them off)."""
    for off in found:
        if off.rows[1] - off.rows[0] == out_shape[1] and off.cols[1] - off.cols[0] == out_shape[2]:
            return off
    return None


def max_values(x: np.ndarray, out: np.ndarray, found: list[Offset]) -> None:
    """out = the maximum of each window (NaN if it holds one, as PyTorch)."""
    start = _covers(found, out.shape)
    if start is None:
        out.fill(-np.inf)
    else:
        np.copyto(out, x[start.inputs])
    for off in found:
        if off is not start:
            np.maximum(out[off.outputs], x[off.inputs], out=out[off.outputs])


def max_argmax(x, out, code, hit, spare, found: list[Offset], first) -> None:
    """``max_values``, and in ``code`` the offset of each window's first maximum. ``hit`` (bool)
    and ``spare`` (code's type) are scratch of out's shape. Offsets come in increasing code, so a
    later strictly greater element's code is the larger one and ``maximum`` keeps it."""
    start = found[0] if found and found[0] is _covers(found, out.shape) else None
    if start is None:
        out.fill(-np.inf)
        np.copyto(code, first)
    else:
        np.copyto(out, x[start.inputs])
        code.fill(start.code)
    for off in found:
        if off is start:
            continue
        v, top, h = x[off.inputs], out[off.outputs], hit[off.outputs]
        np.greater(v, top, out=h)
        np.maximum(top, v, out=top)
        np.multiply(h, code.dtype.type(off.code), out=spare[off.outputs])
        np.maximum(code[off.outputs], spare[off.outputs], out=code[off.outputs])


class Residue(NamedTuple):
    """One residue class of input positions (rows y0 + r, y0 + r + sh, ...; columns c, c + sw, ...):
    every offset that reaches it, in decreasing code (so each position receives its windows'
    gradients in increasing output order, as PyTorch adds them), each with its place in the
    class's own compact (rows, cols) array."""
    rows: slice       # the class's positions in the input gradient
    cols: slice
    shape: tuple      # (rows, cols) of the class
    steps: list       # (Offset, (row slice, column slice) of the compact array)
    outright: bool    # whether the first step reaches every position of the class: written, not added to zeros


class Scatter(NamedTuple):
    """How ``scatter_max`` fills the input gradient's rows ``in_rows`` from the outputs of rows
    ``rows``: class by class of positions that share their offsets' strides."""
    rows: tuple
    in_rows: tuple
    classes: list     # Residue
    zeroed: list      # (row slice, column slice) of classes no offset reaches
    largest: int      # positions in the largest class of one image's rows


def scatter_plan(k, s, p, o, hw, in_rows=None) -> Scatter:
    """The plan for input rows ``in_rows`` (default all): bands of input rows are independent,
    each position is written by one band only."""
    y0, y1 = in_rows = in_rows or (0, hw[0])
    rows = (max(0, -(-(y0 + p[0] - k[0] + 1) // s[0])), min(o[0], (y1 - 1 + p[0]) // s[0] + 1))
    steps = {}
    for off in reversed(offsets(k, s, p, o, hw, rows, in_rows)):
        steps.setdefault(((off.rows[2] - y0) % s[0], off.cols[2] % s[1]), []).append(off)
    classes, zeroed = [], []
    for r in range(min(s[0], y1 - y0)):
        for c in range(min(s[1], hw[1])):
            where = (slice(y0 + r, y1, s[0]), slice(c, None, s[1]))
            if (r, c) not in steps:
                zeroed.append(where)
                continue
            shape = (len(range(y0 + r, y1, s[0])), len(range(c, hw[1], s[1])))
            first = steps[r, c][0]
            outright = _whole(first.rows, s[0], in_rows) and _whole(first.cols, s[1], (0, hw[1]))
            places = [(off, (_local(off.rows, y0 + r, s[0]), _local(off.cols, c, s[1]))) for off in steps[r, c]]
            classes.append(Residue(*where, shape, places, outright))
    largest = max((cls.shape[0] * cls.shape[1] for cls in classes), default=0)
    return Scatter(rows, in_rows, classes, zeroed, largest)


def _whole(r, stride, inputs) -> bool:
    """Whether input indices first, first+stride, ... for outputs a..b-1 are every index of their
    residue class in ``inputs`` (a range)."""
    a, b, first = r
    return first - inputs[0] < stride and first + stride * (b - a - 1) + stride >= inputs[1]


def _local(r, start, stride) -> slice:
    """Where an offset's input indices fall in its class's compact array (the class starting at
    input index ``start``)."""
    a, b, first = r
    lo = (first - start) // stride
    return slice(lo, lo + b - a)


def scatter_max(g, code, dx, plan: Scatter, mask, bits, compact) -> None:
    """dx rows ``plan.in_rows`` = the gradient of max pooling: g (N, plan's output rows, OW, C)
    put back at each window's recorded offset (``code``, the same rows), summed where windows
    share an input. ``mask`` (int8) and ``bits`` (float32) are scratch of g's shape, ``compact``
    a flat float32 scratch of at least N * plan.largest * C.

    A class that one offset covers alone is written in place; the others are summed in their
    compact array (contiguous adds, where adding into strided views of dx cost twice as much:
    ResNet-18's stem backward 19% faster) and written once."""
    n, c = g.shape[0], g.shape[3]
    g_bits, dx_bits = g.view(np.int32), dx.view(np.int32)
    for rows, cols in plan.zeroed:
        dx[:, rows, cols] = 0
    for cls in plan.classes:
        if len(cls.steps) == 1 and cls.outright:
            off = cls.steps[0][0]
            np.bitwise_and(g_bits[off.outputs], _winners(code, off, mask), out=dx_bits[off.inputs])
            continue
        acc = compact[:n * cls.shape[0] * cls.shape[1] * c].reshape(n, *cls.shape, c)
        if not cls.outright:
            acc.fill(0)
        for q, (off, (r, k)) in enumerate(cls.steps):
            m, place = _winners(code, off, mask), acc[:, r, k]
            if q == 0 and cls.outright:
                np.bitwise_and(g_bits[off.outputs], m, out=place.view(np.int32))
            else:
                masked = bits[off.outputs]
                np.bitwise_and(g_bits[off.outputs], m, out=masked.view(np.int32))
                np.add(place, masked, out=place)
        np.copyto(dx[:, cls.rows, cls.cols], acc)


def _winners(code, off: Offset, mask) -> np.ndarray:
    """int8 -1 (every bit set) where ``off`` won its window, 0 elsewhere."""
    m = mask[off.outputs]
    np.equal(code[off.outputs], code.dtype.type(off.code), out=m.view(np.bool_))
    return np.negative(m, out=m)


def sum_windows(x, out, found: list[Offset]) -> None:
    """out = the sum of each window's elements inside the input, added in row-major order."""
    out.fill(0)
    for off in found:
        np.add(out[off.outputs], x[off.inputs], out=out[off.outputs])


def scatter_sum(g, dx, plan: Scatter) -> None:
    """dx rows ``plan.in_rows`` = g (the plan's output rows) added into every input position of
    its window, in PyTorch's order."""
    dx[:, plan.in_rows[0]:plan.in_rows[1]] = 0
    for cls in plan.classes:
        for off, _ in cls.steps:
            np.add(dx[off.inputs], g[off.outputs], out=dx[off.inputs])
