"""The arithmetic of pooling windows over NHWC arrays, with no padded copy of the input.

A kh x kw pooling is kh*kw passes, one per kernel offset (i, j): the strided view of the input
holding every window's element at that offset, paired with the outputs whose window has that
element inside the input (``offsets``). The border is handled by clipping those ranges, so
nothing is padded (a padded copy of ResNet-18's stem activations is 53 MB at batch 16).

Max pooling in training records which offset won in each window, one byte per output
(``max_argmax``), and its backward adds each gradient at that place (``scatter_max``).
Both follow PyTorch to the bit: the first maximum in row-major window order wins, and an input
position several windows chose receives their gradients summed in row-major output order.
(One known difference: a window holding NaN pools to NaN as in PyTorch, but its gradient goes to
the first maximum before the NaN, where PyTorch picks the last NaN.)

Why these numpy forms: ufuncs with ``where=`` take a slow masked path (an add with ``where`` over
one image's strided view: 8 ms against 0.14 ms unmasked), so winners are kept by ``maximum`` of
offset codes.
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
# ResNet-18's stem pool at batch 16, training forward on one thread (busy machine, CPU time):
# 58 ms as whole arrays, 52 in 4 MB blocks, 43 in 2 MB, 41 in 1 MB, 43 in 512 KB (Python around
# more pieces).
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


def winner_table(k, s, p, o, hw, c) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, corners), int32: the distance in one NHWC image, flattened, from a window's
    element at kernel offset (0, 0) to its element at each offset code, and that (0, 0) element's
    position for every (output row, output column, channel), negative or past a row's end where
    it lies in the padding (a winner never does)."""
    h, w = hw
    code = np.arange(k[0] * k[1])
    table = ((code // k[1] * w + code % k[1]) * c).astype(np.int32)
    rows, cols = np.arange(o[0]) * s[0] - p[0], np.arange(o[1]) * s[1] - p[1]
    corners = ((rows[:, None] * w + cols[None, :]) * c)[:, :, None] + np.arange(c)
    return table, corners.astype(np.int32)


def scatter_max(g, code, dx, channels: slice, table, corners, positions) -> None:
    """Channels ``channels`` of dx (a block of whole NHWC images) = the gradient of max pooling:
    g and code (the block's outputs, those channels) put back at each window's recorded winner
    and summed where windows share it. ``np.add.at`` adds in index order, i.e. in increasing
    output order as PyTorch does, to the bit. ``positions`` (int32, g's shape) is scratch.

    One indexed add per output, where one masked pass per kernel offset (3x3: nine) took three
    times as long: ResNet-18's stem on one thread 35 -> ~12 ms."""
    n, h, w, c = dx.shape
    dx[..., channels] = 0
    np.take(table, code, out=positions)
    positions += corners[..., channels]
    if n > 1:
        positions += (np.arange(n, dtype=np.int32) * (h * w * c))[:, None, None, None]
    flat = dx.view()
    flat.shape = (-1,)  # raises rather than copy: the adds must land in dx
    np.add.at(flat, positions.reshape(-1), g.reshape(-1))


def scatter_disjoint(g, code, dx, found: list[Offset], covered: bool, mask) -> None:
    """``scatter_max`` for windows that do not overlap (stride >= kernel): each offset's winners'
    gradients written straight into its strided view of dx, the rest of it +0.0 (a bitwise AND
    of the gradient's bits with all-ones or zero: exact). dx is zeroed first unless the windows
    cover it (``covered``). ``mask`` (int8, g's shape) is scratch. (2x2/s2: 1.5-1.8x faster than
    the indexed writes, which must zero dx first.)"""
    if not covered:
        dx[...] = 0
    g_bits, dx_bits = g.view(np.int32), dx.view(np.int32)
    for off in found:
        m = mask[off.outputs]
        np.equal(code[off.outputs], code.dtype.type(off.code), out=m.view(np.bool_))
        np.negative(m, out=m)  # 0 or -1: every bit set
        np.bitwise_and(g_bits[off.outputs], m, out=dx_bits[off.inputs])


def scatter_rows(k, s, p, o, in_rows) -> tuple[int, int]:
    """The output rows whose windows reach input rows ``in_rows``."""
    y0, y1 = in_rows
    return max(0, -(-(y0 + p[0] - k[0] + 1) // s[0])), min(o[0], (y1 - 1 + p[0]) // s[0] + 1)


def sum_windows(x, out, found: list[Offset]) -> None:
    """out = the sum of each window's elements inside the input, added in row-major order."""
    out.fill(0)
    for off in found:
        np.add(out[off.outputs], x[off.inputs], out=out[off.outputs])


def scatter_sum(g, dx, found: list[Offset], in_rows) -> None:
    """dx rows ``in_rows`` = g (``found``'s output rows: ``offsets`` for these input rows) added
    into every input position of its window, in PyTorch's order (increasing output order: offsets
    in decreasing order)."""
    dx[:, in_rows[0]:in_rows[1]] = 0
    for off in reversed(found):
        np.add(dx[off.inputs], g[off.outputs], out=dx[off.inputs])
