"""SSD's detection head (weiliu89/caffe, branch ssd): PriorBox, the default boxes of one feature
map, and DetectionOutput, which decodes the location predictions against them, keeps the boxes
above a confidence threshold, suppresses overlaps per class (NMS) and keeps the best per image.

Both compute in float32 with Caffe's formulas and order, so the kept boxes, and the rows they come
out in, are Caffe's: the output is (1, 1, N, 7), one row [image, label, score, xmin, ymin, xmax,
ymax] per detection (normalized coordinates), grouped by label, best first within a label; an
image without detections gives none, and a batch without any gives one row [image, -1, ...] per
image, as Caffe does. They are forward only: PriorBox depends on shapes alone (its gradient is
zero) and DetectionOutput's choices have no gradient (backward raises).
"""
from __future__ import annotations

import numpy as np

from ..module import Module

CODE_TYPES = ("CORNER", "CENTER_SIZE", "CORNER_SIZE")


def _pair(v, what: str, owner: str):
    if v is None:
        return None
    v = [float(x) for x in (v if isinstance(v, (list, tuple)) else [v, v])]
    if len(v) != 2 or min(v) <= 0:
        raise ValueError(f"{owner}: {what} must be one or two positive numbers, got {v}")
    return tuple(v)


class PriorBox(Module):
    """Two inputs (a feature map, the image): for each cell of the map, boxes of each min size
    (square), of sqrt(min * max) (square) and of min size at each aspect ratio (and its inverse
    with ``flip``), centred at (cell + offset) * step, in coordinates normalized by the image
    size; then the variances. Output (1, 2, H * W * priors * 4). Caffe truncates the sizes to
    whole pixels. A fixed ``img_size`` (h, w) ties the net to images of that size."""
    multi_input = True

    def __init__(self, min_sizes, max_sizes=(), aspect_ratios=(), flip: bool = True, clip: bool = False,
                 variance=(0.1,), img_size=None, step=None, offset: float = 0.5, name: str | None = None):
        super().__init__(name)
        owner = f"PriorBox {self.name!r}"
        self.min_sizes = [float(s) for s in min_sizes]
        self.max_sizes = [float(s) for s in max_sizes]
        self.aspect_ratios = [float(a) for a in aspect_ratios]
        self.flip, self.clip, self.offset = bool(flip), bool(clip), float(offset)
        self.variance = [float(v) for v in variance]
        self.img_size, self.step = _pair(img_size, "img_size", owner), _pair(step, "step", owner)
        if not self.min_sizes or min(self.min_sizes) <= 0:
            raise ValueError(f"{owner}: needs positive min sizes, got {self.min_sizes}")
        if self.max_sizes and (len(self.max_sizes) != len(self.min_sizes)
                               or any(mx <= mn for mn, mx in zip(self.min_sizes, self.max_sizes))):
            raise ValueError(f"{owner}: each max size must pair with a smaller min size, got min {self.min_sizes} "
                             f"and max {self.max_sizes}")
        if len(self.variance) not in (1, 4) or min(self.variance) <= 0:
            raise ValueError(f"{owner}: variance must be one or four positive numbers, got {self.variance}")
        self._sizes = self._box_sizes()

    def config(self):
        return {"min_sizes": self.min_sizes, "max_sizes": self.max_sizes, "aspect_ratios": self.aspect_ratios,
                "flip": self.flip, "clip": self.clip, "variance": self.variance,
                "img_size": list(self.img_size) if self.img_size else None,
                "step": list(self.step) if self.step else None, "offset": self.offset}

    def _box_sizes(self) -> np.ndarray:
        """(priors, 2) widths and heights per cell, in Caffe's order."""
        ratios = [1.0]
        for ar in self.aspect_ratios:
            if all(abs(ar - r) >= 1e-6 for r in ratios):
                ratios.append(ar)
                if self.flip:
                    ratios.append(float(np.float32(1.0 / ar)))
        sizes = []
        for s, mn in enumerate(self.min_sizes):
            mn = int(mn)  # Caffe: int min_size_ = min_sizes_[s], and so for the max size
            sizes.append((mn, mn))
            if self.max_sizes:
                side = np.sqrt(mn * int(self.max_sizes[s]))
                sizes.append((side, side))
            for ar in ratios[1:]:
                root = np.sqrt(np.float32(ar))
                sizes.append((mn * root, mn / root))
        return np.asarray(sizes, np.float32)  # Caffe keeps box_width and box_height in floats

    @property
    def num_priors(self) -> int:
        return len(self._sizes)

    def _image_size(self, image_shape) -> tuple[float, float]:
        actual = tuple(float(d) for d in image_shape[2:4])
        if self.img_size and self.img_size != actual:
            raise ValueError(f"PriorBox {self.name!r}: its boxes are made for {self.img_size[0]:g}x{self.img_size[1]:g} "
                             f"images (img_size), not {actual[0]:g}x{actual[1]:g}")
        return actual

    def priors(self, feature_shape, image_shape) -> np.ndarray:
        if len(feature_shape) != 4 or len(image_shape) != 4:
            raise ValueError(f"PriorBox {self.name!r} expects a 4-D feature map and a 4-D image, got shapes "
                             f"{tuple(feature_shape)} and {tuple(image_shape)}")
        h, w = feature_shape[2:]
        img_h, img_w = self._image_size(image_shape)
        step_h, step_w = self.step or (np.float32(img_h) / np.float32(h), np.float32(img_w) / np.float32(w))
        cy = ((np.arange(h, dtype=np.float32) + np.float32(self.offset)) * np.float32(step_h)).astype(np.float64)
        cx = ((np.arange(w, dtype=np.float32) + np.float32(self.offset)) * np.float32(step_w)).astype(np.float64)
        bw, bh = self._sizes[:, 0].astype(np.float64), self._sizes[:, 1].astype(np.float64)
        boxes = np.empty((h, w, self.num_priors, 4), np.float32)
        boxes[..., 0] = (cx[None, :, None] - bw / 2.0) / img_w
        boxes[..., 1] = (cy[:, None, None] - bh / 2.0) / img_h
        boxes[..., 2] = (cx[None, :, None] + bw / 2.0) / img_w
        boxes[..., 3] = (cy[:, None, None] + bh / 2.0) / img_h
        if self.clip:
            np.clip(boxes, 0.0, 1.0, out=boxes)
        out = np.empty((1, 2, boxes.size), np.float32)
        out[0, 0] = boxes.reshape(-1)
        out[0, 1] = np.resize(np.asarray(self.variance, np.float32), boxes.size)
        return out

    def forward(self, xs):
        self.output = self.priors(np.shape(xs[0]), np.shape(xs[1]))  # from the shapes alone
        return self.output

    def backward(self, xs, grad_out):
        return [np.zeros(np.shape(x), np.float32) for x in xs]


