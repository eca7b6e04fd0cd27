"""TensorFlow op -> kindling modules: one translator per op type, and the TABLE that maps them.

A translator is ``fn(node, shapes) -> Module | [Module, ...] | ALIAS``. ``shapes`` are kindling's
(NCHW) shapes of the node's activation inputs, batch 1; ``node.weights`` holds, per input, the
constant's value (None for an activation); ``node.ctx`` the conversion (layout, the constants,
what flattens fed dense layers). The module that holds a node's weights is named after the node.
Weights are read from the file here, straight into the module's layout (tensors.StoredTensor).
Here: convolutions, dense layers, batch norm, activations, pooling and reductions; elementwise ops
with constants and joins are in elementwise.py, ops that only move values in reshaping.py.
"""
from __future__ import annotations

import numpy as np

from kindling.runtime import init, nn

from ..graph import ALIAS
from . import layout as L
from .common import (array, check_format, const, fail, layout, module_name, paddings, spatial,
                     spatial_pad, weight, wired)
from .elementwise import add_n, affine, binary
from .fold import numpy_dtype
from .reshaping import concat, expand_dims, pad, reshape, slicing, squeeze


# ---- convolutions and dense layers -------------------------------------------------------------
def convolution(node, shapes):
    x = shapes[0]
    check_format(node, len(x))
    w = const(node, 1, "filter")
    if np.ndim(w) != 4:
        fail(node, f"a filter of shape {list(np.shape(w))}, expected (height, width, in, out)")
    kh, kw, fin, fout = (int(d) for d in np.shape(w))
    depthwise = node.type == "DepthwiseConv2dNative"
    cin = x[1]
    if depthwise:
        if fin != cin:
            fail(node, f"the depthwise filter is for {fin} channels, the input has {cin}")
        groups, cout, in_per_group = cin, fin * fout, 1
    else:
        if fin == 0 or cin % fin:
            fail(node, f"the filter takes {fin} input channels, the input has {cin}")
        groups, cout, in_per_group = cin // fin, fout, fin
    stride, dilation = spatial(node, "strides"), spatial(node, "dilations")
    modules, hw = [], tuple(x[2:])
    block = node.attrs.get("_block")
    if block:  # SpaceToBatchND -> conv -> BatchToSpaceND (patterns.py): a dilated convolution
        if node.attrs.get("padding") != "VALID" or stride != (1, 1) or dilation != (1, 1):
            fail(node, "a convolution between SpaceToBatchND and BatchToSpaceND must be VALID with stride 1")
        dilation = tuple(block)
        (pt, pb), (pl, pr) = node.attrs["_pads"]
        (ct, cb), (cl, cr) = node.attrs["_crops"]
        # cropping output rows of a stride-1 VALID convolution = dropping as many padded input rows
        pads = [(pt - ct, pb - cb), (pl - cl, pr - cr)]
    else:
        pads = paddings(node, hw, (kh, kw), stride, dilation)
    symmetric = all(a == b and a >= 0 for a, b in pads)
    if not symmetric:
        modules.append(spatial_pad(module_name(node, "/pad"), pads))
    with init.deferred():
        conv = nn.Conv2d(cin, cout, (kh, kw), stride, (pads[0][0], pads[1][0]) if symmetric else 0, dilation,
                         groups, bias="_bias" in node.attrs, name=module_name(node))
    if depthwise:  # (kh, kw, C, m) -> (C*m, 1, kh, kw): output channel c*m + j is filter[:, :, c, j]
        conv.params["weight"] = weight(w, (2, 3, 0, 1)).reshape(cout, 1, kh, kw)
    else:
        conv.params["weight"] = weight(w, (3, 2, 0, 1)).reshape(cout, in_per_group, kh, kw)
    if "_bias" in node.attrs:
        conv.params["bias"] = array(node.ctx.consts.value(node.attrs["_bias"])).reshape(cout)
    return [*modules, conv]


