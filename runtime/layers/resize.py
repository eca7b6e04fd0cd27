"""Resizing by separable interpolation, with ONNX Resize's full set of rules: nearest (four
rounding modes), linear and cubic, the coordinate transformations (half_pixel, pytorch_half_pixel,
align_corners, asymmetric, half_pixel_symmetric, tf_crop_and_resize with its extrapolation value),
antialiasing when downsampling, exclude_outside, and sizes with an aspect-ratio policy.

Each resized axis is one (out, in) matrix of interpolation weights, built once per input shape
from the coefficient rules of ONNX's reference implementation; applying it is one BLAS product
along that axis (nearest neighbour: a plain gather). The backward pass applies the transposed
matrices in reverse order.
"""
from __future__ import annotations

import math

import numpy as np

from ..module import Module


def _nearest(mode: str):
    def coeffs(ratio: float, scale: float) -> np.ndarray:
        if float(ratio).is_integer():
            return np.array([0.0, 1.0])
        pick_right = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5, "floor": False,
                      "ceil": True}[mode]
        return np.array([0.0, 1.0]) if pick_right else np.array([1.0, 0.0])
    return coeffs


def _linear(ratio: float, scale: float) -> np.ndarray:
    return np.array([1 - ratio, ratio])


def _linear_antialias(ratio: float, scale: float) -> np.ndarray:
    scale = min(scale, 1.0)
    start = int(np.floor(-1 / scale) + 1)
    args = (np.arange(start, start + 2 - 2 * start) - ratio) * scale
    c = np.clip(1 - np.abs(args), 0, 1)
    return c / c.sum()


def _cubic(a: float, antialias: bool):
    def kernel(x):
        x = np.abs(x)
        return np.where(x <= 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                        np.where(x < 2, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0))

    def coeffs(ratio: float, scale: float) -> np.ndarray:
        if not antialias:
            return kernel(np.array([ratio + 1, ratio, 1 - ratio, 2 - ratio]))
        s = min(scale, 1.0)
        start = int(np.floor(-2 / s) + 1)
        c = kernel(s * (np.arange(start, 2 - start) - ratio))
        return c / c.sum()
    return coeffs


def _source_positions(mode: str, y, scale: float, n_in: int, n_out: int, roi):
    """Where each output position samples the input (ONNX's coordinate_transformation_mode), and
    which fall outside it (tf_crop_and_resize only). The resized length is scale * length, a
    fraction when a scale gives it, as in ONNX's reference and its conformance data (onnxruntime
    takes the whole output length there: for align_corners with a fractional length the two
    differ)."""
    out_f = scale * n_in
    if mode == "align_corners":
        return (np.zeros(n_out) if out_f == 1 else y * (n_in - 1) / (out_f - 1)), None
    if mode == "asymmetric":
        return y / scale, None
    if mode == "pytorch_half_pixel":
        return (np.full(n_out, -0.5) if out_f == 1 else (y + 0.5) / scale - 0.5), None
    if mode == "half_pixel":
        return (y + 0.5) / scale - 0.5, None
    if mode == "half_pixel_symmetric":
        offset = n_in / 2 * (1 - n_out / out_f)
        return offset + (y + 0.5) / scale - 0.5, None
    if mode == "tf_crop_and_resize":
        start, end = roi
        x = (np.full(n_out, (end - start) * (n_in - 1) / 2) if out_f == 1
             else y * (end - start) * (n_in - 1) / (out_f - 1)) + start * (n_in - 1)
        return x, (x < 0) | (x > n_in - 1)
    raise ValueError(f"unknown coordinate_transformation_mode {mode!r}")


COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "half_pixel_symmetric",
                    "tf_crop_and_resize")
MODES = ("nearest", "linear", "cubic")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


