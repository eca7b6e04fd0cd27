"""ONNX op -> kindling modules, for the ops that move values around: Reshape, Flatten, Squeeze,
Unsqueeze, Transpose, Concat, Split, Slice, Pad, Gather, Resize/Upsample, Identity and Cast.

Shapes: unless the conversion is exact, a converted model takes any batch size. Translators
compute target shapes from the probed input shape (batch 1) and leave the batch axis free (-1,
or 0 = 'as the input' at the front); a batch folded from Shape (fold.BATCH) or a batch the file
fixes (an export traced with batch 1 writes Reshape [1, -1]) is freed the same way.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from kindling.runtime import nn

from ..graph import ALIAS
from . import forms
from .errors import OnnxError
from .fold import BATCH, batch_derived
from .forms import required


def fail(node, problem: str):
    raise OnnxError(f"node {node.name!r} ({node.type}): {problem}")


def reshape_to(node, out_shape, batch_at: int | None, suffix: str | None = None) -> nn.Module:
    """A Reshape to ``out_shape`` (computed for the probed batch) whose axis ``batch_at`` carries
    the batch: it is left free (-1) unless shapes are exact."""
    target = [int(d) for d in out_shape]
    if not node.exact and batch_at is not None:
        target[batch_at] = -1
    return nn.Reshape(target, name=f"{node.name}/{suffix}" if suffix else node.name)


def lifted_2d(node, x, made: list) -> list:
    """A 1-D convolution or pooling run as 2-D: (N, C, L) -> (N, C, 1, L) -> modules -> (N, C', L')."""
    return [reshape_to(node, [x[0], x[1], 1, x[2]], 0, "as_2d"), *made, nn.Reshape([0, 0, -1], name=f"{node.name}/as_1d")]


# ---- shapes -------------------------------------------------------------------------------------
def reshape(node, shapes):
    x = shapes[0]
    target = [int(d) for d in (node.attr("shape") if node.opset < 5 else np.ravel(required(node, 1, "shape")))]
    if node.exact:
        return nn.Reshape(target, name=node.name)
    free = [i for i, d in enumerate(target) if batch_derived(d)]
    if not free and node.batch is not None and target and target[0] == node.batch and x[0] == 1:
        free = [0]  # the fixed batch of a traced export: keep it free
    if len(free) > 1 or (free and free[0] != 0 and -1 in target):
        fail(node, f"the target shape {target} depends on the batch size in more than one place; convert with "
                   f"--exact and a fixed batch (--input NAME=N,...)")
    for i in free:
        target[i] = 0 if i == 0 and target[i] in (BATCH, node.batch) else -1
    return nn.Reshape(target, name=node.name)


def flatten(node, shapes):
    x = shapes[0]
    axis = node.attr("axis", 1)
    axis += len(x) if axis < 0 else 0
    if axis == 1:
        if node.readers and all(r is not None and r.type == "Gemm" and not r.attr("transA", 0) for r in node.readers):
            return ALIAS  # a Linear flattens (N, ...) itself: one module, as the model it came from
        return nn.Flatten(1, -1, name=node.name)
    out = [int(np.prod(x[:axis])), int(np.prod(x[axis:]))]
    return reshape_to(node, out, 1 if axis == 0 else 0)


def squeeze(node, shapes):
    x = shapes[0]
    axes = forms.axes(node)
    if axes is None:  # every axis of size 1 (the batch too only when shapes are exact)
        axes = [i for i, d in enumerate(x) if d == 1 and (i > 0 or node.exact)]
    axes = forms.normalized_axes(axes, len(x), node)
    if any(x[a] != 1 for a in axes):
        fail(node, f"cannot squeeze axes {axes} of shape {list(x)}")
    out = [d for i, d in enumerate(x) if i not in axes]
    return reshape_to(node, out, None if 0 in axes else 0)


def unsqueeze(node, shapes):
    x = shapes[0]
    axes = forms.axes(node)
    axes = sorted(forms.normalized_axes(axes, len(x) + len(axes), node))
    out, rest = [], iter(x)
    for i in range(len(x) + len(axes)):
        out.append(1 if i in axes else next(rest))
    return reshape_to(node, out, [i for i in range(len(out)) if i not in axes][0])


def transpose(node, shapes):
    perm = node.attr("perm", list(range(len(shapes[0])))[::-1])
    return nn.Permute(list(perm), name=node.name)


def concat(node, shapes):
    if any(node.const(i) is not None for i in range(len(node.inputs))):
        fail(node, "joins computed tensors only (a constant input is not supported)")
    if len(shapes) == 1:
        return ALIAS
    return nn.Concat(axis=node.attr("axis"), name=node.name)


def split(node, shapes):
    x = shapes[0]
    axis = node.attr("axis", 0) % len(x)
    n, dim = len(node.outputs), x[axis]
    sizes = forms.split_sizes(node) if node.opset < 18 or node.has(1) else None
    if sizes is None:
        step = -(-dim // n)  # opset 18: the last part may be smaller
        sizes = [min(step, dim - i * step) for i in range(n)]
    if sum(sizes) != dim or len(sizes) != n:
        fail(node, f"split sizes {sizes} do not cut axis {axis} of size {dim} into {n} parts")
    if n == 1:
        return ALIAS
    return nn.Slice(axis, [int(p) for p in np.cumsum(sizes)[:-1]], num_outputs=n, name=node.name)


def slice_(node, shapes):
    starts, ends, axes, steps = forms.slice_args(node)
    return nn.StridedSlice(starts, ends, axes, steps, name=node.name)


def pad(node, shapes):
    x = shapes[0]
    pads, value, axes = forms.pad_args(node)
    mode = node.attr("mode", "constant")
    if axes is not None:
        axes = forms.normalized_axes(axes, len(x), node)
        full = [0] * (2 * len(x))
        for i, a in enumerate(axes):
            full[a], full[len(x) + a] = pads[i], pads[len(axes) + i]
        pads = full
    if len(pads) != 2 * len(x):
        fail(node, f"{len(pads)} pads for an input of rank {len(x)}")
    if not any(pads):
        return ALIAS
    rank = len(x)
    return nn.Pad([v for a in range(rank) for v in (pads[a], pads[rank + a])], value, mode, name=node.name)


def gather(node, shapes):
    indices = node.const(1)
    if indices is None:
        fail(node, "the indices must be constants")
    return nn.Gather(np.asarray(indices, np.int64), node.attr("axis", 0), name=node.name)


def tile(node, shapes):
    reps = [int(r) for r in np.ravel(required(node, 1, "repeats"))]
    made = [nn.Tile(axis, r, name=f"{node.name}/axis{axis}") for axis, r in enumerate(reps) if r != 1]
    if not made:
        return ALIAS
    made[-1].name = node.name
    return made


# ---- resizing -----------------------------------------------------------------------------------
def _free_batch_size(node, x, sizes):
    """Sizes over every axis: the batch's is left free (0) unless shapes are exact."""
    if sizes is None or node.exact:
        return sizes
    sizes = list(sizes)
    if sizes[0] in (BATCH, x[0], node.batch):
        sizes[0] = 0
    return sizes


