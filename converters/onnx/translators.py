"""ONNX op -> kindling modules, for the compute ops: convolutions, Gemm/MatMul, arithmetic,
activations, pooling and normalisation (shape_ops.py has the ops that move values around).

A translator is ``fn(node, shapes) -> Module | [Module, ...] | ALIAS``: ``node`` is an OnnxNode
(attributes in ``node.attrs``, constant inputs in ``node.weights``), ``shapes`` the shapes of its
computed inputs. The module holding the node's weights is named after the node. Where semantics
changed between opsets, each version is its own small function (forms.by_opset).
"""
from __future__ import annotations

import math

import numpy as np

from kindling.runtime import init, nn

from ..graph import ALIAS
from . import forms
from .errors import OnnxError
from .forms import by_opset, required
from .shape_ops import lifted_2d, reshape_to


def fail(node, problem: str):
    raise OnnxError(f"node {node.name!r} ({node.type}): {problem}")


def f32(v) -> np.ndarray:
    return np.ascontiguousarray(v, dtype=np.float32)


# ---- padding rules shared by convolutions and pooling ------------------------------------------
def same_pads(mode: str, sizes, kernel, strides, dilations):
    """auto_pad SAME_UPPER / SAME_LOWER: the output is ceil(size / stride); the odd pixel of
    padding goes at the end (UPPER) or the start (LOWER)."""
    begins, ends = [], []
    for size, k, s, d in zip(sizes, kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small = total // 2
        begins.append(small if mode == "SAME_UPPER" else total - small)
        ends.append(total - begins[-1])
    return begins, ends


def window(node, sizes, kernel):
    """(strides, dilations, pad begins, pad ends) of a convolution or pooling node."""
    rank = len(kernel)
    strides = list(node.attr("strides", [1] * rank))
    dilations = list(node.attr("dilations", [1] * rank))
    auto = node.attr("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = same_pads(auto, sizes, kernel, strides, dilations)
    elif auto == "VALID":
        begins, ends = [0] * rank, [0] * rank
    else:
        pads = list(node.attr("pads", [0] * 2 * rank))
        begins, ends = pads[:rank], pads[rank:]
    return strides, dilations, begins, ends


def pad_pairs(begins, ends, rank: int) -> list[int]:
    """nn.Pad's layout, (before, after) for every axis, from ONNX's spatial begins and ends."""
    lead = [0] * 2 * (rank - len(begins))
    return lead + [v for b, e in zip(begins, ends) for v in (b, e)]


def _pad_first(node, begins, ends, modules: list, value: float = 0.0) -> list:
    """Asymmetric padding: a Pad of the spatial axes before the module (which pads nothing)."""
    return [nn.Pad(pad_pairs(begins, ends, 2 + len(begins)), value, name=f"{node.name}/pad"), *modules]


# ---- convolutions, Gemm, MatMul ---------------------------------------------------------------
def conv(node, shapes):
    x = shapes[0]
    w, b = f32(required(node, 1, "weight")), node.const(2)
    kernel = list(node.attr("kernel_shape", w.shape[2:]))
    group = node.attr("group", 1)
    if w.shape[1] * group != x[1]:
        fail(node, f"weight {list(w.shape)} with group {group} does not fit {x[1]} input channels")
    strides, dilations, begins, ends = window(node, x[2:], kernel)
    symmetric = begins == ends

    def build(k, s, d, p, weight):
        with init.deferred():
            m = nn.Conv2d(x[1], w.shape[0], k, s, p, d, group, b is not None, name=node.name)
        m.params["weight"] = f32(weight)
        if b is not None:
            m.params["bias"] = f32(b)
        return m
    if len(kernel) == 1:
        m = build((1, kernel[0]), (1, strides[0]), (1, dilations[0]), (0, begins[0] if symmetric else 0), w[:, :, None])
        return lifted_2d(node, x, [m] if symmetric else _pad_first(node, [0, begins[0]], [0, ends[0]], [m]))
    m = build(kernel, strides, dilations, begins if symmetric else 0, w)
    return [m] if symmetric else _pad_first(node, begins, ends, [m])


def conv_transpose(node, shapes):
    x = shapes[0]
    w, b = f32(required(node, 1, "weight")), node.const(2)
    group = node.attr("group", 1)
    kernel = list(node.attr("kernel_shape", w.shape[2:]))
    rank = len(kernel)
    strides = list(node.attr("strides", [1] * rank))
    dilations = list(node.attr("dilations", [1] * rank))
    out_pad = list(node.attr("output_padding", [0] * rank))
    full = [(n - 1) * s + (k - 1) * d + 1 + op for n, s, d, k, op in zip(x[2:], strides, dilations, kernel, out_pad)]
    auto, wanted = node.attr("auto_pad", "NOTSET"), node.attr("output_shape")
    if wanted is None and auto in ("SAME_UPPER", "SAME_LOWER"):
        wanted = [n * s for n, s in zip(x[2:], strides)]
    if wanted is not None:  # pads from the output shape (they may be negative: the output grows)
        totals = [f - o for f, o in zip(full, wanted[-rank:])]
        ends = [t // 2 if auto != "SAME_UPPER" else t - t // 2 for t in totals]
        begins = [t - e for t, e in zip(totals, ends)]
    elif auto == "VALID":
        begins, ends = [0] * rank, [0] * rank
    else:
        pads = list(node.attr("pads", [0] * 2 * rank))
        begins, ends = pads[:rank], pads[rank:]
    lift = rank == 1
    if lift:
        w, kernel, strides, dilations, out_pad = w[:, :, None], [1, *kernel], [1, *strides], [1, *dilations], [0, *out_pad]
        begins, ends = [0, *begins], [0, *ends]
    symmetric = begins == ends and min(begins) >= 0
    grows = min(begins + ends) < 0
    with init.deferred():
        m = nn.ConvTranspose2d(x[1], w.shape[1] * group, kernel, strides, begins if symmetric else 0, out_pad, group,
                               b is not None and not grows, dilations, name=node.name)
    m.params["weight"] = w
    made = [m]
    if not symmetric:  # crop (and where the output grows, zeros) with one Pad of negated amounts
        made.append(nn.Pad(pad_pairs([-p for p in begins], [-p for p in ends], 4), name=f"{node.name}/crop"))
    if b is not None and grows:
        made.append(nn.BinaryOp("add", constant=f32(b).reshape(-1, 1, 1), name=f"{node.name}/bias"))
    elif b is not None:
        m.params["bias"] = f32(b)
    return lifted_2d(node, x, made) if lift else made


def _linear(node, weight, bias, name):
    with init.deferred():
        m = nn.Linear(weight.shape[1], weight.shape[0], bias is not None, name=name)
    m.params["weight"] = f32(weight)
    if bias is not None:
        m.params["bias"] = f32(bias)
    return m


def gemm(node, shapes):
    """alpha * A' B' + beta * C, B and C constants: a Linear (C of one value per output as its bias,
    a C matrix added after)."""
    b, c = required(node, 1, "B"), node.const(2)
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    weight = (b if node.attr("transB", 0) else b.T) * alpha
    n = weight.shape[0]
    c = None if c is None or beta == 0 else np.asarray(c, np.float32) * beta
    per_output = c is not None and (c.size == 1 or c.shape[-1:] == (n,)) and c.size in (1, n)
    made = [_linear(node, weight, np.broadcast_to(c.reshape(-1), (n,)) if per_output else None, node.name)]
    if node.attr("transA", 0):
        made.insert(0, nn.Permute([1, 0], name=f"{node.name}/transpose_a"))
    if c is not None and not per_output:
        made.append(nn.BinaryOp("add", constant=c, name=f"{node.name}/add_c"))
    return made


def matmul(node, shapes):
    b = node.const(1)
    a = node.const(0)
    if b is not None and b.ndim == 2 and len(shapes[0]) >= 2:
        lin = _linear(node, np.asarray(b).T, None, node.name)
        if len(shapes[0]) == 2:
            return lin
        lead = list(shapes[0][1:-1])  # the axes after the batch stay; the last becomes b's columns
        return [nn.Reshape([-1, b.shape[0]], name=f"{node.name}/flatten"), lin,
                nn.Reshape([-1, *lead, b.shape[1]], name=f"{node.name}/unflatten")]
    if a is not None or b is not None:
        return nn.BinaryOp("matmul", constant=f32(a if a is not None else b), constant_first=a is not None,
                           name=node.name)
    return nn.BinaryOp("matmul", name=node.name)


# ---- arithmetic ---------------------------------------------------------------------------------
def binary(op: str):
    """Add, Sub, Mul, Div, Pow (and PRelu with a slope tensor): two computed inputs, or one and a
    constant the module holds."""
    def translate(node, shapes):
        a, b = node.const(0), node.const(1)
        if a is not None and b is not None:
            fail(node, "both inputs are constants (it should have been folded)")
        if op == "add" and a is None and b is None:
            return nn.Add(name=node.name)  # a residual sum: the fast same-shape path
        if a is None and b is None:
            return nn.BinaryOp(op, name=node.name)
        return nn.BinaryOp(op, constant=f32(a if a is not None else b), constant_first=a is not None, name=node.name)
    return translate


def variadic(join, op: str):
    """Sum, Max, Min, Mean of any number of computed inputs (a single constant one is held)."""
    def translate(node, shapes):
        given = [i for i in range(len(node.inputs)) if node.has(i)]
        consts = [node.const(i) for i in given if node.const(i) is not None]
        if len(given) == 1:
            return ALIAS
        if consts and (len(consts) > 1 or len(given) > 2 or op == "mean"):
            fail(node, "takes constant inputs only as the one other operand of Sum, Max or Min")
        if consts:
            return nn.BinaryOp(op, constant=f32(consts[0]), name=node.name)
        if op == "mean":
            return nn.Add(coeffs=[1.0 / len(given)] * len(given), name=node.name)
        return join(name=node.name)
    return translate


def prelu(node, shapes):
    slope = node.const(1)
    if slope is None:
        return nn.BinaryOp("prelu", name=node.name)
    x = shapes[0]
    aligned = np.reshape(slope, (1,) * (len(x) - np.ndim(slope)) + np.shape(slope))
    per_channel = len(x) >= 2 and all(d == 1 for i, d in enumerate(aligned.shape) if i != 1)
    if slope.size == 1 or (per_channel and aligned.shape[1] == x[1]):
        m = nn.PReLU(int(slope.size), name=node.name)
        m.params["weight"] = f32(np.reshape(slope, -1))
        return m
    return nn.BinaryOp("prelu", constant=f32(slope), name=node.name)


def clip(node, shapes):
    lo, hi = forms.clip_bounds(node)
    if node.opset >= 11 and any(node.has(i) and node.const(i) is None for i in (1, 2)):
        fail(node, "min and max must be constants")
    if lo is None and hi is None:
        return ALIAS
    if lo == 0 and hi is None:
        return nn.ReLU(name=node.name)
    if lo is not None and hi is not None and lo > hi:  # ONNX: every value becomes max
        lo = hi
    return nn.Clip(lo, hi, name=node.name)


# ---- activations --------------------------------------------------------------------------------
def _softmax_legacy(cls):
    """Before opset 13: the input is seen as 2-D, [d0 * ... * d(axis-1), the rest], and softmax
    runs over the whole second part."""
    def translate(node, shapes):
        x = shapes[0]
        axis = node.attr("axis", 1) % len(x)
        if axis == len(x) - 1:
            return cls(axis=-1, name=node.name)
        flat = [int(np.prod(x[:axis])), int(np.prod(x[axis:]))]
        return [reshape_to(node, flat, 0 if axis else 1, "flatten"), cls(axis=1, name=node.name),
                reshape_to(node, x, 0, "unflatten")]
    return translate


def _softmax(cls):
    return lambda node, shapes: cls(axis=node.attr("axis", -1), name=node.name)


def _simple(cls, **attrs):
    """cls with the node's attributes (ONNX name -> kindling argument, default)."""
    return lambda node, shapes: cls(**{arg: node.attr(key, d) for arg, (key, d) in attrs.items()}, name=node.name)


def dropout(node, shapes):
    ratio = node.attr("ratio", 0.5) if node.opset < 12 else float(np.ravel(node.const(1, 0.5))[0])
    return nn.Dropout(min(ratio, 0.99), name=node.name)


# ---- pooling ------------------------------------------------------------------------------------
def pool(cls, max_pool: bool):
    def translate(node, shapes):
        x = shapes[0]
        kernel = list(node.attr("kernel_shape"))
        strides, dilations, begins, ends = window(node, x[2:], kernel)
        ceil = bool(node.attr("ceil_mode", 0))
        include_pad = bool(node.attr("count_include_pad", 0))
        if ceil and max_pool:  # ONNX's ceil rule (the last window starts inside the input or its left
            ends = ceil_padding(x[2:], kernel, strides, begins, ends)  # padding) as padding at the end
            ceil = False
        lift = len(kernel) == 1
        if lift:
            kernel, strides, begins, ends = [1, *kernel], [1, *strides], [0, *begins], [0, *ends]
        symmetric = begins == ends
        args = dict(kernel_size=kernel, stride=strides, padding=begins if symmetric else 0, ceil_mode=ceil)
        m = cls(**args, name=node.name) if max_pool else cls(**args, count_include_pad=include_pad, name=node.name)
        made = [m]
        if not symmetric:
            made = _pad_first(node, begins, ends, made, -np.inf if max_pool else 0.0)
            if not max_pool and not include_pad:  # the padding must not count: rescale by the true window sizes
                made.append(nn.BinaryOp("mul", constant=_window_counts(kernel, strides, begins, ends, ceil, x, lift),
                                        name=f"{node.name}/exclude_pad"))
        return lifted_2d(node, x, made) if lift else made
    return translate


def ceil_padding(sizes, kernel, strides, begins, ends) -> list[int]:
    """End padding that makes floor rounding give ONNX's ceil-mode output size."""
    out = []
    for n, k, s, b, e in zip(sizes, kernel, strides, begins, ends):
        size = math.ceil((n + b + e - k) / s) + 1
        if (size - 1) * s >= n + b:
            size -= 1
        out.append(max(e, (size - 1) * s + k - n - b))
    return out


def _window_counts(kernel, strides, begins, ends, ceil, x, lifted):
    """kernel area / the number of input (not padding) values in each window, as a (1, 1, OH, OW)
    constant: an average over a padded input times this is the average over the input alone."""
    size = [1, *x[2:]] if lifted else list(x[2:])
    ones = np.pad(np.ones(size, np.float32), list(zip(begins, ends)))[None, None]
    m = nn.AvgPool2d(kernel, strides, 0, ceil, count_include_pad=True)
    covered = m.forward(ones) * (kernel[0] * kernel[1])
    return f32(kernel[0] * kernel[1] / covered)


def global_pool(cls):
    def translate(node, shapes):
        x = shapes[0]
        m = cls(global_pooling=True, name=node.name)
        if len(x) == 4:
            return m
        flat = [x[0], x[1], 1, int(np.prod(x[2:]))]
        return [reshape_to(node, flat, 0, "as_2d"), m, reshape_to(node, [x[0], x[1], *[1] * (len(x) - 2)], 0, "as_nd")]
    return translate


def reduce(op: str, axes_input_since: int):
    """ReduceSum/Mean/Max/Min: axes an attribute, an input from ``axes_input_since`` (13 for
    ReduceSum, 18 for the others); no axes means all, unless noop_with_empty_axes."""
    def translate(node, shapes):
        axes = forms.ints(node.attr("axes") if node.opset < axes_input_since else node.const(1))
        if not axes:
            if node.attr("noop_with_empty_axes", 0):
                return ALIAS
            axes = None
        return nn.ReduceAxes(op, axes, bool(node.attr("keepdims", 1)), name=node.name)
    return translate


# ---- normalisation ------------------------------------------------------------------------------
def batch_norm(node, shapes):
    names = ("scale", "B", "mean", "var")
    scale, bias, mean, var = (f32(required(node, i + 1, what)) for i, what in enumerate(names))
    m = nn.BatchNorm2d(scale.size, eps=node.attr("epsilon", 1e-5), momentum=1 - node.attr("momentum", 0.9),
                       name=node.name)
    m.params["weight"], m.params["bias"] = scale, bias
    m.buffers["running_mean"], m.buffers["running_var"] = mean, var
    return m


def instance_norm(node, shapes):
    scale, bias = f32(required(node, 1, "scale")), f32(required(node, 2, "B"))
    m = nn.InstanceNorm(scale.size, eps=node.attr("epsilon", 1e-5), name=node.name)
    m.params["weight"], m.params["bias"] = scale, bias
    return m


def lrn(node, shapes):
    """ONNX sums the channels c - floor((size-1)/2) .. c + ceil((size-1)/2); kindling (Caffe,
    PyTorch) c - size//2 .. c + (size-1)//2. The same for odd sizes; an even size is the
    mirror image, so the channels are reversed around it."""
    size = node.attr("size")
    m = nn.LocalResponseNorm(size, node.attr("alpha", 1e-4), node.attr("beta", 0.75), node.attr("bias", 1.0),
                             name=node.name)
    if size % 2:
        return m
    flip = dict(starts=[-1], ends=[-(1 << 62)], axes=[1], steps=[-1])
    return [nn.StridedSlice(**flip, name=f"{node.name}/reverse"), m, nn.StridedSlice(**flip, name=f"{node.name}/restore")]


def reduce_then(first, op: str, axes_input_since: int):
    """ReduceL1 / ReduceSumSquare: an elementwise step, then the sum over the axes."""
    reduce_ = reduce(op, axes_input_since)

    def translate(node, shapes):
        made = reduce_(node, shapes)
        return [first(name=f"{node.name}/elementwise"), made] if made is not ALIAS else first(name=node.name)
    return translate


ACTIVATIONS = {
    "Relu": _simple(nn.ReLU), "Sigmoid": _simple(nn.Sigmoid), "Tanh": _simple(nn.Tanh),
    "LeakyRelu": _simple(nn.LeakyReLU, negative_slope=("alpha", 0.01)),
    "Elu": _simple(nn.ELU, alpha=("alpha", 1.0)),
    "Selu": _simple(nn.SELU, alpha=("alpha", 1.67326319217681884765625), gamma=("gamma", 1.05070102214813232421875)),
    "HardSigmoid": _simple(nn.HardSigmoid, alpha=("alpha", 0.2), beta=("beta", 0.5)),
    "HardSwish": _simple(nn.HardSwish),
    "Abs": _simple(nn.AbsVal), "Softplus": _simple(nn.BNLL), "Exp": _simple(nn.Exp), "Log": _simple(nn.Log),
    "Sqrt": lambda node, shapes: nn.Power(0.5, name=node.name), "Neg": lambda node, shapes: nn.Power(1.0, -1.0, name=node.name),
    "Reciprocal": lambda node, shapes: nn.Power(-1.0, name=node.name),
    "Softmax": by_opset((1, _softmax_legacy(nn.Softmax)), (13, _softmax(nn.Softmax))),
    "LogSoftmax": by_opset((1, _softmax_legacy(nn.LogSoftmax)), (13, _softmax(nn.LogSoftmax))),
}

COMPUTE = {
    "Conv": conv, "ConvTranspose": conv_transpose, "Gemm": gemm, "MatMul": matmul,
    "Add": binary("add"), "Sub": binary("sub"), "Mul": binary("mul"), "Div": binary("div"), "Pow": binary("pow"),
    "Sum": variadic(nn.Add, "add"), "Max": variadic(nn.Max, "max"), "Min": variadic(nn.Min, "min"),
    "Mean": variadic(nn.Add, "mean"),
    "PRelu": prelu, "Clip": clip, "Dropout": dropout,
    "MaxPool": pool(nn.MaxPool2d, True), "AveragePool": pool(nn.AvgPool2d, False),
    "GlobalAveragePool": global_pool(nn.AvgPool2d), "GlobalMaxPool": global_pool(nn.MaxPool2d),
    "ReduceMean": reduce("mean", 18), "ReduceMax": reduce("max", 18), "ReduceMin": reduce("min", 18),
    "ReduceSum": reduce("sum", 13),
    "ReduceL1": reduce_then(nn.AbsVal, "sum", 18),
    "ReduceSumSquare": reduce_then(lambda name: nn.Power(2.0, name=name), "sum", 18),
    "BatchNormalization": batch_norm, "InstanceNormalization": instance_norm, "LRN": lrn,
    **ACTIVATIONS,
}
