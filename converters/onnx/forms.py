"""Parameters that moved between attributes and inputs as ONNX opsets went by, one small function
per form and a table of the opset each form starts at. Both the constant folder and the
translators read them through here.

    Squeeze/Unsqueeze axes: attribute before 13, input 1 from 13
    Split sizes: attribute before 13, input 1 from 13 (18 adds num_outputs)
    Slice starts/ends/axes/steps: attributes before 10, inputs from 10
    Pad pads/value: attributes before 11, inputs from 11 (18 adds axes)
    Clip min/max: attributes before 11, inputs from 11
    Resize: (X, scales) in 10, (X, roi, scales, sizes) from 11; Upsample: scales attribute in 7,
    input from 9
"""
from __future__ import annotations

import numpy as np

from .errors import OnnxError


def ints(v) -> list[int] | None:
    return None if v is None else [int(i) for i in np.asarray(v).reshape(-1)]


def floats(v) -> list[float] | None:
    return None if v is None else [float(i) for i in np.asarray(v).reshape(-1)]


def by_opset(*forms):
    """``(first opset, fn), ...`` -> a function that calls the form the node's opset uses."""
    def pick(node, *args):
        fn = [f for since, f in forms if node.opset >= since][-1]
        return fn(node, *args)
    return pick


def required(node, i: int, what: str):
    """Input i's constant value; an error names the node when it is missing or computed."""
    if not node.has(i):
        raise OnnxError(f"node {node.name!r} ({node.type}): input {i} ({what}) is missing")
    v = node.const(i)
    if v is None:
        raise OnnxError(f"node {node.name!r} ({node.type}): input {node.inputs[i]!r} ({what}) must be a constant "
                        f"(an initializer, or computed from constants and shapes); kindling keeps it inside the module")
    return v


axes = by_opset((1, lambda n: ints(n.attr("axes"))), (13, lambda n: ints(n.const(1))))

split_sizes = by_opset((1, lambda n: ints(n.attr("split"))), (13, lambda n: ints(n.const(1))))


def _slice_attrs(n):
    return ints(n.attr("starts")), ints(n.attr("ends")), ints(n.attr("axes")), None


def _slice_inputs(n):
    return (ints(required(n, 1, "starts")), ints(required(n, 2, "ends")), ints(n.const(3)),
            ints(n.const(4)))


slice_args = by_opset((1, _slice_attrs), (10, _slice_inputs))


def _pad_attrs(n):
    return ints(n.attr("pads", n.attr("paddings"))), float(n.attr("value", 0.0)), None


def _pad_inputs(n):
    value = n.const(2)
    return ints(required(n, 1, "pads")), 0.0 if value is None or np.size(value) == 0 else float(np.ravel(value)[0]), \
        ints(n.const(3))


pad_args = by_opset((1, _pad_attrs), (11, _pad_inputs))


def _clip_attrs(n):
    return n.attr("min"), n.attr("max")


def _clip_inputs(n):
    def bound(i):
        v = n.const(i)
        return None if v is None or np.size(v) == 0 else float(np.ravel(v)[0])
    return bound(1), bound(2)


clip_bounds = by_opset((1, _clip_attrs), (11, _clip_inputs))


def _empty_to_none(v):
    return None if v is None or np.size(v) == 0 else v


def _resize_10(n):
    return None, floats(required(n, 1, "scales")), None


def _resize_11(n):
    scales, sizes = _empty_to_none(n.const(2)), _empty_to_none(n.const(3))
    if scales is None and sizes is None:
        raise OnnxError(f"node {n.name!r} ({n.type}): needs constant scales or sizes")
    return floats(_empty_to_none(n.const(1))), floats(scales), ints(sizes)


resize_args = by_opset((10, _resize_10), (11, _resize_11))

upsample_scales = by_opset((1, lambda n: floats(n.attr("scales"))), (9, lambda n: floats(required(n, 1, "scales"))))


def normalized_axes(values, rank: int, node) -> list[int]:
    out = []
    for a in values:
        if not -rank <= a < rank:
            raise OnnxError(f"node {node.name!r} ({node.type}): axis {a} is out of range for rank {rank}")
        out.append(a % rank)
    return out
