"""Padding of any axes: constant, reflect, edge (replicate) or wrap (circular), as ONNX's Pad and
PyTorch's F.pad. Negative amounts crop.

``pads`` is ONNX's layout: every axis's amount before, then every axis's amount after
(``[b0, b1, ..., e0, e1, ...]``); fewer axes than the input has pad the trailing ones, so
``Pad([1, 1, 2, 2])`` pads H and W of an NCHW tensor whatever its batch.

Each padded axis is one gather of source positions (``np.pad`` applied to the positions
0..n-1 tells which input element every output element copies), so the backward pass is the
matching scatter-add and every mode shares one path.
"""
from __future__ import annotations

import numpy as np

from ..module import Module

MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}


class Pad(Module):
    def __init__(self, pads, mode: str = "constant", value: float = 0.0, name: str | None = None):
        super().__init__(name)
        self.pads = [int(p) for p in pads]
        if len(self.pads) % 2:
            raise ValueError(f"Pad {self.name!r}: pads needs a before and an after amount per axis, got {self.pads}")
        if mode not in MODES:
            raise ValueError(f"Pad {self.name!r}: unknown mode {mode!r}; known: {', '.join(MODES)}")
        self.mode, self.value = mode, float(value)

    def config(self):
        return {"pads": list(self.pads), "mode": self.mode, "value": self.value}

    def _sources(self, shape) -> list[tuple[int, np.ndarray | None]]:
        """(axis, source position of each output element, -1 for the constant) per padded axis."""
        k = len(self.pads) // 2
        if k > len(shape):
            raise ValueError(f"Pad {self.name!r}: pads for {k} axes but the input has shape {tuple(shape)}")
        out = []
        for i, (before, after) in enumerate(zip(self.pads[:k], self.pads[k:])):
            axis = len(shape) - k + i
            if before == after == 0:
                continue
            n = shape[axis]
            kept = np.arange(max(-before, 0), n - max(-after, 0))
            if kept.size == 0 and (before > 0 or after > 0) and self.mode != "constant":
                raise ValueError(f"Pad {self.name!r}: nothing left of axis {axis} (size {n}) to {self.mode}-pad")
            if self.mode == "reflect" and max(before, after) >= kept.size:
                raise ValueError(f"Pad {self.name!r}: reflect padding of {max(before, after)} needs an axis longer than "
                                 f"that; axis {axis} has {kept.size}")
            width = (max(before, 0), max(after, 0))
            if self.mode == "constant":
                src = np.pad(kept, width, mode="constant", constant_values=-1)
            else:
                src = np.pad(kept, width, mode=MODES[self.mode])
            out.append((axis, src))
        return out

    def output_shape(self, shape):
        shape = list(shape)
        for axis, src in self._sources(shape):
            shape[axis] = len(src)
        return tuple(shape)

    def forward(self, x):
        y = np.asarray(x, np.float32)
        for axis, src in self._sources(y.shape):
            y = np.take(y, np.maximum(src, 0), axis=axis)
            if self.mode == "constant" and (src < 0).any():
                index = [slice(None)] * y.ndim
                index[axis] = src < 0
                y[tuple(index)] = np.float32(self.value)
        self.output = y
        return y

    def backward(self, x, grad_out):
        g = np.asarray(grad_out, np.float32)
        shapes = [np.shape(x)]
        sources = self._sources(shapes[0])
        for axis, src in sources[:-1]:
            shape = list(shapes[-1])
            shape[axis] = len(src)
            shapes.append(tuple(shape))
        for (axis, src), shape in zip(reversed(sources), reversed(shapes)):
            gx = np.zeros(shape, np.float32)
            keep = src >= 0
            index = [slice(None)] * g.ndim
            index[axis] = src[keep]
            picked = [slice(None)] * g.ndim
            picked[axis] = keep
            np.add.at(gx, tuple(index), g[tuple(picked)])
            g = gx
        return g