def _areas(b: np.ndarray) -> np.ndarray:
    """Caffe's BBoxSize (normalized): 0 for an inverted box."""
    w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    return np.where((w < 0) | (h < 0), np.float32(0), w * h).astype(np.float32)


def _overlaps(box: np.ndarray, area: np.float32, others: np.ndarray, others_area: np.ndarray) -> np.ndarray:
    """Caffe's JaccardOverlap of one box with several, in float32 as Caffe computes it."""
    apart = ((others[:, 0] > box[2]) | (others[:, 2] < box[0]) | (others[:, 1] > box[3]) | (others[:, 3] < box[1]))
    iw = np.minimum(others[:, 2], box[2]) - np.maximum(others[:, 0], box[0])
    ih = np.minimum(others[:, 3], box[3]) - np.maximum(others[:, 1], box[1])
    inter = iw * ih
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (area + others_area - inter)
    return np.where(apart | (iw <= 0) | (ih <= 0), np.float32(0), iou)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, nms_threshold: float, top_k: int,
        eta: float = 1.0) -> list[int]:
    """Caffe's ApplyNMSFast: the boxes scoring above ``threshold``, best first (a stable sort, so
    ties keep index order), at most ``top_k`` of them (-1: all), each kept unless it overlaps a
    kept one by more than the (adaptive, with ``eta`` < 1) NMS threshold."""
    candidates = np.flatnonzero(scores > np.float32(threshold))
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    if -1 < top_k < len(order):
        order = order[:top_k]
    chosen = boxes[order]
    areas = _areas(chosen)
    adaptive = np.float32(nms_threshold)
    kept: list[int] = []  # positions in order
    for i in range(len(order)):
        if kept and (_overlaps(chosen[i], areas[i], chosen[kept], areas[kept]) > adaptive).any():
            continue
        kept.append(i)
        if eta < 1 and adaptive > 0.5:
            adaptive = np.float32(adaptive * np.float32(eta))
    return [int(order[i]) for i in kept]


