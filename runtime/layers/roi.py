"""Pooling over regions of interest, for two-stage detectors: Fast/Faster R-CNN's ROIPooling (max
over each of pooled_h x pooled_w bins of a region) and R-FCN's position-sensitive PSROIPooling
(the mean of bin (i, j) taken from its own channel group). Two inputs: the feature map (N, C, H, W)
and the regions (R, 5) rows [image index, x1, y1, x2, y2] in image coordinates, which
``spatial_scale`` maps onto the feature map. Output (R, C', pooled_h, pooled_w). Bin edges follow
the Caffe layers (py-faster-rcnn, R-FCN) exactly: C's round (half away from zero), floor and ceil
in float32."""
from __future__ import annotations

import numpy as np

from ..module import Module


def _round(v: np.ndarray) -> np.ndarray:
    """C's round: halves away from zero (numpy rounds them to even)."""
    return np.where(v >= 0, np.floor(v + 0.5), np.ceil(v - 0.5))


def _regions(rois, n: int, owner: str) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(rois, np.float32).reshape(-1, 5) if np.size(rois) else np.zeros((0, 5), np.float32)
    if np.shape(rois)[-1:] != (5,) and np.size(rois):
        raise ValueError(f"{owner}: regions must be rows [image, x1, y1, x2, y2], got shape {np.shape(rois)}")
    images = r[:, 0].astype(np.int64)
    if len(images) and (images.min() < 0 or images.max() >= n):
        raise ValueError(f"{owner}: a region names image {int(images.max())} of a batch of {n}")
    return images, r[:, 1:]


