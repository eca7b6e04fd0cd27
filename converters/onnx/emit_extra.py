"""kindling module -> ONNX nodes for Caffe's extra layers (Power, Exp, Log, Bias, ScaleBy, Axpy,
Crop, Slice, ShuffleChannel, Upsample, Normalize, MVN, Reduction, ArgMax, Tile, ...) and for the
criterions (a loss exported as a model with an ``input`` and a ``target``)."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from .errors import OnnxError
from .writer import Writer, tensor


def _steps(w: Writer, m, x: str, steps: list) -> str:
    """x through ``(op, constant)`` steps, skipping none; the last is named after the module."""
    steps = [(op, c) for op, c in steps if op]
    if not steps:
        return w.node("Identity", [x], m.name)
    for i, (op, c) in enumerate(steps):
        ins = [x] if c is None else [x, w.const(f"{m.name}/{op.lower()}", np.float32(c))]
        x = w.node(op, ins, m.name if i == len(steps) - 1 else f"{m.name}/{op.lower()}")
    return x


def power(w, m, xs):
    return _steps(w, m, xs[0], [("Mul" if m.scale != 1 else None, m.scale), ("Add" if m.shift else None, m.shift),
                                ("Pow" if m.power != 1 else None, m.power)])


def exp(w, m, xs):
    inner, outer = float(m._inner_scale), float(m._outer_scale)
    return _steps(w, m, xs[0], [("Mul" if inner != 1 else None, inner), ("Exp", None),
                                ("Mul" if outer != 1 else None, outer)])


def log(w, m, xs):
    return _steps(w, m, xs[0], [("Mul" if m.scale != 1 else None, m.scale), ("Add" if m.shift else None, m.shift),
                                ("Log", None), ("Div" if float(m._ln_base) != 1 else None, float(m._ln_base))])


def threshold(w, m, xs):
    above = w.node("Greater", [xs[0], w.const(f"{m.name}/threshold", np.float32(m.threshold))], f"{m.name}/above")
    return w.node("Cast", [above], m.name, to=TensorProto.FLOAT)


def _aligned_shape(shape, rank: int, axis: int) -> tuple:
    axis %= rank
    return (1,) * axis + tuple(shape) + (1,) * (rank - axis - len(shape))


def bias(w, m, xs):
    b = m.params["bias"].reshape(_aligned_shape(m.shape, w.rank(xs[0]), m.axis))
    return w.node("Add", [xs[0], w.param(m, "bias", b)], m.name)


def scale_by(w, m, xs):
    x, s = xs
    rank, axis = w.rank(x), m.axis % w.rank(x)
    target = list(_aligned_shape(w.shape(s), rank, axis))
    if axis == 0:
        target[0] = 0  # s carries the batch: copy it
    s4 = w.node("Reshape", [s, w.ints(f"{m.name}/shape", target)], f"{m.name}/aligned")
    return w.node("Mul", [x, s4], m.name)


def axpy(w, m, xs):
    a, x, y = xs
    a4 = w.node("Reshape", [a, w.ints(f"{m.name}/shape", [0, 0] + [1] * (w.rank(x) - 2))], f"{m.name}/a")
    return w.node("Add", [w.node("Mul", [a4, x], f"{m.name}/ax"), y], m.name)


def crop(w, m, xs):
    x, ref = xs
    rank = w.rank(x)
    axes = list(range(m.axis % rank, rank))
    offsets = (m.offset * len(axes) if len(m.offset) == 1 else m.offset) or [0] * len(axes)
    ends = [o + w.shape(ref)[a] for o, a in zip(offsets, axes)]
    return w.node("Slice", [x, w.ints(f"{m.name}/starts", offsets), w.ints(f"{m.name}/ends", ends),
                            w.ints(f"{m.name}/axes", axes)], m.name)


def slice_(w, m, xs):
    size = w.shape(xs[0])[m.axis]
    points = [0, *m._points(size), size]
    sizes = [b - a for a, b in zip(points[:-1], points[1:])]
    return w.node("Split", [xs[0], w.ints(f"{m.name}/split", sizes)], m.name, outputs=len(sizes), axis=m.axis)


def shuffle_channel(w, m, xs):
    x = xs[0]
    n, c, *rest = w.shape(x)
    g = m.group
    grouped = w.node("Reshape", [x, w.ints(f"{m.name}/grouped", [0, g, c // g, *rest])], f"{m.name}/grouped")
    swapped = w.node("Transpose", [grouped], f"{m.name}/swapped", perm=[0, 2, 1, *range(3, len(rest) + 3)])
    return w.node("Reshape", [swapped, w.ints(f"{m.name}/shape", [0, c, *rest])], m.name)


def upsample(w, m, xs):
    scales = w.const(f"{m.name}/scales", [1.0, 1.0, float(m.scale), float(m.scale)])
    return w.node("Resize", [xs[0], "", scales], m.name, mode="nearest", coordinate_transformation_mode="asymmetric",
                  nearest_mode="floor")


def normalize(w, m, xs):
    x = xs[0]
    rank = w.rank(x)
    axes = list(range(1, rank)) if m.across_spatial else [1]
    sq = w.axes_input_or_attr("ReduceSumSquare", x, axes, f"{m.name}/sum_sq", 18, keepdims=1)
    norm = w.node("Sqrt", [w.node("Add", [sq, w.const(f"{m.name}/eps", np.float32(m.eps))], f"{m.name}/plus_eps")],
                  f"{m.name}/norm")
    weight = m.params["weight"].reshape((1,) if m.channel_shared else (m.num_channels,) + (1,) * (rank - 2))
    return w.node("Mul", [w.node("Div", [x, norm], f"{m.name}/unit"), w.param(m, "weight", weight)], m.name)


def mvn(w, m, xs):
    x = xs[0]
    rank = w.rank(x)
    axes = list(range(1 if m.across_channels else 2, rank))
    mean = w.axes_input_or_attr("ReduceMean", x, axes, f"{m.name}/mean", 18, keepdims=1)
    centred = w.node("Sub", [x, mean], f"{m.name}/centred" if m.normalize_variance else m.name)
    if not m.normalize_variance:
        return centred
    var = w.axes_input_or_attr("ReduceMean", w.node("Mul", [centred, centred], f"{m.name}/sq"), axes, f"{m.name}/var",
                               18, keepdims=1)
    std = w.node("Add", [w.node("Sqrt", [var], f"{m.name}/std"), w.const(f"{m.name}/eps", np.float32(m.eps))],
                 f"{m.name}/std_eps")
    return w.node("Div", [centred, std], m.name)


REDUCTIONS = {"sum": ("ReduceSum", 13), "mean": ("ReduceMean", 18), "asum": ("ReduceL1", 18),
              "sumsq": ("ReduceSumSquare", 18)}


def reduction(w, m, xs):
    x = xs[0]
    rank = w.rank(x)
    op, since = REDUCTIONS[m.operation]
    axes = list(range(m.axis % rank, rank))
    last = m.name if m.coeff == 1 else f"{m.name}/reduced"
    y = w.axes_input_or_attr(op, x, axes, last, since, keepdims=0)
    return y if m.coeff == 1 else w.node("Mul", [y, w.const(f"{m.name}/coeff", np.float32(m.coeff))], m.name)


def _top(w, m, x, axis: int, dim: int, last: str | None):
    """(indices as float, values) of the top_k along ``axis``, ties to the larger index (Caffe):
    TopK (whose ties go to the smaller index) over the axis reversed."""
    if m.top_k == 1:
        idx = w.node("ArgMax", [x], f"{m.name}/argmax", axis=axis, keepdims=1, select_last_index=1)
        val = w.node("ReduceMax", [x], f"{m.name}/max", axes=[axis], keepdims=1) if w.opset < 18 else \
            w.node("ReduceMax", [x, w.ints(f"{m.name}/axes", [axis])], f"{m.name}/max", keepdims=1)
        return w.node("Cast", [idx], last or f"{m.name}/index", to=TensorProto.FLOAT), val
    rev = w.node("Slice", [x, w.ints(f"{m.name}/rs", [-1]), w.ints(f"{m.name}/re", [-(1 << 62)]),
                           w.ints(f"{m.name}/ra", [axis]), w.ints(f"{m.name}/rst", [-1])], f"{m.name}/reversed")
    val, pos = w.node("TopK", [rev, w.ints(f"{m.name}/k", [m.top_k])], f"{m.name}/topk", outputs=2, axis=axis)
    idx = w.node("Sub", [w.const(f"{m.name}/last", np.int64(dim - 1), np.int64), pos], f"{m.name}/flip")
    return w.node("Cast", [idx], last or f"{m.name}/index", to=TensorProto.FLOAT), val


def argmax(w, m, xs):
    x = xs[0]
    shape = w.shape(x)
    if m.axis is not None:
        axis = m.axis % len(shape)
        if m.out_max_val:
            _, val = _top(w, m, x, axis, shape[axis], None)
            return w.node("Identity", [val], m.name)
        return _top(w, m, x, axis, shape[axis], m.name)[0]
    flat = w.node("Reshape", [x, w.ints(f"{m.name}/flat", [0, -1])], f"{m.name}/flat")
    idx, val = _top(w, m, flat, 1, int(np.prod(shape[1:])), None)
    axes = w.ints(f"{m.name}/axis1", [1])
    parts = [w.node("Unsqueeze", [idx, axes], f"{m.name}/idx")]
    if m.out_max_val:
        parts.append(w.node("Unsqueeze", [val, axes], f"{m.name}/val"))
    joined = w.node("Concat", parts, f"{m.name}/pairs", axis=1) if len(parts) > 1 else parts[0]
    target = [0, len(parts), m.top_k] + [1] * (max(len(shape), 3) - 3)
    return w.node("Reshape", [joined, w.ints(f"{m.name}/shape", target)], m.name)


def tile(w, m, xs):
    reps = [1] * w.rank(xs[0])
    reps[m.axis % len(reps)] = m.tiles
    return w.node("Tile", [xs[0], w.ints(f"{m.name}/repeats", reps)], m.name)


# ---- Caffe forks' layers --------------------------------------------------------------------------------
def mish(w, m, xs):
    soft = w.node("Softplus", xs[:1], f"{m.name}/softplus")
    return w.node("Mul", [xs[0], w.node("Tanh", [soft], f"{m.name}/tanh")], m.name)


def prior_box(w, m, xs):
    """SSD's priors depend only on the feature map's and the image's sizes, which the export
    fixes: one constant, computed by the module itself."""
    priors = m.forward([np.zeros(w.shape(x), np.float32) for x in xs])
    return w.node("Constant", [], m.name, value=tensor(np.asarray(priors, np.float32), f"{m.name}.priors"))


def _not_exported(why: str):
    def fn(w, m, xs):
        raise OnnxError(f"module {m.name!r}: {type(m).__name__} has no ONNX export: {why}")
    return fn


# Types the export refuses, naming the module and saying why
NOT_EXPORTED = {
    "Interp": "not exported yet (ONNX's Resize with align_corners is its rule, but the writer for it and for its "
              "pad_beg/pad_end crop is not done); export the net before it (convert caffe --outputs)",
    "Reorg": "not exported yet (the Caffe ports' channel order is not ONNX's SpaceToDepth's)",
    "ROIPooling": "not exported yet (ONNX's MaxRoiPool is not checked against Caffe's rounding of region edges)",
    "PSROIPooling": "ONNX has no position-sensitive region pooling",
    "DetectionOutput": "SSD's decoding, per-class NMS and keep_top_k in Caffe's row order have no ONNX equivalent; "
                       "export the net up to the DetectionOutput's inputs (convert caffe --outputs)",
}


# ---- criterions: a loss as a model with an input and a target ------------------------------------------
def _loss(op):
    def fn(w, m, xs):
        x, target = xs
        ins = [x, target] + ([w.param(m, "weights", m.weights)] if m.weights is not None else [])
        y = w.node(op, ins, m.name, reduction="mean" if m.size_average else "sum")
        w.shapes[y] = ()
        return y
    return fn


def mse(w, m, xs):
    d = w.node("Sub", xs, f"{m.name}/diff")
    sq = w.node("Mul", [d, d], f"{m.name}/sq")
    y = w.node("ReduceMean" if m.size_average else "ReduceSum", [sq], m.name, keepdims=0)
    w.shapes[y] = ()
    return y


EXTRA = {
    "Power": power, "Exp": exp, "Log": log, "Threshold": threshold,
    "AbsVal": lambda w, m, xs: w.node("Abs", xs[:1], m.name),
    "BNLL": lambda w, m, xs: w.node("Softplus", xs[:1], m.name),
    "Bias": bias, "ScaleBy": scale_by, "Axpy": axpy, "Crop": crop, "Slice": slice_, "ShuffleChannel": shuffle_channel,
    "Upsample": upsample, "Normalize": normalize, "MVN": mvn, "Reduction": reduction, "ArgMax": argmax, "Tile": tile,
    "ClassNLLCriterion": _loss("NegativeLogLikelihoodLoss"), "CrossEntropyCriterion": _loss("SoftmaxCrossEntropyLoss"),
    "MSECriterion": mse,
    "Mish": mish, "AlphaDropout": lambda w, m, xs: w.node("Identity", xs[:1], m.name),  # exported in evaluate mode
    "PriorBox": prior_box, **{k: _not_exported(why) for k, why in NOT_EXPORTED.items()},
}
CRITERIONS = {"ClassNLLCriterion": TensorProto.INT64, "CrossEntropyCriterion": TensorProto.INT64,
              "MSECriterion": TensorProto.FLOAT}  # the target's type

