"""Interp: bilinear resizing with the corners aligned (DeepLab's and PSPNet's Caffe layer), as two
small interpolation matrices, one per axis: y = Rh @ x @ Rw^T on every channel plane, so the
backward pass is the same product with the matrices transposed."""
from __future__ import annotations

import numpy as np

from ..module import Module


def interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of Caffe's caffe_cpu_interp2 along one axis: output i reads input
    position i * (n_in - 1) / (n_out - 1), computed in float32 as Caffe does, split between the
    two inputs around it."""
    m = np.zeros((n_out, n_in), np.float32)
    if n_in == n_out:
        np.fill_diagonal(m, 1)
        return m
    ratio = np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0)
    pos = ratio * np.arange(n_out, dtype=np.float32)
    lo = pos.astype(np.int64)
    frac = pos - lo.astype(np.float32)
    hi = lo + (lo < n_in - 1)
    rows = np.arange(n_out)
    m[rows, lo] += np.float32(1) - frac
    m[rows, hi] += frac
    return m


class Interp(Module):
    """Resizes (N, C, H, W) after cropping ``pad_beg`` rows and columns at the start and
    ``pad_end`` at the end (both <= 0, Caffe's cropping). The output size: ``size`` (h, w) when
    given, else from the cropped size s: (s - 1) // shrink + 1, then zoomed to s + (s - 1) *
    (zoom - 1), as DeepLab's Interp layer computes it."""

    def __init__(self, size=None, zoom: int = 1, shrink: int = 1, pad_beg: int = 0, pad_end: int = 0,
                 name: str | None = None):
        super().__init__(name)
        self.size = tuple(int(s) for s in size) if size else None
        self.zoom, self.shrink, self.pad_beg, self.pad_end = int(zoom), int(shrink), int(pad_beg), int(pad_end)
        if self.pad_beg > 0 or self.pad_end > 0:
            raise ValueError(f"Interp {self.name!r}: pad_beg and pad_end crop, so they must be <= 0, got "
                             f"{self.pad_beg}, {self.pad_end}")
        if self.zoom < 1 or self.shrink < 1 or (self.size and min(self.size) < 1):
            raise ValueError(f"Interp {self.name!r}: zoom, shrink and the size must be positive")

    def config(self):
        return {"size": list(self.size) if self.size else None, "zoom": self.zoom, "shrink": self.shrink,
                "pad_beg": self.pad_beg, "pad_end": self.pad_end}

    def _sizes(self, shape) -> tuple[tuple[int, int], tuple[int, int]]:
        if len(shape) != 4:
            raise ValueError(f"Interp {self.name!r} expects (N, C, H, W), got {tuple(shape)}")
        eff = tuple(d + self.pad_beg + self.pad_end for d in shape[2:])
        if min(eff) < 1:
            raise ValueError(f"Interp {self.name!r}: cropping {-self.pad_beg} and {-self.pad_end} leaves nothing of "
                             f"{shape[2]}x{shape[3]}")
        if self.size:
            return eff, self.size
        out = tuple((s - 1) // self.shrink + 1 for s in eff)
        return eff, tuple(s + (s - 1) * (self.zoom - 1) for s in out)

    def output_shape(self, shape):
        _, out = self._sizes(shape)
        return (*tuple(shape[:2]), *out)

    def _matrices(self, shape):
        eff, out = self._sizes(shape)
        key = (*eff, *out)
        if self._scratch.get("key") is None or tuple(self._scratch["key"]) != key:
            self._scratch["rows"] = interp_matrix(eff[0], out[0])
            self._scratch["cols"] = np.ascontiguousarray(interp_matrix(eff[1], out[1]).T)
            self._scratch["key"] = np.asarray(key)
        return self._scratch["rows"], self._scratch["cols"], eff

    def forward(self, x):
        x = np.asarray(x, np.float32)
        rows, cols, eff = self._matrices(x.shape)
        b = -self.pad_beg
        crop = x[:, :, b:b + eff[0], b:b + eff[1]]
        self.output = np.matmul(np.matmul(rows, crop), cols)
        return self.output

    def backward(self, x, grad_out):
        rows, cols, eff = self._matrices(np.shape(x))
        b = -self.pad_beg
        gx = np.zeros(np.shape(x), np.float32)
        gx[:, :, b:b + eff[0], b:b + eff[1]] = np.matmul(np.matmul(rows.T, np.asarray(grad_out, np.float32)), cols.T)
        return gx
