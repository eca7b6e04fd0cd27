"""What every TensorFlow translator uses: the error for a setting kindling does not convert, the
node's constants and names, weights read into a module's layout, and TensorFlow's padding rules."""
from __future__ import annotations

import numpy as np

from kindling.runtime import nn

from .tensors import FILTER_LAYOUTS, StoredTensor, filter_transposed


class Unsupported(ValueError):
    """A supported op with a setting kindling does not convert (named in the error)."""


def fail(node, problem: str):
    raise Unsupported(problem)


def module_name(node, suffix: str = "") -> str:
    return node.ctx.unique(node.name + suffix)


def const(node, i: int, what: str):
    v = node.weights[i] if i < len(node.weights) else None
    if v is None:
        fail(node, f"its {what} (input {i}, {node.inputs[i] if i < len(node.inputs) else '?'}) must be a constant")
    return v


def array(v, dtype=np.float32) -> np.ndarray:
    """A constant as an array of its own (a module trains it in place; a constant parsed from the
    file is a read-only view of the parser's bytes)."""
    return v.read().astype(dtype, copy=False) if isinstance(v, StoredTensor) else np.array(v, dtype)


def weight(v, axes, rows=None) -> np.ndarray:
    """A constant transposed by ``axes`` as contiguous float32, read from the file a band at a time."""
    if isinstance(v, StoredTensor):
        return v.read_transposed(axes, np.float32, rows)
    a = np.asarray(v, np.float32)
    if rows is None and a.ndim == 4 and tuple(axes) in FILTER_LAYOUTS:
        k = a.shape[0] * a.shape[1]
        return filter_transposed(a.shape, axes, np.float32, lambda i0, i1: a.reshape(k, *a.shape[2:])[:, i0:i1])
    if rows is not None:
        moved = np.empty_like(a)
        moved[rows] = a
        a = moved
    return np.array(a.transpose(axes), order="C")


def wired(node) -> list[int]:
    return [i for i, w in enumerate(node.weights) if w is None]


def layout(node) -> str:
    return node.ctx.layout


def spatial(node, key: str, default=1) -> tuple[int, int]:
    """(h, w) of a per-axis list attr (strides, dilations, ksize) in the op's data format."""
    values = node.attrs.get(key) or [default] * 4
    fmt = node.attrs.get("data_format", "NHWC")
    if len(values) != 4:
        fail(node, f"{key} {values}: expected 4 values")
    h, w = (1, 2) if fmt == "NHWC" else (2, 3)
    other = [values[0], values[3 if fmt == "NHWC" else 1]]
    if any(v != 1 for v in other):
        fail(node, f"{key} {values} reaches over the batch or channel axis")
    return int(values[h]), int(values[w])


def check_format(node, rank: int):
    fmt = node.attrs.get("data_format", "NHWC")
    if rank != 4 or fmt != layout(node):
        fail(node, f"a {fmt} op on a rank-{rank} activation in a {layout(node)} graph")


def same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's SAME padding (before, after): the odd extra goes after (bottom, right)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def paddings(node, hw, kernel, stride, dilation) -> list[tuple[int, int]]:
    """[(top, bottom), (left, right)] for the op's padding attr."""
    mode = node.attrs.get("padding", "VALID")
    if mode == "VALID":
        return [(0, 0), (0, 0)]
    if mode == "SAME":
        return [same_pads(s, k, st, d) for s, k, st, d in zip(hw, kernel, stride, dilation)]
    if mode == "EXPLICIT":
        ex = list(node.attrs.get("explicit_paddings") or [])
        fmt = node.attrs.get("data_format", "NHWC")
        axes = (1, 2) if fmt == "NHWC" else (2, 3)
        return [(int(ex[2 * a]), int(ex[2 * a + 1])) for a in axes]
    fail(node, f"padding {mode!r}")


def spatial_pad(name: str, pads, value: float = 0.0) -> nn.Module:
    (t, b), (left, r) = pads
    return nn.Pad([0, 0, 0, 0, t, b, left, r], value, name=name)
