"""One batched-predict path: `kindling run`, the gRPC server and Spark scoring all call it.

    predictor = Predictor.load("ckpt/model.1200")          # weights memory-mapped, read-only
    predictor.classify(["cat.jpg", png_bytes], top_k=5)     # -> [Classification(indices, labels, scores)]
    predictor.predict({"data": x})                          # -> {"prob": y}, float32 arrays
    worker_copy = predictor.replica()                       # same weights, its own buffers

Images (paths, encoded bytes, PIL images) are preprocessed by the snapshot's recorded pipeline
(``Pipeline.from_metadata``); float arrays are taken as already preprocessed. The model runs in
evaluate mode on batches of at most ``batch_size``, and every output is copied out of the
module's reused buffers before the next batch overwrites them.

Modules reuse their buffers, so one Predictor must not run on two threads at once: give each
thread a ``replica()``. Replicas share the weight arrays (memory-mapped from the file when loaded
with ``Predictor.load``) and the weight layouts derived from them in evaluate mode (a
convolution's GEMM matrix), and own only their activations.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .data.transforms import Pipeline
from .module import Module
from .shapes import ShapeError
from .shapes import check as check_shapes

IMAGE_TYPES = (str, Path, bytes, bytearray, memoryview, Image.Image)


class InputError(ValueError):
    """Inputs that do not fit the model: wrong names, shape, dtype, or not an image or a tensor."""


@dataclass(frozen=True)
class Classification:
    """One image's top-k, best first: class indices, their labels ("" when the model has none)
    and scores (probabilities when the model ends in a softmax or log-softmax, else its outputs)."""
    indices: list[int]
    labels: list[str]
    scores: list[float]


def image_preprocessing(metadata: dict) -> dict | None:
    """The snapshot's preprocessing record, completed from its input shape (N, C, H, W): the size
    to crop to, and gray for one channel. A net that takes any H and W (-1 in its input shape)
    takes each image at its own size unless a size is recorded. None when the model does not take
    images."""
    pre = dict(metadata.get("preprocessing") or {})
    shape = metadata.get("input_shape")
    if shape and len(shape) == 4:
        if "input_size" not in pre and all(d > 0 for d in shape[2:]):
            pre["input_size"] = list(shape[2:])
        if "channel_order" not in pre and shape[1] == 1:
            pre["channel_order"] = "gray"
        if all(d <= 0 for d in shape[2:]):
            return pre
    elif not pre:
        return None
    return pre if pre.get("input_size") else None


@dataclass(frozen=True)
class Detection:
    """One detected object: its class index and label ("" without labels), score, and box
    (xmin, ymin, xmax, ymax) as fractions of the image's width and height."""
    index: int
    label: str
    score: float
    box: tuple[float, float, float, float]


def _output_module(model: Module) -> Module:
    """The module that computes the model's (first) output."""
    outputs = getattr(model, "output_names", None)
    if outputs:
        name = outputs[0].rpartition(":")[0] if outputs[0].rpartition(":")[2].isdigit() else outputs[0]
        for m in model.modules():
            if m.name == name:
                return m
    return list(model.modules())[-1]


def score_kind(model: Module) -> str:
    """How the output becomes scores: "log_softmax" (exponentiated), "softmax", "raw", or
    "detections" (SSD's DetectionOutput rows)."""
    last = type(_output_module(model)).__name__
    return {"LogSoftmax": "log_softmax", "Softmax": "softmax", "DetectionOutput": "detections"}.get(last, "raw")


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, values) of each row's k largest scores, best first; ties keep the lower index."""
    scores = np.asarray(scores).reshape(len(scores), -1)
    k = max(1, min(int(k), scores.shape[1]))
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        part.sort(axis=1)  # index order first, so the stable sort below breaks ties by index
    else:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)


