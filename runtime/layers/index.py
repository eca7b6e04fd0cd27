"""Layers that pick values by position: StridedSlice (ONNX's Slice: starts, ends, axes, steps,
negative steps included) and Gather (numpy's take along an axis, with fixed indices)."""
from __future__ import annotations

import numpy as np

from ..module import Module


def slice_bounds(start: int, end: int, step: int, dim: int) -> slice:
    """ONNX Slice's clamping: negative positions count from the end; with a positive step, start
    and end clamp to [0, dim]; with a negative one to [0, dim - 1] and [-1, dim - 1], where -1
    means 'past the first element'."""
    start += dim if start < 0 else 0
    end += dim if end < 0 else 0
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
    else:
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return slice(start, None if end < 0 else end, step)


class StridedSlice(Module):
    def __init__(self, starts, ends, axes=None, steps=None, name: str | None = None):
        super().__init__(name)
        self.starts, self.ends = [int(s) for s in starts], [int(e) for e in ends]
        self.axes = list(range(len(self.starts))) if axes is None else [int(a) for a in axes]
        self.steps = [1] * len(self.starts) if steps is None else [int(s) for s in steps]
        if not len(self.starts) == len(self.ends) == len(self.axes) == len(self.steps):
            raise ValueError(f"StridedSlice {self.name!r}: starts, ends, axes and steps differ in length")
        if 0 in self.steps:
            raise ValueError(f"StridedSlice {self.name!r}: a step cannot be 0")

    def config(self):
        return {"starts": list(self.starts), "ends": list(self.ends), "axes": list(self.axes), "steps": list(self.steps)}

    def _index(self, shape) -> tuple:
        index = [slice(None)] * len(shape)
        for s, e, a, st in zip(self.starts, self.ends, self.axes, self.steps):
            if not -len(shape) <= a < len(shape):
                raise ValueError(f"StridedSlice {self.name!r}: axis {a} is out of range for shape {tuple(shape)}")
            index[a % len(shape)] = slice_bounds(s, e, st, shape[a])
        return tuple(index)

    def forward(self, x):
        x = np.asarray(x, np.float32)
        self.output = x[self._index(x.shape)]
        return self.output

    def backward(self, x, grad_out):
        gx = np.zeros(np.shape(x), np.float32)
        gx[self._index(gx.shape)] = grad_out
        return gx


class Gather(Module):
    """Values at ``indices`` (any shape, negative counting from the end) along ``axis``: the
    axis is replaced by the indices' shape."""

    def __init__(self, indices=None, axis: int = 0, indices_shape=None, name: str | None = None):
        super().__init__(name)
        self.axis = int(axis)
        if indices is None:
            indices = np.zeros(indices_shape or (), np.int64)
        self.buffers["indices"] = np.asarray(indices, np.int64)

    def config(self):
        return {"axis": self.axis, "indices_shape": list(self.buffers["indices"].shape)}

    def _checked(self, shape):
        idx = self.buffers["indices"]
        dim = shape[self.axis]
        if idx.size and (idx.min() < -dim or idx.max() >= dim):
            raise ValueError(f"Gather {self.name!r}: indices {int(idx.min())}..{int(idx.max())} out of range for axis "
                             f"{self.axis} of size {dim}")
        return np.where(idx < 0, idx + dim, idx)

    def forward(self, x):
        x = np.asarray(x, np.float32)
        self.output = np.take(x, self._checked(x.shape), axis=self.axis)
        return self.output

    def backward(self, x, grad_out):
        shape = np.shape(x)
        axis = self.axis % len(shape)
        idx = self._checked(shape)
        g = np.asarray(grad_out, np.float32)
        gx = np.zeros(shape, np.float32)
        # grad_out's axes: shape[:axis] + idx.shape + shape[axis+1:]; fold the index axes into one
        g = g.reshape(*shape[:axis], idx.size, *shape[axis + 1:])
        index = [slice(None)] * len(shape)
        index[axis] = idx.ravel()
        np.add.at(gx, tuple(index), g)
        return gx