def decode(priors: np.ndarray, variances: np.ndarray | None, loc: np.ndarray, code_type: str) -> np.ndarray:
    """Caffe's DecodeBBox for every prior at once: (P, 4) boxes from (P, 4) location predictions;
    ``variances`` None when they are encoded in the target."""
    v = loc if variances is None else variances * loc
    if code_type == "CORNER":
        return (priors + v).astype(np.float32)
    pw, ph = priors[:, 2] - priors[:, 0], priors[:, 3] - priors[:, 1]
    out = np.empty_like(priors)
    if code_type == "CORNER_SIZE":
        out[:, 0] = priors[:, 0] + v[:, 0] * pw
        out[:, 1] = priors[:, 1] + v[:, 1] * ph
        out[:, 2] = priors[:, 2] + v[:, 2] * pw
        out[:, 3] = priors[:, 3] + v[:, 3] * ph
        return out
    cx = v[:, 0] * pw + (priors[:, 0] + priors[:, 2]) / np.float32(2)
    cy = v[:, 1] * ph + (priors[:, 1] + priors[:, 3]) / np.float32(2)
    w, h = np.exp(v[:, 2]) * pw, np.exp(v[:, 3]) * ph
    out[:, 0], out[:, 1] = cx - w / np.float32(2), cy - h / np.float32(2)
    out[:, 2], out[:, 3] = cx + w / np.float32(2), cy + h / np.float32(2)
    return out


