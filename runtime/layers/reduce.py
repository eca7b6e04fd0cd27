"""Layers that reduce axes: Caffe's Reduction (sum, |sum|, sum of squares, mean of trailing axes)
and ArgMax (the top-k indices or values: a segmentation net's per-pixel labels); ReduceAxes (sum,
mean, max, min over any axes: ONNX's Reduce* ops)."""
from __future__ import annotations

import numpy as np

from ..module import Module


def _canonical(axis: int, ndim: int, who: str) -> int:
    """Caffe's CanonicalAxisIndex: -ndim <= axis < ndim, negative counting from the end."""
    if not -ndim <= axis < ndim:
        raise ValueError(f"{who}: axis {axis} is out of range for an input with {ndim} axes")
    return axis % ndim


# op: (reduce the rows of a (num, dim) array, d(row reduced)/d(row) for backward). MEAN is SUM
# with coeff / dim, as in Caffe.
_OPS = {
    "sum": (lambda r: r.sum(1, dtype=np.float64), lambda r: np.float32(1)),
    "mean": (lambda r: r.sum(1, dtype=np.float64), lambda r: np.float32(1)),
    "asum": (lambda r: np.abs(r).sum(1, dtype=np.float64), np.sign),
    "sumsq": (lambda r: np.square(r, dtype=np.float64).sum(1), lambda r: 2 * r),
}


class Reduction(Module):
    """Reduces ``axis`` and every axis after it to one value: the output has shape x.shape[:axis]
    (axis 0: a scalar), scaled by ``coeff``."""

    def __init__(self, operation: str = "sum", axis: int = 0, coeff: float = 1.0, name: str | None = None):
        super().__init__(name)
        if operation not in _OPS:
            raise ValueError(f"Reduction {self.name!r}: unknown operation {operation!r}; known: {', '.join(_OPS)}")
        self.operation, self.axis, self.coeff = operation, int(axis), float(coeff)

    def config(self):
        return {"operation": self.operation, "axis": self.axis, "coeff": self.coeff}

    def _rows(self, x):
        axis = _canonical(self.axis, x.ndim, f"Reduction {self.name!r}")
        rows = x.reshape(int(np.prod(x.shape[:axis])), -1)
        coeff = self.coeff / rows.shape[1] if self.operation == "mean" and rows.shape[1] else self.coeff
        return rows, x.shape[:axis], np.float32(coeff)

    def forward(self, x):
        rows, shape, coeff = self._rows(np.asarray(x, np.float32))
        self.output = (_OPS[self.operation][0](rows) * coeff).astype(np.float32).reshape(shape)
        return self.output

    def backward(self, x, grad_out):
        x = np.asarray(x, np.float32)
        rows, _, coeff = self._rows(x)
        g = np.asarray(grad_out, np.float32).reshape(-1, 1) * coeff
        # A fresh array, not a broadcast view: callers may add into the gradient they get.
        return np.multiply(g, _OPS[self.operation][1](rows), out=np.empty(rows.shape, np.float32)).reshape(x.shape)