def matmul(node, shapes):
    if len(wired(node)) != 1 or wired(node)[0] != 0 or node.attrs.get("transpose_a"):
        fail(node, "only activation x constant weight (a dense layer) is converted")
    w = const(node, 1, "weight")
    if np.ndim(w) != 2:
        fail(node, f"a weight of shape {list(np.shape(w))}")
    transpose_b = bool(node.attrs.get("transpose_b"))
    fin, fout = (np.shape(w)[::-1] if transpose_b else np.shape(w))
    features = int(np.prod(shapes[0][1:]))
    if fin != features:
        fail(node, f"the weight {list(np.shape(w))} takes {fin} input features, the input has {features}")
    rows = None
    before = node.ctx.flattened.get(node.inputs[0])
    if before is not None:  # a flatten of an NHWC map: kindling flattens C, H, W; TensorFlow H, W, C
        c, h, wd = before
        rows = np.arange(c * h * wd).reshape(c, h, wd).transpose(1, 2, 0).reshape(-1)
    with init.deferred():
        dense = nn.Linear(int(fin), int(fout), bias="_bias" in node.attrs, name=module_name(node))
    if transpose_b:  # already (out, in); a flatten's permutation applies to its columns
        matrix = array(w)
        if rows is not None:
            moved = np.empty_like(matrix)
            moved[:, rows] = matrix
            matrix = moved
        dense.params["weight"] = np.array(matrix, order="C")
    else:
        dense.params["weight"] = weight(w, (1, 0), rows)
    if "_bias" in node.attrs:
        dense.params["bias"] = array(node.ctx.consts.value(node.attrs["_bias"])).reshape(int(fout))
    return dense


def fused_batch_norm(node, shapes):
    x = shapes[0]
    if len(x) == 4:
        check_format(node, len(x))
    if node.attrs.get("is_training"):
        fail(node, "is_training is set: batch statistics, not a frozen inference graph")
    c = x[1]
    scale, offset, mean, var = (array(const(node, i, what)).reshape(-1) for i, what in
                                ((1, "scale"), (2, "offset"), (3, "mean"), (4, "variance")))
    if any(v.size != c for v in (scale, offset, mean, var)):
        fail(node, f"statistics of {scale.size} channels for an input with {c}")
    bn = nn.BatchNorm2d(c, eps=float(node.attrs.get("epsilon", 1e-3)), name=module_name(node))
    bn.params["weight"], bn.params["bias"] = scale, offset
    bn.buffers["running_mean"], bn.buffers["running_var"] = mean, var
    return bn


# ---- activations -----------------------------------------------------------------------------------
def _simple(cls, **fixed):
    return lambda node, shapes: cls(**fixed, name=module_name(node))


def softmax(cls):
    return lambda node, shapes: cls(axis=L.axis(layout(node), -1, len(shapes[0])), name=module_name(node))


def cast(node, shapes):
    if numpy_dtype(node.attrs.get("DstT", 1)).kind != "f":
        fail(node, "a cast of an activation to a non-float type")
    return ALIAS


# ---- pooling and reductions -------------------------------------------------------------------------
def pooling(node, shapes):
    x = shapes[0]
    check_format(node, len(x))
    kernel, stride = spatial(node, "ksize"), spatial(node, "strides")
    pads = paddings(node, tuple(x[2:]), kernel, stride, (1, 1))
    is_max = node.type == "MaxPool"
    cls = nn.MaxPool2d if is_max else nn.AvgPool2d
    extra = {} if is_max else {"count_include_pad": False}  # TensorFlow averages over the input only
    if all(a == b for a, b in pads):
        return cls(kernel, stride, (pads[0][0], pads[1][0]), name=module_name(node), **extra)
    # SAME puts the odd extra pad after. Ceil mode's last window is exactly that when the
    # stride is 2 or more (and the kernel reaches the stride); for max pooling anything else is
    # a -inf border (TensorFlow never takes the padding).
    if node.attrs.get("padding") == "SAME" and all(_ceil_is_same(h, k, s) for h, k, s in zip(x[2:], kernel, stride)):
        return cls(kernel, stride, (pads[0][0], pads[1][0]), ceil_mode=True, name=module_name(node), **extra)
    if is_max:
        return [spatial_pad(module_name(node, "/pad"), pads, -np.inf), cls(kernel, stride, 0, name=module_name(node))]
    fail(node, f"average pooling with kernel {kernel} and stride {stride} on {x[2]}x{x[3]} pads unevenly "
                f"({pads}) where ceil mode cannot stand in for it")