def replicate(model: Module) -> Module:
    """The same model rebuilt around the same parameter and buffer arrays (and each module's
    ``shared_scratch``: weight layouts derived in evaluate mode), with its own outputs and
    scratch buffers: safe to run on another thread at the same time as ``model``."""
    from .format import rebuild
    originals = {m.name: m for m in model.modules()}

    def fill(m: Module) -> None:
        src = originals[m.name]
        m.params.update(src.params)
        m.buffers.update(src.buffers)
        m._scratch.update({k: src._scratch[k] for k in m.shared_scratch if k in src._scratch})
        m.training = src.training

    twin = rebuild(model, fill)
    twin.metadata = dict(getattr(model, "metadata", None) or {})
    return twin


def _detections_of(rows: np.ndarray, image: int) -> np.ndarray:
    """One image's rows of a detector's (1, 1, N, 7) output, as its own output (image 0), with
    Caffe's row of -1 when it has none."""
    flat = rows.reshape(-1, 7)
    mine = flat[(flat[:, 0] == image) & (flat[:, 1] >= 0)].copy()
    if not len(mine):
        mine = np.full((1, 7), -1, np.float32)
    mine[:, 0] = 0
    return mine[None, None]


def _joined_detections(chunks: list[np.ndarray], batch_size: int) -> np.ndarray:
    """A detector's rows from batches run one after another, as one batch's: image indices
    offset by each batch's start; Caffe's -1 rows kept only if nothing was found at all."""
    if len(chunks) == 1:
        return chunks[0]
    rows = []
    for k, c in enumerate(chunks):
        r = c.reshape(-1, 7).copy()
        r[:, 0] += k * batch_size
        rows.append(r)
    joined = np.concatenate(rows)
    found = joined[joined[:, 1] >= 0]
    return (found if len(found) else joined)[None, None]