class ArgMax(Module):
    """The ``top_k`` largest entries along ``axis``: their indices, or with ``out_max_val`` their
    values. With ``axis`` None, over each item flattened: (N, 1, top_k) indices, or (N, 2, top_k)
    indices then values, padded with 1s to the input's rank (at least 3). Ties go to the larger
    index and indices are float32, as in Caffe."""

    def __init__(self, top_k: int = 1, axis: int | None = None, out_max_val: bool = False, name: str | None = None):
        super().__init__(name)
        self.top_k, self.out_max_val = int(top_k), bool(out_max_val)
        self.axis = None if axis is None else int(axis)
        if self.top_k < 1:
            raise ValueError(f"ArgMax {self.name!r}: top_k must be at least 1, got {self.top_k}")

    def config(self):
        return {"top_k": self.top_k, "axis": self.axis, "out_max_val": self.out_max_val}

    def _top(self, x, axis):
        """Indices and values of the top_k along axis, largest first; on ties the larger index
        first (Caffe sorts (value, index) pairs with std::greater)."""
        dim = x.shape[axis]
        if self.top_k > dim:
            raise ValueError(f"ArgMax {self.name!r}: top_k {self.top_k} exceeds the {dim} values on axis {axis}")
        flipped = np.flip(x, axis)  # the first of equal values in here is the last in x
        if self.top_k == 1:
            pos = np.expand_dims(np.argmax(flipped, axis), axis)
        else:
            pos = np.take(np.argsort(-flipped, axis, kind="stable"), np.arange(self.top_k), axis)
        return (dim - 1 - pos).astype(np.float32), np.take_along_axis(flipped, pos, axis)

    def forward(self, x):
        x = np.asarray(x, np.float32)
        if self.axis is not None:
            idx, val = self._top(x, _canonical(self.axis, x.ndim, f"ArgMax {self.name!r}"))
            self.output = val if self.out_max_val else idx
            return self.output
        idx, val = self._top(x.reshape(x.shape[0], -1), 1)
        pairs = np.stack([idx, val], 1) if self.out_max_val else idx[:, None]
        self.output = pairs.reshape(x.shape[0], pairs.shape[1], self.top_k, *[1] * (max(x.ndim, 3) - 3))
        return self.output

    def backward(self, x, grad_out):
        raise RuntimeError(f"ArgMax {self.name!r} is not differentiable (Caffe defines no backward for it)")


_REDUCE_AXES = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min}


class ReduceAxes(Module):
    """Sum, mean, max or min over ``axes`` (None: every axis), keeping them as size 1 with
    ``keepdims`` (ONNX's ReduceSum/ReduceMean/ReduceMax/ReduceMin, torch.amax). The gradient of max
    and min is shared evenly among tied elements, as torch.amax's."""

    def __init__(self, op: str = "mean", axes=None, keepdims: bool = True, name: str | None = None):
        super().__init__(name)
        if op not in _REDUCE_AXES:
            raise ValueError(f"ReduceAxes {self.name!r}: unknown op {op!r}; known: {', '.join(_REDUCE_AXES)}")
        self.op, self.keepdims = op, bool(keepdims)
        self.axes = None if axes is None else [int(a) for a in axes]

    def config(self):
        return {"op": self.op, "axes": self.axes, "keepdims": self.keepdims}

    def _axes(self, ndim):
        if self.axes is None:
            return tuple(range(ndim))
        return tuple(_canonical(a, ndim, f"ReduceAxes {self.name!r}") for a in self.axes)

    def forward(self, x):
        x = np.asarray(x, np.float32)
        axes = self._axes(x.ndim)
        fn = _REDUCE_AXES[self.op]
        if self.op in ("sum", "mean"):
            y = fn(x, axis=axes, keepdims=True, dtype=np.float64)
        else:  # an empty set's max is -inf, its min +inf (ONNX)
            y = fn(x, axis=axes, keepdims=True, initial=-np.inf if self.op == "max" else np.inf)
        self._kept = y.astype(np.float32)
        self.output = self._kept if self.keepdims else self._kept.reshape(
            [d for i, d in enumerate(x.shape) if i not in axes])
        return self.output

    def backward(self, x, grad_out):
        x = np.asarray(x, np.float32)
        axes = self._axes(x.ndim)
        g = np.asarray(grad_out, np.float32).reshape(self._kept.shape)
        if self.op == "sum":
            return np.broadcast_to(g, x.shape).astype(np.float32)
        if self.op == "mean":
            count = int(np.prod([x.shape[a] for a in axes]))
            return np.broadcast_to(g / np.float32(count), x.shape).astype(np.float32)
        hit = (x == self._kept).astype(np.float32)
        return hit * (g / hit.sum(axis=axes, keepdims=True))