def _ceil_is_same(size: int, kernel: int, stride: int) -> bool:
    """Whether pooling with padding = SAME's 'before' amount in ceil mode gives SAME's output."""
    raw_total = (-(-size // stride) - 1) * stride + kernel - size
    return raw_total >= 0 and (raw_total % 2 == 0 or stride >= 2)


def reduction(node, shapes):
    x = shapes[0]
    axes = sorted({L.axis(layout(node), a, len(x)) for a in np.asarray(const(node, 1, "axes")).reshape(-1)})
    keep = bool(node.attrs.get("keep_dims", node.attrs.get("keepdims", False)))
    name = module_name(node)
    if len(x) == 4 and axes == [2, 3] and node.type in ("Mean", "Max"):  # global pooling
        pool = (nn.AvgPool2d if node.type == "Mean" else nn.MaxPool2d)(global_pooling=True, name=name)
        return pool if keep else [pool, nn.Flatten(name=module_name(node, "/squeeze"))]
    if node.type in ("Mean", "Sum") and axes == list(range(axes[0], len(x))) and axes[0] > 0:
        op = nn.Reduction("mean" if node.type == "Mean" else "sum", axes[0], name=name)
        return op if not keep else [op, nn.Reshape([0] * axes[0] + [1] * len(axes), name=module_name(node, "/keepdims"))]
    fail(node, f"{node.type} over axes {axes} of kindling's {len(x)}-D layout (global pooling over H, W, or "
                f"trailing axes, is converted)")


TABLE = {
    "Conv2D": convolution, "DepthwiseConv2dNative": convolution, "MatMul": matmul,
    "FusedBatchNorm": fused_batch_norm, "FusedBatchNormV2": fused_batch_norm, "FusedBatchNormV3": fused_batch_norm,
    "BiasAdd": binary, "Add": binary, "AddV2": binary, "Sub": binary, "Mul": binary, "RealDiv": binary,
    "Maximum": binary, "Minimum": binary, "AddN": add_n, "_Affine": affine,
    "Relu": _simple(nn.ReLU), "Relu6": _simple(nn.ReLU6), "Elu": _simple(nn.ELU), "Selu": _simple(nn.SELU),
    "LeakyRelu": lambda node, shapes: nn.LeakyReLU(float(node.attrs.get("alpha", 0.2)), name=module_name(node)),
    "Sigmoid": _simple(nn.Sigmoid), "Tanh": _simple(nn.Tanh), "Softplus": _simple(nn.BNLL),
    "Sqrt": _simple(nn.Power, power=0.5), "Rsqrt": _simple(nn.Power, power=-0.5), "Square": _simple(nn.Power, power=2.0),
    "Reciprocal": _simple(nn.Power, power=-1.0), "Neg": _simple(nn.Power, scale=-1.0),
    "Exp": _simple(nn.Exp), "Log": _simple(nn.Log), "Abs": _simple(nn.AbsVal),
    "Softmax": softmax(nn.Softmax), "LogSoftmax": softmax(nn.LogSoftmax),
    "_Swish": lambda node, shapes: nn.Swish(float(node.attrs.get("beta", 1.0)), name=module_name(node)),
    "_HardSigmoid": _simple(nn.HardSigmoid), "_HardSwish": _simple(nn.HardSwish),
    "MaxPool": pooling, "AvgPool": pooling, "Mean": reduction, "Max": reduction, "Sum": reduction,
    "Reshape": reshape, "Squeeze": squeeze, "ExpandDims": expand_dims,
    "ConcatV2": concat, "Concat": concat, "Pad": pad, "PadV2": pad, "MirrorPad": pad,
    "StridedSlice": slicing, "Slice": slicing, "Cast": cast,
}
