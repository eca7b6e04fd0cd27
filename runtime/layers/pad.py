"""Padding of any axes, where a negative amount crops (PyTorch's F.pad semantics): the explicit
padding of TensorFlow's Pad/PadV2 ops and of its asymmetric SAME convolutions, the crops of its
StridedSlice/Slice/BatchToSpaceND on activations, and ONNX's Pad with its reflect, edge and wrap
modes (numpy's reflect, edge and wrap; PyTorch's reflect, replicate and circular).

A constant pad fills the borders and copies the input once. The other modes gather: ``np.pad``
applied to the positions 0..n-1 of an axis says which input element each output element copies,
so the backward pass is the matching scatter-add."""
from __future__ import annotations

import numpy as np

from ..module import Module


class Pad(Module):
    """``pads`` holds (before, after) for every axis, batch first, as a flat list
    [b0, a0, b1, a1, ...]: ``Pad([0, 0, 0, 0, 1, 2, 1, 2])`` adds one row above, two below, one
    column left and two right of (N, C, H, W). Padded entries hold ``value`` (mode "constant"), or
    mirror the input without its edge ("reflect"), repeat the edge ("edge"), or wrap around
    ("wrap")."""
    MODES = ("constant", "reflect", "edge", "wrap")

    def __init__(self, pads, value: float = 0.0, mode: str = "constant", name: str | None = None):
        super().__init__(name)
        self.pads = [int(p) for p in pads]
        if not self.pads or len(self.pads) % 2:
            raise ValueError(f"Pad {self.name!r}: pads must hold a (before, after) pair per axis, got {self.pads}")
        if mode not in self.MODES:
            raise ValueError(f"Pad {self.name!r}: unknown mode {mode!r}; known: {', '.join(self.MODES)}")
        self.value, self.mode = float(value), mode

    def config(self):
        return {"pads": list(self.pads), "value": self.value, "mode": self.mode}

    def _pairs(self, shape) -> list[tuple[int, int]]:
        if len(self.pads) != 2 * len(shape):
            raise ValueError(f"Pad {self.name!r}: {len(self.pads) // 2} (before, after) pairs for an input with "
                             f"{len(shape)} axes {tuple(shape)}")
        pairs = list(zip(self.pads[::2], self.pads[1::2]))
        for axis, ((b, a), size) in enumerate(zip(pairs, shape)):
            if size + b + a < 0 or -b > size or -a > size:
                raise ValueError(f"Pad {self.name!r}: cropping {-min(b, 0)} + {-min(a, 0)} from axis {axis} of "
                                 f"size {size} leaves nothing")
        return pairs

    def output_shape(self, shape) -> tuple:
        return tuple(int(s) + b + a for s, (b, a) in zip(shape, self._pairs(shape)))

    @staticmethod
    def _windows(shape, pairs):
        """(slices of the input that survive, slices of the output they land in)."""
        src = tuple(slice(max(-b, 0), s - max(-a, 0)) for s, (b, a) in zip(shape, pairs))
        dst = tuple(slice(max(b, 0), max(b, 0) + (sl.stop - sl.start)) for sl, (b, a) in zip(src, pairs))
        return src, dst

    def _out_buffer(self, x: np.ndarray, shape) -> np.ndarray:
        """Output in the input's memory order (an NCHW view of NHWC memory stays one, so the
        convolution after the padding reads it without a transpose)."""
        order = tuple(int(i) for i in np.argsort(x.strides)[::-1]) if x.ndim and min(x.strides) > 0 \
            else tuple(range(x.ndim))
        key = f"out{order}"
        buf = self._scratch.get(key)
        if buf is None or buf.shape != tuple(shape):
            buf = self._scratch[key] = np.empty([shape[i] for i in order], np.float32).transpose(np.argsort(order))
        return buf

    def _sources(self, shape) -> list[tuple[int, np.ndarray]]:
        """(axis, the input position each output position copies) for each padded axis (modes
        other than constant)."""
        out = []
        for axis, ((b, a), n) in enumerate(zip(self._pairs(shape), shape)):
            if b == a == 0:
                continue
            kept = np.arange(max(-b, 0), n - max(-a, 0))
            if self.mode == "reflect" and max(b, a) >= kept.size:
                raise ValueError(f"Pad {self.name!r}: reflect padding of {max(b, a)} needs an axis longer than that; "
                                 f"axis {axis} has {kept.size}")
            out.append((axis, np.pad(kept, (max(b, 0), max(a, 0)), mode=self.mode)))
        return out

    def forward(self, x):
        x = np.asarray(x, np.float32)
        if self.mode != "constant":
            for axis, src in self._sources(x.shape):
                x = np.take(x, src, axis=axis)
            self.output = x
            return x
        pairs = self._pairs(x.shape)
        out = self._out_buffer(x, self.output_shape(x.shape))
        src, dst = self._windows(x.shape, pairs)
        for axis, (b, a) in enumerate(pairs):  # fill the borders only
            lead = dst[:axis]
            if b > 0:
                out[(*lead, slice(0, b))] = self.value
            if a > 0:
                out[(*lead, slice(out.shape[axis] - a, None))] = self.value
        out[dst] = x[src]
        self.output = out
        return out

    def backward(self, x, grad_out):
        shape = np.shape(x)
        if self.mode != "constant":
            return self._gathered_backward(shape, np.asarray(grad_out, np.float32))
        src, dst = self._windows(shape, self._pairs(shape))
        gx = np.zeros(shape, np.float32)
        gx[src] = np.asarray(grad_out, np.float32)[dst]
        return gx

    def _gathered_backward(self, shape, g):
        """Each gather's scatter-add, last axis first."""
        sources = self._sources(shape)
        shapes = [tuple(shape)]
        for axis, src in sources[:-1]:
            shapes.append(shapes[-1][:axis] + (len(src),) + shapes[-1][axis + 1:])
        for (axis, src), in_shape in zip(reversed(sources), reversed(shapes)):
            gx = np.zeros(in_shape, np.float32)
            index = [slice(None)] * g.ndim
            index[axis] = src
            np.add.at(gx, tuple(index), g)
            g = gx
        return g
