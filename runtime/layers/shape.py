"""Layers that only change the shape: Flatten, Reshape (Caffe/ONNX rules), Identity."""
from __future__ import annotations

import numpy as np

from ..module import Module


class Flatten(Module):
    """Merges dims start_dim..end_dim (PyTorch's Flatten; Caffe's Flatten axis/end_axis)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1, name: str | None = None):
        super().__init__(name)
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)

    def config(self):
        return {"start_dim": self.start_dim, "end_dim": self.end_dim}

    def forward(self, x):
        x = np.asarray(x)
        start = self.start_dim % x.ndim
        end = self.end_dim % x.ndim
        if start > end:
            raise ValueError(f"Flatten {self.name!r}: start_dim {self.start_dim} is after end_dim {self.end_dim} "
                             f"for input shape {x.shape}")
        shape = (*x.shape[:start], -1, *x.shape[end + 1:])
        if x.flags.c_contiguous:
            self.output = x.reshape(shape)
        else:  # an NCHW view of NHWC memory (a conv's output): copied, into the same buffer each step
            out = self._buffer("out", x.shape, x.dtype)
            np.copyto(out, x)
            self.output = out.reshape(shape)
        return self.output

    def backward(self, x, grad_out):
        return np.asarray(grad_out).reshape(np.shape(x))


class Reshape(Module):
    """``shape`` covers every dim, batch included: 0 copies the input's dim, -1 is inferred."""

    def __init__(self, shape, name: str | None = None):
        super().__init__(name)
        self.shape = [int(d) for d in shape]
        if self.shape.count(-1) > 1:
            raise ValueError(f"Reshape {self.name!r}: at most one -1 in {self.shape}")

    def config(self):
        return {"shape": list(self.shape)}

    def target(self, in_shape) -> tuple:
        dims = []
        for i, d in enumerate(self.shape):
            if d == 0:
                if i >= len(in_shape):
                    raise ValueError(f"Reshape {self.name!r}: 0 at position {i} but the input has {len(in_shape)} dims")
                d = in_shape[i]
            dims.append(d)
        total = int(np.prod(in_shape))
        if -1 in dims:
            known = int(np.prod([d for d in dims if d != -1]))
            if known == 0 or total % known:
                raise ValueError(f"Reshape {self.name!r}: cannot reshape {tuple(in_shape)} to {self.shape}")
            dims[dims.index(-1)] = total // known
        if int(np.prod(dims)) != total:
            raise ValueError(f"Reshape {self.name!r}: cannot reshape {tuple(in_shape)} ({total} values) to {self.shape}")
        return tuple(dims)

    def forward(self, x):
        x = np.asarray(x)
        self.output = x.reshape(self.target(x.shape))
        return self.output

    def backward(self, x, grad_out):
        return np.asarray(grad_out).reshape(np.shape(x))


class Identity(Module):
    def forward(self, x):
        self.output = x
        return x

    def backward(self, x, grad_out):
        return grad_out