class Resize(Module):
    """``scales`` or ``sizes`` (one per axis of ``axes``, default every axis; a size of 0 keeps the
    input's, so a batch axis can stay free). ``roi`` is [starts..., ends...] over ``axes`` for
    tf_crop_and_resize."""

    def __init__(self, scales=None, sizes=None, axes=None, mode: str = "nearest",
                 coordinate_transformation_mode: str = "half_pixel", nearest_mode: str = "round_prefer_floor",
                 cubic_coeff_a: float = -0.75, exclude_outside: bool = False, extrapolation_value: float = 0.0,
                 antialias: bool = False, keep_aspect_ratio_policy: str = "stretch", roi=None,
                 name: str | None = None):
        super().__init__(name)
        if (scales is None) == (sizes is None):
            raise ValueError(f"Resize {self.name!r}: give scales or sizes (one of them)")
        for value, known, what in ((mode, MODES, "mode"), (nearest_mode, NEAREST_MODES, "nearest_mode"),
                                   (coordinate_transformation_mode, COORDINATE_MODES, "coordinate_transformation_mode"),
                                   (keep_aspect_ratio_policy, ("stretch", "not_larger", "not_smaller"),
                                    "keep_aspect_ratio_policy")):
            if value not in known:
                raise ValueError(f"Resize {self.name!r}: unknown {what} {value!r}; known: {', '.join(known)}")
        if antialias and mode == "nearest":
            raise ValueError(f"Resize {self.name!r}: antialias applies to linear and cubic modes only")
        self.scales = None if scales is None else [float(s) for s in scales]
        self.sizes = None if sizes is None else [int(s) for s in sizes]
        self.axes = None if axes is None else [int(a) for a in axes]
        self.mode, self.coordinate_transformation_mode, self.nearest_mode = mode, coordinate_transformation_mode, nearest_mode
        self.cubic_coeff_a, self.exclude_outside = float(cubic_coeff_a), bool(exclude_outside)
        self.extrapolation_value, self.antialias = float(extrapolation_value), bool(antialias)
        self.keep_aspect_ratio_policy = keep_aspect_ratio_policy
        self.roi = None if roi is None else [float(r) for r in roi]
        if self.scales is not None and min(self.scales) <= 0:
            raise ValueError(f"Resize {self.name!r}: scales must be positive, got {self.scales}")
        self._plans: dict = {}

    def config(self):
        return {"scales": self.scales, "sizes": self.sizes, "axes": self.axes, "mode": self.mode,
                "coordinate_transformation_mode": self.coordinate_transformation_mode,
                "nearest_mode": self.nearest_mode, "cubic_coeff_a": self.cubic_coeff_a,
                "exclude_outside": self.exclude_outside, "extrapolation_value": self.extrapolation_value,
                "antialias": self.antialias, "keep_aspect_ratio_policy": self.keep_aspect_ratio_policy,
                "roi": self.roi}

    # ---- the plan for one input shape ------------------------------------------------------------
    def _coeffs(self):
        if self.mode == "nearest":
            return _nearest(self.nearest_mode)
        if self.mode == "linear":
            return _linear_antialias if self.antialias else _linear
        return _cubic(self.cubic_coeff_a, self.antialias)

    def _targets(self, shape):
        """(axis, scale, output size, roi pair) for each axis to resize."""
        r = len(shape)
        axes = [a % r for a in (self.axes if self.axes is not None else range(r))]
        given = self.scales if self.scales is not None else self.sizes
        if len(given) != len(axes):
            raise ValueError(f"Resize {self.name!r}: {len(given)} {'scales' if self.scales else 'sizes'} for "
                             f"{len(axes)} axes of an input of shape {tuple(shape)}")
        if self.scales is not None:
            scales = dict(zip(axes, self.scales))
            sizes = {a: int(s * shape[a]) for a, s in scales.items()}
        else:
            sizes = {a: (s or shape[a]) for a, s in zip(axes, self.sizes)}
            scales = {a: sizes[a] / shape[a] for a in axes}
            if self.keep_aspect_ratio_policy != "stretch":
                pick = min if self.keep_aspect_ratio_policy == "not_larger" else max
                s = pick(scales.values())
                scales = {a: s for a in axes}
                sizes = {a: int(s * shape[a] + 0.5) for a in axes}
        out = []
        for i, a in enumerate(axes):
            roi = (self.roi[i], self.roi[len(axes) + i]) if self.roi else (0.0, 1.0)
            if math.isclose(scales[a], 1.0) and sizes[a] == shape[a] and roi == (0.0, 1.0):
                continue
            out.append((a, scales[a], sizes[a], roi))
        return out

    def _axis_weights(self, n_in: int, n_out: int, scale: float, roi):
        """(matrix (n_out, n_in), gather indices when every row picks one input, extrapolated mask)."""
        y = np.arange(n_out, dtype=np.float64)
        x, outside = _source_positions(self.coordinate_transformation_mode, y, scale, n_in, n_out, roi)
        fn = self._coeffs()
        left = np.floor(x).astype(np.int64)
        ratios = np.where(x == left, 1.0, x - left)
        coeffs = np.stack([fn(float(r), scale) for r in ratios]) if n_out else np.zeros((0, 2))
        n = coeffs.shape[1]
        pad = int(np.ceil(n / 2))
        xp = x + pad
        p = np.floor(xp).astype(np.int64)
        frac = xp - p
        if n % 2 == 0:
            offset = np.where(frac == 0, -(n // 2), -(n // 2) + 1)
        else:
            offset = np.where(frac <= 0.5, -((n - 1) // 2), -((n - 1) // 2) + 1)
        idx = (p + offset)[:, None] + np.arange(n)[None, :] - pad
        if self.exclude_outside:
            coeffs = np.where((idx < 0) | (idx >= n_in), 0.0, coeffs)
            total = coeffs.sum(axis=1, keepdims=True)
            coeffs = coeffs / np.where(total == 0, 1.0, total)
        m = np.zeros((n_out, n_in))
        np.add.at(m, (np.repeat(np.arange(n_out), n), np.clip(idx, 0, n_in - 1).ravel()), coeffs.ravel())
        if outside is not None:
            m[outside] = 0
            outside = outside if outside.any() else None
        one_hot = outside is None and np.all(np.count_nonzero(m, axis=1) == 1) and np.allclose(m.sum(axis=1), 1)
        return m.astype(np.float32), (m.argmax(axis=1) if one_hot else None), outside

    def _plan(self, shape):
        shape = tuple(shape)
        plan = self._plans.get(shape)
        if plan is None:
            plan, cur = [], list(shape)
            for axis, scale, size, roi in self._targets(shape):
                if size <= 0:
                    raise ValueError(f"Resize {self.name!r}: axis {axis} of {shape} would have size {size}")
                plan.append((axis, tuple(cur), *self._axis_weights(cur[axis], size, scale, roi)))
                cur[axis] = size
            self._plans = {shape: plan}  # one shape at a time: a new batch size rebuilds it
        return plan

    def output_shape(self, shape):
        out = list(shape)
        for axis, _, m, _, _ in self._plan(shape):
            out[axis] = m.shape[0]
        return tuple(out)

    # ---- computation -------------------------------------------------------------------------------
    def forward(self, x):
        y = np.asarray(x, np.float32)
        for axis, _, m, idx, outside in self._plan(y.shape):
            if idx is not None:
                y = np.take(y, idx, axis=axis)
                continue
            y = np.moveaxis(np.tensordot(m, y, axes=([1], [axis])), 0, axis)
            if outside is not None:
                mask = outside.reshape((-1,) + (1,) * (y.ndim - axis - 1))
                y = np.where(mask, np.float32(self.extrapolation_value), y)
        self.output = np.ascontiguousarray(y, dtype=np.float32)
        return self.output

    def backward(self, x, grad_out):
        g = np.asarray(grad_out, np.float32)
        for axis, in_shape, m, idx, outside in reversed(self._plan(np.shape(x))):
            if outside is not None:
                g = np.where(outside.reshape((-1,) + (1,) * (g.ndim - axis - 1)), np.float32(0), g)
            if idx is not None:
                gx = np.zeros(in_shape, np.float32)
                index = [slice(None)] * g.ndim
                index[axis] = idx
                np.add.at(gx, tuple(index), g)
                g = gx
            else:
                g = np.moveaxis(np.tensordot(m.T, g, axes=([1], [axis])), 0, axis)
        return np.ascontiguousarray(g, dtype=np.float32)