class DetectionOutput(Module):
    """Three inputs: location predictions (N, P * L * 4, ...), class confidences (N, P * C, ...)
    (softmax already applied) and PriorBox's output (1, 1 or 2, P * 4); L is 1 with
    ``share_location``, else one box per class. See the module doc for the output."""
    multi_input = True

    def __init__(self, num_classes: int, share_location: bool = True, background_label_id: int = 0,
                 nms_threshold: float = 0.3, top_k: int = -1, eta: float = 1.0, code_type: str = "CORNER",
                 variance_encoded_in_target: bool = False, keep_top_k: int = -1,
                 confidence_threshold: float | None = None, name: str | None = None):
        super().__init__(name)
        owner = f"DetectionOutput {self.name!r}"
        if num_classes < 1:
            raise ValueError(f"{owner}: num_classes must be positive, got {num_classes}")
        if code_type not in CODE_TYPES:
            raise ValueError(f"{owner}: code_type must be one of {CODE_TYPES}, got {code_type!r}")
        if nms_threshold < 0 or not 0 < eta <= 1:
            raise ValueError(f"{owner}: nms_threshold must be >= 0 and eta in (0, 1], got {nms_threshold}, {eta}")
        self.num_classes, self.share_location = int(num_classes), bool(share_location)
        self.background_label_id, self.code_type = int(background_label_id), code_type
        self.nms_threshold, self.top_k, self.eta = float(nms_threshold), int(top_k), float(eta)
        self.variance_encoded_in_target, self.keep_top_k = bool(variance_encoded_in_target), int(keep_top_k)
        self.confidence_threshold = None if confidence_threshold is None else float(confidence_threshold)

    def config(self):
        return {"num_classes": self.num_classes, "share_location": self.share_location,
                "background_label_id": self.background_label_id, "nms_threshold": self.nms_threshold,
                "top_k": self.top_k, "eta": self.eta, "code_type": self.code_type,
                "variance_encoded_in_target": self.variance_encoded_in_target, "keep_top_k": self.keep_top_k,
                "confidence_threshold": self.confidence_threshold}

    def _inputs(self, xs):
        if len(xs) < 3:
            raise ValueError(f"DetectionOutput {self.name!r} takes locations, confidences and priors, got {len(xs)} "
                             f"inputs")
        loc, conf, prior = (np.asarray(x, np.float32) for x in xs[:3])
        n = len(loc)
        if prior.ndim != 3 or prior.shape[0] != 1 or prior.shape[1] not in (1, 2) or prior.shape[2] % 4:
            raise ValueError(f"DetectionOutput {self.name!r}: priors must be (1, 2, P * 4), got {prior.shape}")
        p = prior.shape[2] // 4
        if prior.shape[1] != 2 and not self.variance_encoded_in_target:
            raise ValueError(f"DetectionOutput {self.name!r}: priors {prior.shape} lack the variances")
        locs = 1 if self.share_location else self.num_classes
        if loc[0].size != p * locs * 4 or len(conf) != n or conf[0].size != p * self.num_classes:
            raise ValueError(f"DetectionOutput {self.name!r}: {p} priors need {p * locs * 4} location and "
                             f"{p * self.num_classes} confidence values per image, got shapes {loc.shape} and "
                             f"{conf.shape}")
        return (loc.reshape(n, p, locs, 4), conf.reshape(n, p, self.num_classes), prior[0, 0].reshape(p, 4),
                None if self.variance_encoded_in_target else prior[0, 1].reshape(p, 4))

    def _image(self, loc, conf, priors, variances) -> dict[int, tuple[list[int], np.ndarray]]:
        """label -> (kept prior indices, best first, and the decoded boxes they index)."""
        threshold = -np.finfo(np.float32).max if self.confidence_threshold is None else self.confidence_threshold
        decoded = {}
        kept: dict[int, list[int]] = {}
        for c in range(self.num_classes):
            if c == self.background_label_id:
                continue
            li = 0 if self.share_location else c
            if li not in decoded:
                decoded[li] = decode(priors, variances, loc[:, li], self.code_type)
            kept[c] = nms(decoded[li], conf[:, c], threshold, self.nms_threshold, self.top_k, self.eta)
        total = sum(len(v) for v in kept.values())
        if -1 < self.keep_top_k < total:
            pairs = [(c, i) for c in sorted(kept) for i in kept[c]]
            scores = np.array([conf[i, c] for c, i in pairs], np.float32)
            best = np.argsort(-scores, kind="stable")[:self.keep_top_k]
            kept = {}
            for j in best:
                c, i = pairs[j]
                kept.setdefault(c, []).append(i)
        return {c: (idx, decoded[0 if self.share_location else c]) for c, idx in sorted(kept.items()) if idx}

    def forward(self, xs):
        loc, conf, priors, variances = self._inputs(xs)
        rows = []
        for i in range(len(loc)):
            for c, (idx, boxes) in self._image(loc[i], conf[i], priors, variances).items():
                block = np.empty((len(idx), 7), np.float32)
                block[:, 0], block[:, 1] = i, c
                block[:, 2] = conf[i, idx, c]
                block[:, 3:] = boxes[idx]
                rows.append(block)
        if rows:
            out = np.concatenate(rows)
        else:  # Caffe's "no detections": one row per image, -1 but for the image index
            out = np.full((len(loc), 7), -1, np.float32)
            out[:, 0] = np.arange(len(loc))
        self.output = out[None, None]
        return self.output

    def backward(self, xs, grad_out):
        raise RuntimeError(f"DetectionOutput {self.name!r} has no gradient (it selects boxes; Caffe defines no "
                           f"backward for it): train the layers before it with their own loss")