class Predictor:
    """Batched inference with a model's own preprocessing, labels and scores (see the module doc)."""

    def __init__(self, model: Module, *, batch_size: int = 32, max_pixels: int | None = None):
        if batch_size <= 0:
            raise ValueError(f"Predictor: batch_size must be positive, got {batch_size}")
        self.model = model.evaluate()
        self.metadata: dict = dict(getattr(model, "metadata", None) or {})
        self.batch_size = int(batch_size)
        self.max_pixels = max_pixels
        meta = self.metadata
        self.input_names: list[str] = list(meta.get("input_names") or ["input"])
        self.output_names: list[str] | None = list(meta["output_names"]) if meta.get("output_names") else None
        self.input_shape: list[int] | None = list(meta["input_shape"]) if meta.get("input_shape") else None
        self.labels: list[str] = list(meta.get("labels") or [])
        self.preprocessing = image_preprocessing(meta) if len(self.input_names) == 1 else None
        self.pipeline = (Pipeline.from_metadata(self.preprocessing, max_pixels=max_pixels)
                         if self.preprocessing is not None else None)
        self.scores_from = score_kind(model)
        # sizes of a free-size input (-1 in input_shape) already checked against every layer,
        # shared with replicas (they have the same layers)
        self._fitting: set[tuple[int, ...]] = set()

    @classmethod
    def load(cls, path, **kwargs) -> "Predictor":
        """From a .kdl file, memory-mapped: every checksum verified, weights read-only and shared
        by the page cache with every other process serving the same file."""
        from .format import load
        return cls(load(path, mmap=True), **kwargs)

    def replica(self) -> "Predictor":
        twin = copy.copy(self)
        twin.model = replicate(self.model)
        return twin

    # ---- inputs ----------------------------------------------------------------------------------
    def sample_shape(self, batch: int = 1) -> tuple[int, ...]:
        """The recorded input shape with ``batch`` first; free dimensions (-1) take the size the
        preprocessing gives images, else the size the net was declared with (``sample_shape`` in
        the metadata), else 1."""
        if not self.input_shape:
            raise InputError("the model records no input shape")
        sample = self.metadata.get("sample_shape") or [1] * len(self.input_shape)
        dims = [d if d > 0 else max(int(s), 1) for d, s in zip(self.input_shape[1:], sample[1:])]
        size = (self.preprocessing or {}).get("input_size")
        if size and len(dims) == 3:
            dims[1:] = [d if d > 0 else s for d, s in zip(self.input_shape[2:], size)]
        return (batch, *dims)

    def check(self, x: np.ndarray, name: str | None = None) -> np.ndarray:
        """A batch for one input as float32, its shape checked against the recorded one; a size
        the net leaves free is checked against every layer (once per size), and one that does not
        fit is refused naming the layer."""
        name = name or self.input_names[0]
        a = np.asarray(x)
        if a.dtype.kind not in "fiu":
            raise InputError(f"input {name!r}: dtype {a.dtype} is not numeric (expected float32)")
        expected = self.input_shape if len(self.input_names) == 1 else None
        if expected and (a.ndim != len(expected) or any(e > 0 and e != d for e, d in zip(expected[1:], a.shape[1:]))):
            raise InputError(f"input {name!r}: shape {list(a.shape)} does not fit the model's {expected} "
                             f"(first axis is the batch)")
        if expected and min(expected[1:], default=1) <= 0 and a.shape[1:] not in self._fitting:
            try:
                check_shapes(self.model, [(1, *a.shape[1:])])
            except ShapeError as e:
                raise InputError(f"input {name!r}: shape {list(a.shape)} fits the model's {expected}, but layer "
                                 f"{e.module.name!r} ({type(e.module).__name__}) does not fit its input "
                                 f"{e.shapes[0] if len(e.shapes) == 1 else e.shapes}: {e.detail}") from e
            self._fitting.add(a.shape[1:])
        return np.asarray(a, np.float32)

    def preprocess(self, items, names: list[str] | None = None) -> np.ndarray:
        """Images (paths, encoded bytes, PIL images) through the recorded pipeline, and float
        arrays (C, H, W) taken as already preprocessed, stacked into one (N, C, H, W) batch.
        An image that fails raises its error prefixed by its name (default "image <i>")."""
        rows = self._rows(items, names)
        sizes = sorted({r.shape for r in rows})
        if len(sizes) > 1:
            raise InputError(f"the images differ in size ({', '.join('x'.join(map(str, s[1:])) for s in sizes[:4])}"
                             f"{', ...' if len(sizes) > 4 else ''}) and the model takes each at its own size: give "
                             f"them one at a time (classify does), or record an input size (--input-size)")
        return self.check(np.stack(rows))

    def _rows(self, items, names: list[str] | None = None) -> list[np.ndarray]:
        rows = []
        for i, item in enumerate(items):
            if isinstance(item, IMAGE_TYPES):
                if self.pipeline is None:
                    raise InputError("the model records no image preprocessing (no input size): give tensors")
                try:
                    rows.append(self.pipeline(item))
                except (ValueError, OSError) as e:
                    e.args = (f"{names[i] if names else f'image {i}'}: {e}",)  # keeps the error's type
                    raise
            else:
                rows.append(self.check(np.asarray(item)[None])[0])
        if not rows:
            raise InputError("no images given")
        return rows

    def predict_images(self, items, names: list[str] | None = None) -> list[list[np.ndarray]]:
        """Every model output for each image (or preprocessed (C, H, W) array), one list per
        image: images of one size run in batches together, a free-size net takes each at its own."""
        rows = self._rows(items, names)
        by_size: dict[tuple, list[int]] = {}
        for i, r in enumerate(rows):
            by_size.setdefault(r.shape, []).append(i)
        per_image: list = [None] * len(rows)
        for idx in by_size.values():
            outs = self.forward([self.check(np.stack([rows[i] for i in idx]))])
            for j, i in enumerate(idx):
                per_image[i] = ([_detections_of(outs[0], j)] if self.scores_from == "detections"
                                else [o[j:j + 1] for o in outs])
        return per_image

    # ---- the forward loop ------------------------------------------------------------------------
    def forward(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Every model output for these inputs (one array per model input, same first axis), in
        batches of ``batch_size``; outputs copied out of the model's buffers."""
        n = len(inputs[0])
        if any(len(x) != n for x in inputs):
            raise InputError(f"inputs differ in batch size: {[list(np.shape(x)) for x in inputs]}")
        chunks: list[list[np.ndarray]] = []
        for lo in range(0, max(n, 1), self.batch_size):
            batch = [x[lo:lo + self.batch_size] for x in inputs]
            y = self.model.forward(batch[0] if len(batch) == 1 else batch)
            ys = y if isinstance(y, (list, tuple)) else [y]
            chunks.append([np.array(o, np.float32, copy=True) for o in ys])  # outputs are reused buffers
        if self.scores_from == "detections":
            return [_joined_detections([c[0] for c in chunks], self.batch_size), *chunks[0][1:]]
        if len(chunks) == 1:
            return chunks[0]
        return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]

    def output_names_for(self, count: int) -> list[str]:
        if self.output_names and len(self.output_names) == count:
            return list(self.output_names)
        return [f"output{i}" for i in range(count)] if count > 1 else ["output"]

    def predict(self, inputs) -> dict[str, np.ndarray]:
        """Named outputs for an array (a one-input model) or {input name: array}."""
        if isinstance(inputs, dict):
            unknown = sorted(set(inputs) - set(self.input_names))
            missing = [k for k in self.input_names if k not in inputs]
            if unknown or missing:
                raise InputError(f"the model's inputs are {self.input_names}; "
                                 + "; ".join(p for p in (f"missing {missing}" if missing else "",
                                                         f"unknown {unknown}" if unknown else "") if p))
            xs = [self.check(inputs[k], k) for k in self.input_names]
        elif len(self.input_names) == 1:
            xs = [self.check(inputs)]
        else:
            raise InputError(f"the model has {len(self.input_names)} inputs {self.input_names}: give them by name")
        outs = self.forward(xs)
        return dict(zip(self.output_names_for(len(outs)), outs))

    # ---- classification --------------------------------------------------------------------------
    def scores(self, output: np.ndarray) -> np.ndarray:
        """(N, classes) scores from the first output."""
        s = np.asarray(output, np.float32).reshape(len(output), -1)
        return np.exp(s) if self.scores_from == "log_softmax" else s

    def top_k(self, output: np.ndarray, k: int = 5) -> list[Classification]:
        idx, vals = top_k(self.scores(output), k)
        label = (lambda i: self.labels[i] if i < len(self.labels) else "")
        return [Classification([int(i) for i in row], [label(int(i)) for i in row], [float(v) for v in vs])
                for row, vs in zip(idx, vals)]

    def detections(self, output: np.ndarray, k: int = 100) -> list[list[Detection]]:
        """A detector's rows (1, 1, N, 7: image, label, score, box) as each image's detections,
        best first, at most ``k`` of them."""
        rows = np.asarray(output, np.float32).reshape(-1, 7)
        per_image: list[list[Detection]] = [[] for _ in range(int(rows[:, 0].max(initial=-1)) + 1)]
        for r in rows[np.argsort(-rows[:, 2], kind="stable")]:
            if r[1] < 0:
                continue  # Caffe's row for an image without detections
            c = int(r[1])
            per_image[int(r[0])].append(Detection(c, self.labels[c] if c < len(self.labels) else "", float(r[2]),
                                                  tuple(float(v) for v in r[3:7])))
        return [d[:k] for d in per_image]

    def classify(self, items, top_k: int = 5) -> list[Classification]:
        """Top-k classes for each image (or preprocessed (C, H, W) float array)."""
        if top_k <= 0:
            raise InputError(f"top_k must be positive, got {top_k}")
        return [self.top_k(outs[0], top_k)[0] for outs in self.predict_images(items)]
