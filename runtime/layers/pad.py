"""Constant padding of any axes, where a negative amount crops (PyTorch's F.pad semantics): the
explicit padding of TensorFlow's Pad/PadV2 ops and of its asymmetric SAME convolutions, and the
crops of its StridedSlice/Slice/BatchToSpaceND on activations."""
from __future__ import annotations

import numpy as np

from ..module import Module


class Pad(Module):
    """``pads`` holds (before, after) for every axis, batch first, as a flat list
    [b0, a0, b1, a1, ...]: ``Pad([0, 0, 0, 0, 1, 2, 1, 2])`` adds one row above, two below, one
    column left and two right of (N, C, H, W). Padded entries hold ``value``."""

    def __init__(self, pads, value: float = 0.0, name: str | None = None):
        super().__init__(name)
        self.pads = [int(p) for p in pads]
        if not self.pads or len(self.pads) % 2:
            raise ValueError(f"Pad {self.name!r}: pads must hold a (before, after) pair per axis, got {self.pads}")
        self.value = float(value)

    def config(self):
        return {"pads": list(self.pads), "value": self.value}

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

    def forward(self, x):
        x = np.asarray(x, np.float32)
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
        src, dst = self._windows(shape, self._pairs(shape))
        gx = np.zeros(shape, np.float32)
        gx[src] = np.asarray(grad_out, np.float32)[dst]
        return gx