class ROIPooling(Module):
    multi_input = True

    def __init__(self, pooled_h: int, pooled_w: int, spatial_scale: float = 1.0, name: str | None = None):
        super().__init__(name)
        self.pooled_h, self.pooled_w, self.spatial_scale = int(pooled_h), int(pooled_w), float(spatial_scale)
        if self.pooled_h < 1 or self.pooled_w < 1:
            raise ValueError(f"ROIPooling {self.name!r}: pooled_h and pooled_w must be positive")

    def config(self):
        return {"pooled_h": self.pooled_h, "pooled_w": self.pooled_w, "spatial_scale": self.spatial_scale}

    def _bins(self, boxes: np.ndarray, h: int, w: int):
        """Per region: the [start, end) rows of each bin row and columns of each bin column."""
        start = _round(boxes[:, :2] * np.float32(self.spatial_scale)).astype(np.int64)
        end = _round(boxes[:, 2:] * np.float32(self.spatial_scale)).astype(np.int64)
        size = np.maximum(end - start + 1, 1)  # width, height
        out = []
        for k, (limit, pooled) in enumerate(((w, self.pooled_w), (h, self.pooled_h))):
            step = size[:, k].astype(np.float32) / np.float32(pooled)
            i = np.arange(pooled, dtype=np.float32)
            lo = np.floor(i[None] * step[:, None]).astype(np.int64) + start[:, k, None]
            hi = np.ceil((i[None] + 1) * step[:, None]).astype(np.int64) + start[:, k, None]
            out.append((np.clip(lo, 0, limit), np.clip(hi, 0, limit)))
        return out  # [(x lo, x hi), (y lo, y hi)], each (R, pooled)

    def forward(self, xs):
        x = np.asarray(xs[0], np.float32)
        n, c, h, w = x.shape
        images, boxes = _regions(xs[1], n, f"ROIPooling {self.name!r}")
        (xl, xh), (yl, yh) = self._bins(boxes, h, w)
        out = np.zeros((len(images), c, self.pooled_h, self.pooled_w), np.float32)
        arg = np.full(out.shape, -1, np.int64)
        for r, img in enumerate(images):
            for i in range(self.pooled_h):
                for j in range(self.pooled_w):
                    if yh[r, i] <= yl[r, i] or xh[r, j] <= xl[r, j]:
                        continue  # an empty bin: 0, as Caffe
                    win = x[img, :, yl[r, i]:yh[r, i], xl[r, j]:xh[r, j]].reshape(c, -1)
                    k = win.argmax(axis=1)
                    out[r, :, i, j] = win[np.arange(c), k]
                    ww = xh[r, j] - xl[r, j]
                    arg[r, :, i, j] = (yl[r, i] + k // ww) * w + xl[r, j] + k % ww
        self._arg = arg
        self.output = out
        return out

    def backward(self, xs, grad_out):
        x = np.asarray(xs[0], np.float32)
        n, c, h, w = x.shape
        images, _ = _regions(xs[1], n, f"ROIPooling {self.name!r}")
        gx = np.zeros((n, c, h * w), np.float32)
        g = np.asarray(grad_out, np.float32)
        for r, img in enumerate(images):
            picked = self._arg[r].reshape(c, -1)
            valid = picked >= 0
            rows = np.broadcast_to(np.arange(c)[:, None], picked.shape)
            np.add.at(gx[img], (rows[valid], picked[valid]), g[r].reshape(c, -1)[valid])
        return [gx.reshape(x.shape), np.zeros(np.shape(xs[1]), np.float32)]


class PSROIPooling(Module):
    """Position-sensitive: the input has output_dim * group^2 channels; bin (i, j) of output
    channel k averages channel (k * group + i) * group + j over its part of the region."""
    multi_input = True

    def __init__(self, output_dim: int, group_size: int, spatial_scale: float = 1.0, name: str | None = None):
        super().__init__(name)
        self.output_dim, self.group_size, self.spatial_scale = int(output_dim), int(group_size), float(spatial_scale)
        if self.output_dim < 1 or self.group_size < 1:
            raise ValueError(f"PSROIPooling {self.name!r}: output_dim and group_size must be positive")

    def config(self):
        return {"output_dim": self.output_dim, "group_size": self.group_size, "spatial_scale": self.spatial_scale}

    def _bins(self, boxes: np.ndarray, h: int, w: int):
        scale, g = np.float32(self.spatial_scale), self.group_size
        start = _round(boxes[:, :2]).astype(np.float32) * scale
        end = (_round(boxes[:, 2:]).astype(np.float32) + np.float32(1)) * scale
        size = np.maximum(end - start, np.float32(0.1))  # too small regions count as 0.1
        out = []
        for k, limit in enumerate((w, h)):
            step = size[:, k] / np.float32(g)
            i = np.arange(g, dtype=np.float32)
            lo = np.floor(i[None] * step[:, None] + start[:, k, None]).astype(np.int64)
            hi = np.ceil((i[None] + 1) * step[:, None] + start[:, k, None]).astype(np.int64)
            out.append((np.clip(lo, 0, limit), np.clip(hi, 0, limit)))
        return out

    def forward(self, xs):
        x = np.asarray(xs[0], np.float32)
        n, c, h, w = x.shape
        g = self.group_size
        if c != self.output_dim * g * g:
            raise ValueError(f"PSROIPooling {self.name!r}: needs output_dim * group_size^2 = "
                             f"{self.output_dim * g * g} channels, got {c}")
        images, boxes = _regions(xs[1], n, f"PSROIPooling {self.name!r}")
        (xl, xh), (yl, yh) = self._bins(boxes, h, w)
        groups = x.reshape(n, self.output_dim, g, g, h, w)
        out = np.zeros((len(images), self.output_dim, g, g), np.float32)
        for r, img in enumerate(images):
            for i in range(g):
                for j in range(g):
                    area = (yh[r, i] - yl[r, i]) * (xh[r, j] - xl[r, j])
                    if area > 0:
                        win = groups[img, :, i, j, yl[r, i]:yh[r, i], xl[r, j]:xh[r, j]]
                        out[r, :, i, j] = win.sum(axis=(1, 2), dtype=np.float32) / np.float32(area)
        self.output = out
        return out

    def backward(self, xs, grad_out):
        x = np.asarray(xs[0], np.float32)
        n, c, h, w = x.shape
        g = self.group_size
        images, boxes = _regions(xs[1], n, f"PSROIPooling {self.name!r}")
        (xl, xh), (yl, yh) = self._bins(boxes, h, w)
        gx = np.zeros((n, self.output_dim, g, g, h, w), np.float32)
        go = np.asarray(grad_out, np.float32)
        for r, img in enumerate(images):
            for i in range(g):
                for j in range(g):
                    area = (yh[r, i] - yl[r, i]) * (xh[r, j] - xl[r, j])
                    if area > 0:
                        gx[img, :, i, j, yl[r, i]:yh[r, i], xl[r, j]:xh[r, j]] += \
                            (go[r, :, i, j] / np.float32(area))[:, None, None]
        return [gx.reshape(x.shape), np.zeros(np.shape(xs[1]), np.float32)]
