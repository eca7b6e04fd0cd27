"""Parity on the spot: run the converted model and a reference on the same input and compare every
layer, in execution order and unsorted, stopping at the first layer over the tolerance, so the layer
where a conversion went wrong is named (a wrong final output alone says nothing about where).

A converter records ``model.sources``: kindling module name (or "name:i" for the i-th output of a
module with several) -> the reference's own name for that tensor. A reference is anything with a
``name`` and ``run(inputs, tensors) -> {tensor: array or None}`` giving the reference's values in
kindling's layout (NCHW); it answers None for a tensor it cannot align (a flatten of NHWC data),
which the table shows as not compared. A reference may also carry ``inputs`` (stored outputs come
with the inputs they were computed from). Each framework's references live beside its converter
(converters/caffe/reference.py: OpenCV's dnn module); stored outputs (``NpzReference``) serve all.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from kindling.runtime.errors import DataError
from kindling.runtime.module import Module
from kindling.runtime.npy import read_npz

from .graph import ConversionError


class Reference(Protocol):
    name: str

    def run(self, inputs: dict[str, np.ndarray], tensors: list[str]) -> dict[str, np.ndarray | None]:
        ...


@dataclass
class Row:
    module: str
    type: str
    tensor: str
    shape: tuple
    max_abs: float | None = None   # None: not compared
    max_rel: float | None = None   # max abs difference over the reference's largest magnitude
    ok: bool = True
    note: str = ""


@dataclass
class Report:
    reference: str
    rows: list[Row] = field(default_factory=list)

    @property
    def first_failure(self) -> Row | None:
        return next((r for r in self.rows if not r.ok), None)

    def table(self) -> str:
        lines = [f"{'layer':<28} {'type':<18} {'shape':<20} {'max abs':>10} {'max rel':>10}  vs {self.reference}"]
        for r in self.rows:
            shown = (f"{r.max_abs:>10.3g} {r.max_rel:>10.3g}" if r.max_abs is not None
                     else f"{'-':>10} {'-':>10}  {r.note or 'not compared'}")
            flag = "  <-- over the tolerance" if not r.ok else ""
            lines.append(f"{r.module[:28]:<28} {r.type[:18]:<18} {str(list(r.shape))[:20]:<20} {shown}{flag}")
        return "\n".join(lines)


class NpzReference:
    """Stored outputs: an .npz with the model's inputs under their names and reference tensors under
    theirs (what the source framework computed, saved where it ran)."""

    def __init__(self, path, input_names: list[str]):
        self.name = Path(path).name
        try:
            self.arrays = read_npz(path)
        except DataError as e:
            raise ConversionError(f"cannot read stored reference outputs: {e}") from e
        missing = [n for n in input_names if n not in self.arrays]
        if missing:
            raise ConversionError(f"{path}: no arrays for the model's inputs {missing}; it holds {sorted(self.arrays)}")
        self.inputs = {n: np.asarray(self.arrays[n], np.float32) for n in input_names}

    def run(self, inputs, tensors):
        return {t: self.arrays.get(t) for t in tensors}


_CLASS_DEFAULT = object()


@contextlib.contextmanager
def _capturing(model: Module, taps: list):
    """Every module's output, copied as it is computed (modules reuse their output buffers), with
    fusion off so that each layer runs, and is seen, on its own."""
    saved = []
    for m in model.modules():
        if hasattr(m, "fuse"):  # containers that fuse Conv2d -> BatchNorm -> ReLU in evaluate mode
            saved.append((m, m.__dict__.get("fuse", _CLASS_DEFAULT)))
            m.fuse = False
        original = m.forward

        def forward(x, *args, m=m, original=original, **kwargs):
            y = original(x, *args, **kwargs)
            taps.append((m, [np.array(o, np.float32) for o in y] if isinstance(y, (list, tuple))
                         else np.array(y, np.float32)))
            return y
        m.forward = forward
    try:
        yield
    finally:
        for m in model.modules():
            m.__dict__.pop("forward", None)
        for m, fuse in saved:
            if fuse is _CLASS_DEFAULT:
                m.__dict__.pop("fuse", None)
            else:
                m.fuse = fuse


def capture(model: Module, inputs: dict[str, np.ndarray]) -> list[tuple[Module, object]]:
    """(module, output) for every module in the order they ran, in evaluate mode."""
    names = (model.metadata or {}).get("input_names") or list(inputs)
    xs = [inputs[n] for n in names]
    taps: list = []
    training = model.training
    model.evaluate()
    try:
        with _capturing(model, taps):
            model.forward(xs[0] if len(xs) == 1 else xs)
    finally:
        model.train(training)
    return taps


def _outputs_of(module: Module, y) -> list[tuple[str, np.ndarray]]:
    if isinstance(y, list):
        return [(f"{module.name}:{i}", o) for i, o in enumerate(y)]
    return [(module.name, y)]


def _matched_rows(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray | None:
    """Detections (rows [image, label, score, box...]) are a set: the reference's rows reordered to
    match ours (same image and label, nearest values), its all-zero padding dropped (OpenCV pads to
    keep_top_k rows and sorts by score; Caffe groups by label). None when the counts differ."""
    ours, theirs = ours.reshape(-1, ours.shape[-1]), theirs.reshape(-1, theirs.shape[-1])
    theirs = theirs[np.abs(theirs).sum(axis=1) > 0] if len(theirs) > len(ours) else theirs
    if (ours[:, 1] == -1).all() and not np.abs(theirs).any():
        return ours  # no detections on either side (Caffe writes a row of -1 per image, OpenCV zeros)
    if theirs.shape != ours.shape:
        return None
    free = list(range(len(theirs)))
    matched = np.empty_like(theirs)
    for i, row in enumerate(ours):
        same = [j for j in free if theirs[j, 0] == row[0] and theirs[j, 1] == row[1]] or free
        j = min(same, key=lambda j: float(np.abs(theirs[j] - row).max()))
        free.remove(j)
        matched[i] = theirs[j]
    return matched


# Module types whose output rows are a set, compared as such (see _matched_rows).
ROW_SETS = {"DetectionOutput"}


def _compare(ours: np.ndarray, theirs, atol: float, rtol: float,
             rows_are_a_set: bool = False) -> tuple[float | None, float | None, bool, str]:
    if theirs is None:
        return None, None, True, "the reference cannot align it"
    theirs = np.asarray(theirs, np.float32)
    if rows_are_a_set and ours.ndim >= 2:
        matched = _matched_rows(ours, theirs)
        if matched is None:
            return None, None, False, f"{ours.reshape(-1, ours.shape[-1]).shape[0]} rows (detections) vs the " \
                                      f"reference's {len(theirs.reshape(-1, theirs.shape[-1]))}"
        theirs = matched.reshape(ours.shape)
    if theirs.shape != ours.shape:
        if theirs.size != ours.size:
            return None, None, False, f"shape {list(ours.shape)} vs the reference's {list(theirs.shape)}"
        theirs = theirs.reshape(ours.shape)  # (N, C) vs (N, C, 1, 1): the same values
    diff = float(np.abs(ours - theirs).max()) if ours.size else 0.0
    scale = float(np.abs(theirs).max()) if theirs.size else 0.0
    rel = diff / scale if scale > 0 else diff
    return diff, rel, diff <= atol + rtol * scale, ""


def verify(model: Module, reference: Reference, inputs: dict[str, np.ndarray] | None = None, *,
           atol: float = 1e-4, rtol: float = 1e-4) -> Report:
    """Compares every module that has a source tensor with the reference, in execution order;
    rows stop after the first layer over ``atol + rtol * (the reference's largest magnitude)``."""
    inputs = inputs if inputs is not None else getattr(reference, "inputs", None)
    if inputs is None:
        raise ValueError("verify: no inputs given and the reference stores none")
    sources = getattr(model, "sources", None) or {}
    taps = capture(model, inputs)
    wanted = [(m, ref, y) for m, out in taps for ref, y in _outputs_of(m, out) if ref in sources]
    theirs = reference.run(inputs, [sources[ref] for _, ref, _ in wanted])
    report = Report(reference.name)
    for m, ref, y in wanted:
        diff, rel, ok, note = _compare(y, theirs.get(sources[ref]), atol, rtol, type(m).__name__ in ROW_SETS)
        report.rows.append(Row(ref, type(m).__name__, sources[ref], tuple(y.shape), diff, rel, ok, note))
        if not ok:
            break
    return report


def random_inputs(model: Module, seed: int = 0, batch: int = 2) -> dict[str, np.ndarray]:
    """Seeded standard-normal inputs of the model's declared input shape (batch ``batch``); the
    dimensions it leaves free take the size it was declared with (its sample shape)."""
    meta = model.metadata or {}
    names = meta.get("input_names") or ["input"]
    shape = meta.get("input_shape")
    if shape and meta.get("sample_shape"):
        shape = [d if d > 0 else s for d, s in zip(shape, meta["sample_shape"])]
    if not shape or len(names) != 1 or any(d <= 0 for d in shape[1:]):
        raise ValueError("verify: the model's input shape is not fixed; give the inputs (--verify-input FILE.npz)")
    rng = np.random.default_rng(seed)
    return {names[0]: rng.standard_normal([batch, *shape[1:]]).astype(np.float32)}