def resize(node, shapes):
    x = shapes[0]
    roi, scales, sizes = forms.resize_args(node)
    axes = node.attr("axes")
    if axes is None:
        sizes = _free_batch_size(node, x, sizes)
    coords = node.attr("coordinate_transformation_mode", "half_pixel" if node.opset >= 11 else "asymmetric")
    return nn.Resize(scales=scales, sizes=sizes, axes=axes, mode=node.attr("mode", "nearest"),
                     coordinate_transformation_mode=coords,
                     nearest_mode=node.attr("nearest_mode", "round_prefer_floor" if node.opset >= 11 else "floor"),
                     cubic_coeff_a=node.attr("cubic_coeff_a", -0.75), exclude_outside=bool(node.attr("exclude_outside", 0)),
                     extrapolation_value=node.attr("extrapolation_value", 0.0), antialias=bool(node.attr("antialias", 0)),
                     keep_aspect_ratio_policy=node.attr("keep_aspect_ratio_policy", "stretch"),
                     roi=roi if coords == "tf_crop_and_resize" else None, name=node.name)


def upsample(node, shapes):
    """Upsample (opsets 7-9): the input position of output i is i / scale, nearest rounding down."""
    mode = node.attr("mode", "nearest")
    return nn.Resize(scales=forms.upsample_scales(node), mode="linear" if mode in ("linear", "bilinear") else mode,
                     coordinate_transformation_mode="asymmetric", nearest_mode="floor", name=node.name)


FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


def cast(node, shapes):
    if node.attr("to") not in FLOAT_TYPES:
        fail(node, f"a cast of a computed tensor to {TensorProto.DataType.Name(node.attr('to'))}: kindling computes "
                   f"in float32")
    return ALIAS  # kindling computes in float32 throughout


SHAPES = {
    "Reshape": reshape, "Flatten": flatten, "Squeeze": squeeze, "Unsqueeze": unsqueeze, "Transpose": transpose,
    "Concat": concat, "Split": split, "Slice": slice_, "Pad": pad, "Gather": gather, "Resize": resize,
    "Upsample": upsample, "Identity": lambda node, shapes: ALIAS, "Cast": cast, "Tile": tile,
}
