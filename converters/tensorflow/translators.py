"""TensorFlow op -> kindling modules: one translator per op type, and the TABLE that maps them.

A translator is ``fn(node, shapes) -> Module | [Module, ...] | ALIAS``. ``shapes`` are kindling's
(NCHW) shapes of the node's activation inputs, batch 1; ``node.weights`` holds, per input, the
constant's value (None for an activation); ``node.ctx`` the conversion (layout, the constants,
what flattens fed dense layers). The module that holds a node's weights is named after the node.
Weights are read from the file here, straight into the module's layout (tensors.StoredTensor).
"""
from __future__ import annotations

import numpy as np

from kindling.runtime import init, nn

from ..graph import ALIAS
from . import layout as L
from .fold import numpy_dtype, strided_index
from .tensors import FILTER_LAYOUTS, StoredTensor, filter_transposed


class Unsupported(ValueError):
    """A supported op with a setting kindling does not convert (named in the error)."""


def _fail(node, problem: str):
    raise Unsupported(problem)


def _name(node, suffix: str = "") -> str:
    return node.ctx.unique(node.name + suffix)


def _const(node, i: int, what: str):
    v = node.weights[i] if i < len(node.weights) else None
    if v is None:
        _fail(node, f"its {what} (input {i}, {node.inputs[i] if i < len(node.inputs) else '?'}) must be a constant")
    return v


def _array(v, dtype=np.float32) -> np.ndarray:
    return v.read().astype(dtype, copy=False) if isinstance(v, StoredTensor) else np.asarray(v, dtype)


def _weight(v, axes, rows=None) -> np.ndarray:
    """A constant transposed by ``axes`` as contiguous float32, read from the file a band at a time."""
    if isinstance(v, StoredTensor):
        return v.read_transposed(axes, np.float32, rows)
    a = np.asarray(v, np.float32)
    if rows is None and a.ndim == 4 and tuple(axes) in FILTER_LAYOUTS:
        k = a.shape[0] * a.shape[1]
        return filter_transposed(a.shape, axes, np.float32, lambda i0, i1: a.reshape(k, *a.shape[2:])[:, i0:i1])
    if rows is not None:
        moved = np.empty_like(a)
        moved[rows] = a
        a = moved
    return np.ascontiguousarray(a.transpose(axes))


def _wired(node) -> list[int]:
    return [i for i, w in enumerate(node.weights) if w is None]


def _layout(node) -> str:
    return node.ctx.layout


def _spatial(node, key: str, default=1) -> tuple[int, int]:
    """(h, w) of a per-axis list attr (strides, dilations, ksize) in the op's data format."""
    values = node.attrs.get(key) or [default] * 4
    fmt = node.attrs.get("data_format", "NHWC")
    if len(values) != 4:
        _fail(node, f"{key} {values}: expected 4 values")
    h, w = (1, 2) if fmt == "NHWC" else (2, 3)
    other = [values[0], values[3 if fmt == "NHWC" else 1]]
    if any(v != 1 for v in other):
        _fail(node, f"{key} {values} reaches over the batch or channel axis")
    return int(values[h]), int(values[w])


def _check_format(node, rank: int):
    fmt = node.attrs.get("data_format", "NHWC")
    if rank != 4 or fmt != _layout(node):
        _fail(node, f"a {fmt} op on a rank-{rank} activation in a {_layout(node)} graph")


def same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's SAME padding (before, after): the odd extra goes after (bottom, right)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _paddings(node, hw, kernel, stride, dilation) -> list[tuple[int, int]]:
    """[(top, bottom), (left, right)] for the op's padding attr."""
    mode = node.attrs.get("padding", "VALID")
    if mode == "VALID":
        return [(0, 0), (0, 0)]
    if mode == "SAME":
        return [same_pads(s, k, st, d) for s, k, st, d in zip(hw, kernel, stride, dilation)]
    if mode == "EXPLICIT":
        ex = list(node.attrs.get("explicit_paddings") or [])
        fmt = node.attrs.get("data_format", "NHWC")
        axes = (1, 2) if fmt == "NHWC" else (2, 3)
        return [(int(ex[2 * a]), int(ex[2 * a + 1])) for a in axes]
    _fail(node, f"padding {mode!r}")


def _spatial_pad(name: str, pads, value: float = 0.0) -> nn.Module:
    (t, b), (left, r) = pads
    return nn.Pad([0, 0, 0, 0, t, b, left, r], value, name=name)


# ---- convolutions and dense layers -------------------------------------------------------------
def convolution(node, shapes):
    x = shapes[0]
    _check_format(node, len(x))
    w = _const(node, 1, "filter")
    if np.ndim(w) != 4:
        _fail(node, f"a filter of shape {list(np.shape(w))}, expected (height, width, in, out)")
    kh, kw, fin, fout = (int(d) for d in np.shape(w))
    depthwise = node.type == "DepthwiseConv2dNative"
    cin = x[1]
    if depthwise:
        if fin != cin:
            _fail(node, f"the depthwise filter is for {fin} channels, the input has {cin}")
        groups, cout, in_per_group = cin, fin * fout, 1
    else:
        if fin == 0 or cin % fin:
            _fail(node, f"the filter takes {fin} input channels, the input has {cin}")
        groups, cout, in_per_group = cin // fin, fout, fin
    stride, dilation = _spatial(node, "strides"), _spatial(node, "dilations")
    modules, hw = [], tuple(x[2:])
    block = node.attrs.get("_block")
    if block:  # SpaceToBatchND -> conv -> BatchToSpaceND (patterns.py): a dilated convolution
        if node.attrs.get("padding") != "VALID" or stride != (1, 1) or dilation != (1, 1):
            _fail(node, "a convolution between SpaceToBatchND and BatchToSpaceND must be VALID with stride 1")
        dilation = tuple(block)
        (pt, pb), (pl, pr) = node.attrs["_pads"]
        (ct, cb), (cl, cr) = node.attrs["_crops"]
        # cropping output rows of a stride-1 VALID convolution = dropping as many padded input rows
        pads = [(pt - ct, pb - cb), (pl - cl, pr - cr)]
    else:
        pads = _paddings(node, hw, (kh, kw), stride, dilation)
    symmetric = all(a == b and a >= 0 for a, b in pads)
    if not symmetric:
        modules.append(_spatial_pad(_name(node, "/pad"), pads))
    with init.deferred():
        conv = nn.Conv2d(cin, cout, (kh, kw), stride, (pads[0][0], pads[1][0]) if symmetric else 0, dilation,
                         groups, bias="_bias" in node.attrs, name=_name(node))
    if depthwise:  # (kh, kw, C, m) -> (C*m, 1, kh, kw): output channel c*m + j is filter[:, :, c, j]
        conv.params["weight"] = _weight(w, (2, 3, 0, 1)).reshape(cout, 1, kh, kw)
    else:
        conv.params["weight"] = _weight(w, (3, 2, 0, 1)).reshape(cout, in_per_group, kh, kw)
    if "_bias" in node.attrs:
        conv.params["bias"] = _array(node.ctx.consts.value(node.attrs["_bias"])).reshape(cout)
    return [*modules, conv]


def matmul(node, shapes):
    if len(_wired(node)) != 1 or _wired(node)[0] != 0 or node.attrs.get("transpose_a"):
        _fail(node, "only activation x constant weight (a dense layer) is converted")
    w = _const(node, 1, "weight")
    if np.ndim(w) != 2:
        _fail(node, f"a weight of shape {list(np.shape(w))}")
    transpose_b = bool(node.attrs.get("transpose_b"))
    fin, fout = (np.shape(w)[::-1] if transpose_b else np.shape(w))
    features = int(np.prod(shapes[0][1:]))
    if fin != features:
        _fail(node, f"the weight {list(np.shape(w))} takes {fin} input features, the input has {features}")
    rows = None
    before = node.ctx.flattened.get(node.inputs[0])
    if before is not None:  # a flatten of an NHWC map: kindling flattens C, H, W; TensorFlow H, W, C
        c, h, wd = before
        rows = np.arange(c * h * wd).reshape(c, h, wd).transpose(1, 2, 0).reshape(-1)
    with init.deferred():
        dense = nn.Linear(int(fin), int(fout), bias="_bias" in node.attrs, name=_name(node))
    if transpose_b:  # already (out, in); a flatten's permutation applies to its columns
        weight = _array(w)
        if rows is not None:
            moved = np.empty_like(weight)
            moved[:, rows] = weight
            weight = moved
        dense.params["weight"] = np.ascontiguousarray(weight)
    else:
        dense.params["weight"] = _weight(w, (1, 0), rows)
    if "_bias" in node.attrs:
        dense.params["bias"] = _array(node.ctx.consts.value(node.attrs["_bias"])).reshape(int(fout))
    return dense


def fused_batch_norm(node, shapes):
    x = shapes[0]
    if len(x) == 4:
        _check_format(node, len(x))
    if node.attrs.get("is_training"):
        _fail(node, "is_training is set: batch statistics, not a frozen inference graph")
    c = x[1]
    scale, offset, mean, var = (_array(_const(node, i, what)).reshape(-1) for i, what in
                                ((1, "scale"), (2, "offset"), (3, "mean"), (4, "variance")))
    if any(v.size != c for v in (scale, offset, mean, var)):
        _fail(node, f"statistics of {scale.size} channels for an input with {c}")
    bn = nn.BatchNorm2d(c, eps=float(node.attrs.get("epsilon", 1e-3)), name=_name(node))
    bn.params["weight"], bn.params["bias"] = scale, offset
    bn.buffers["running_mean"], bn.buffers["running_var"] = mean, var
    return bn


# ---- elementwise with a constant, and joins ------------------------------------------------------
def _per_axis(node, c: np.ndarray, shape) -> tuple[list[int], int, np.ndarray]:
    """A constant aligned to an activation of kindling ``shape``, as (parameter shape, axis,
    values) for Scale/Bias: the axes from the first to the last that it varies along."""
    try:
        a = L.align(_layout(node), c, len(shape))
    except ValueError as e:
        _fail(node, str(e))
    if a.shape[0] != 1 or any(d not in (1, s) for d, s in zip(a.shape, shape)):
        _fail(node, f"a constant of shape {list(np.shape(c))} that does not broadcast to the activation")
    varying = [i for i, d in enumerate(a.shape) if d != 1] or [len(shape) - 1]
    first, last = varying[0], varying[-1]
    region = a[(0, *[slice(None) if first <= i <= last else 0 for i in range(1, len(shape))])]
    values = np.broadcast_to(region, tuple(shape[first:last + 1]))
    return list(shape[first:last + 1]), first, np.ascontiguousarray(values, np.float32)


def _scale(node, c, shape, name, bias=None) -> nn.Module:
    pshape, axis, values = _per_axis(node, c, shape)
    m = nn.Scale(pshape, bias=bias is not None, axis=axis, name=name)
    m.params["weight"] = values
    if bias is not None:
        m.params["bias"] = np.ascontiguousarray(np.broadcast_to(bias, values.shape), np.float32)
    return m


def _bias(node, c, shape, name) -> nn.Module:
    pshape, axis, values = _per_axis(node, c, shape)
    m = nn.Bias(pshape, axis=axis, name=name)
    m.params["bias"] = values
    return m


def _scalar(c) -> float | None:
    return float(np.asarray(c).reshape(-1)[0]) if np.size(c) == 1 else None


# op -> join of two activations
JOINS = {"Add": lambda n: nn.Add(name=n), "AddV2": lambda n: nn.Add(name=n),
         "Sub": lambda n: nn.Add(coeffs=[1.0, -1.0], name=n), "Mul": lambda n: nn.Mul(name=n),
         "Maximum": lambda n: nn.Max(name=n), "BiasAdd": lambda n: nn.Add(name=n)}


def binary(node, shapes):
    wired = _wired(node)
    name = _name(node)
    if len(wired) == 2:
        if node.type not in JOINS:
            _fail(node, f"{node.type} of two activations")
        if len(shapes[0]) != len(shapes[1]):
            _fail(node, f"activations of ranks {len(shapes[0])} and {len(shapes[1])}")
        return JOINS[node.type](name)
    if len(wired) != 1:
        _fail(node, f"{len(wired)} activation inputs")
    ci = 1 - wired[0]
    c, shape = _array(node.weights[ci]), shapes[0]
    s = _scalar(c)
    left = ci == 0  # c - x, c / x
    if node.type in ("Add", "AddV2", "BiasAdd"):
        if node.type == "BiasAdd" and len(shape) == 4 and node.attrs.get("data_format", "NHWC") != _layout(node):
            _fail(node, "a BiasAdd in another data format than the graph's")
        return nn.Power(1.0, 1.0, s, name=name) if s is not None else _bias(node, c, shape, name)
    if node.type == "Sub":
        if s is not None:
            return nn.Power(1.0, -1.0 if left else 1.0, s if left else -s, name=name)
        if not left:
            return _bias(node, -c, shape, name)
        return [nn.Power(1.0, -1.0, 0.0, name=_name(node, "/negate")), _bias(node, c, shape, name)]
    if node.type == "Mul":
        return nn.Power(1.0, s, 0.0, name=name) if s is not None else _scale(node, c, shape, name)
    if node.type == "RealDiv" and not left:
        return nn.Power(1.0, 1.0 / s, 0.0, name=name) if s is not None else _scale(node, 1.0 / c, shape, name)
    if node.type in ("Maximum", "Minimum") and s is not None:
        return nn.Clip(low=s, name=name) if node.type == "Maximum" else nn.Clip(high=s, name=name)
    _fail(node, f"{node.type} with a constant of shape {list(c.shape)}{' on the left' if left else ''}")


def affine(node, shapes):
    """x * scale + shift (patterns.affines)."""
    consts = node.ctx.consts
    scale = _array(consts.value(node.attrs["_scale"]))
    shift = _array(consts.value(node.attrs["_shift"]))
    shift = -shift if node.attrs.get("_negate_shift") else shift
    shape = shapes[0]
    if np.size(scale) == 1 and np.size(shift) == 1:
        return nn.Power(1.0, _scalar(scale), _scalar(shift), name=_name(node))
    both = np.broadcast_arrays(scale, shift)
    pshape, axis, weight = _per_axis(node, both[0], shape)
    _, _, bias = _per_axis(node, both[1], shape)
    m = nn.Scale(pshape, bias=True, axis=axis, name=_name(node))
    m.params["weight"], m.params["bias"] = weight, bias
    return m


def add_n(node, shapes):
    if _wired(node) != list(range(len(node.inputs))):
        _fail(node, "AddN of constants and activations")
    return nn.Add(name=_name(node))


# ---- activations -----------------------------------------------------------------------------------
def _simple(cls, **fixed):
    return lambda node, shapes: cls(**fixed, name=_name(node))


def softmax(cls):
    return lambda node, shapes: cls(axis=L.axis(_layout(node), -1, len(shapes[0])), name=_name(node))


def cast(node, shapes):
    if numpy_dtype(node.attrs.get("DstT", 1)).kind != "f":
        _fail(node, "a cast of an activation to a non-float type")
    return ALIAS


# ---- pooling and reductions -------------------------------------------------------------------------
def pooling(node, shapes):
    x = shapes[0]
    _check_format(node, len(x))
    kernel, stride = _spatial(node, "ksize"), _spatial(node, "strides")
    pads = _paddings(node, tuple(x[2:]), kernel, stride, (1, 1))
    is_max = node.type == "MaxPool"
    cls = nn.MaxPool2d if is_max else nn.AvgPool2d
    extra = {} if is_max else {"count_include_pad": False}  # TensorFlow averages over the input only
    if all(a == b for a, b in pads):
        return cls(kernel, stride, (pads[0][0], pads[1][0]), name=_name(node), **extra)
    # SAME puts the odd extra pad after. Ceil mode's last window is exactly that when the
    # stride is 2 or more (and the kernel reaches the stride); for max pooling anything else is
    # a -inf border (TensorFlow never takes the padding).
    if node.attrs.get("padding") == "SAME" and all(_ceil_is_same(h, k, s) for h, k, s in zip(x[2:], kernel, stride)):
        return cls(kernel, stride, (pads[0][0], pads[1][0]), ceil_mode=True, name=_name(node), **extra)
    if is_max:
        return [_spatial_pad(_name(node, "/pad"), pads, -np.inf), cls(kernel, stride, 0, name=_name(node))]
    _fail(node, f"average pooling with kernel {kernel} and stride {stride} on {x[2]}x{x[3]} pads unevenly "
                f"({pads}) where ceil mode cannot stand in for it")


def _ceil_is_same(size: int, kernel: int, stride: int) -> bool:
    """Whether pooling with padding = SAME's 'before' amount in ceil mode gives SAME's output."""
    raw_total = (-(-size // stride) - 1) * stride + kernel - size
    return raw_total >= 0 and (raw_total % 2 == 0 or stride >= 2)


def reduction(node, shapes):
    x = shapes[0]
    axes = sorted({L.axis(_layout(node), a, len(x)) for a in np.asarray(_const(node, 1, "axes")).reshape(-1)})
    keep = bool(node.attrs.get("keep_dims", node.attrs.get("keepdims", False)))
    name = _name(node)
    if len(x) == 4 and axes == [2, 3] and node.type in ("Mean", "Max"):  # global pooling
        pool = (nn.AvgPool2d if node.type == "Mean" else nn.MaxPool2d)(global_pooling=True, name=name)
        return pool if keep else [pool, nn.Flatten(name=_name(node, "/squeeze"))]
    if node.type in ("Mean", "Sum") and axes == list(range(axes[0], len(x))) and axes[0] > 0:
        op = nn.Reduction("mean" if node.type == "Mean" else "sum", axes[0], name=name)
        return op if not keep else [op, nn.Reshape([0] * axes[0] + [1] * len(axes), name=_name(node, "/keepdims"))]
    _fail(node, f"{node.type} over axes {axes} of kindling's {len(x)}-D layout (global pooling over H, W, or "
                f"trailing axes, is converted)")


# ---- shapes ------------------------------------------------------------------------------------------
def _reshaped(node, kshape, tf_target, batch: list[bool]) -> list[nn.Module]:
    """Modules giving an activation of kindling shape ``kshape`` TensorFlow's shape ``tf_target``
    (batch entries marked in ``batch``, -1 inferred): into TensorFlow's axis order, reshape, back
    to kindling's; the moves are left out where only axes of size 1 move."""
    lay = _layout(node)
    target = [int(t) for t in tf_target]
    if any(batch[1:]) or any(t == 0 for t in target[1:]) or not target:
        _fail(node, f"a reshape to {target} that moves the batch axis or makes an empty axis")
    if batch[0] or target[0] > 0:
        target[0] = 0  # the batch stays whatever it is (a graph written for batch 1 says 1)
    modules = []
    if L.permuted(lay, len(kshape)) and not L.same_order(kshape, L.TO_TF):
        modules.append(nn.Permute(list(L.TO_TF), name=_name(node, "/to_nhwc")))
    resolved = nn.Reshape(target, name="resolve").target(L.tf_shape(lay, kshape))
    if L.permuted(lay, len(target)) and not L.same_order(resolved, L.TO_KINDLING):
        return modules + [nn.Reshape(target, name=_name(node, "/reshape")),
                          nn.Permute(list(L.TO_KINDLING), name=_name(node))]
    return modules + [nn.Reshape(L.kindling_order(lay, target), name=_name(node))]


def reshape(node, shapes):
    x = shapes[0]
    name = node.inputs[1]
    tf_target = [int(v) for v in np.asarray(_const(node, 1, "shape")).reshape(-1)]
    batch = node.ctx.consts.batch_dims(name)
    if node.attrs.get("_feeds_dense") and L.permuted(_layout(node), len(x)) and len(tf_target) == 2:
        # flatten into dense layers: kindling's own flatten, with the dense rows permuted (matmul)
        node.ctx.flattened[node.outputs[0]] = tuple(x[1:])
        return nn.Flatten(name=_name(node))
    return _reshaped(node, x, tf_target, batch)


def squeeze(node, shapes):
    tf_in = L.tf_shape(_layout(node), shapes[0])
    dims = [d % len(tf_in) for d in (node.attrs.get("squeeze_dims") or [])] or \
        [i for i, d in enumerate(tf_in) if d == 1 and i > 0]
    if 0 in dims or any(tf_in[d] != 1 for d in dims):
        _fail(node, f"squeezing axes {dims} of shape {tf_in}")
    target = [d for i, d in enumerate(tf_in) if i not in dims]
    return _reshaped(node, shapes[0], target, [True] + [False] * (len(target) - 1))


def expand_dims(node, shapes):
    tf_in = L.tf_shape(_layout(node), shapes[0])
    a = int(np.asarray(_const(node, 1, "axis")).reshape(-1)[0])
    a = a % (len(tf_in) + 1)
    if a == 0:
        _fail(node, "a new axis before the batch")
    target = tf_in[:a] + [1] + tf_in[a:]
    return _reshaped(node, shapes[0], target, [True] + [False] * (len(target) - 1))


def concat(node, shapes):
    axis_i = len(node.inputs) - 1 if node.type == "ConcatV2" else 0
    if node.weights[axis_i] is None or len(_wired(node)) != len(node.inputs) - 1:
        _fail(node, "a concatenation of constants with activations")
    rank = len(shapes[0])
    return nn.Concat(axis=L.axis(_layout(node), int(np.asarray(node.weights[axis_i]).reshape(-1)[0]), rank),
                     name=_name(node))


def pad(node, shapes):
    if node.type == "MirrorPad":
        _fail(node, "mirror padding")
    p = np.asarray(_const(node, 1, "paddings")).reshape(-1, 2)
    if len(p) != len(shapes[0]):
        _fail(node, f"paddings for {len(p)} axes on a rank-{len(shapes[0])} activation")
    pairs = L.kindling_order(_layout(node), [tuple(int(v) for v in row) for row in p])
    value = _scalar(_array(node.weights[2])) if node.type == "PadV2" and len(node.inputs) > 2 else 0.0
    return nn.Pad([v for pair in pairs for v in pair], value, name=_name(node))


def slicing(node, shapes):
    """StridedSlice and Slice of an activation: crops (Pad with negative amounts), a step on H and
    W (a 1x1 max pooling with that stride), and the axes it drops or adds (a reshape)."""
    kshape = shapes[0]
    lay = _layout(node)
    tf_in = L.tf_shape(lay, kshape)
    if node.type == "Slice":
        begin = [int(v) for v in np.asarray(_const(node, 1, "begin")).reshape(-1)]
        size = [int(v) for v in np.asarray(_const(node, 2, "size")).reshape(-1)]
        index = tuple(slice(b, None if s == -1 else b + s) for b, s in zip(begin, size))
    else:
        index = strided_index(node, *(_const(node, i, w) for i, w in ((1, "begin"), (2, "end"), (3, "strides"))))
    probe = np.empty(tf_in, np.uint8)[index]  # the output shape, and which axes survive
    per_axis, kept_axes, pos = [], [], 0
    expanded = list(index)
    if Ellipsis in expanded:
        at = expanded.index(Ellipsis)
        named = sum(1 for e in expanded if e is not None and e is not Ellipsis)
        expanded[at:at + 1] = [slice(None)] * (len(tf_in) - named)
    expanded += [slice(None)] * (len(tf_in) - sum(1 for e in expanded if e is not None))
    for e in expanded:
        if e is None:
            continue
        size = tf_in[pos]
        if isinstance(e, slice):
            start, stop, step = e.indices(size)
            n = len(range(start, stop, step))
            if step < 0 or n == 0:
                _fail(node, f"a slice with step {step} or nothing left on axis {pos}")
            per_axis.append((start, start + step * (n - 1) + 1, step))
            kept_axes.append(pos)
        else:
            i = int(e) % size
            per_axis.append((i, i + 1, 1))
        pos += 1
    if per_axis[0] != (0, tf_in[0], 1):
        _fail(node, "a slice of the batch axis")
    crops = L.kindling_order(lay, [(-start, -(size - stop)) for (start, stop, _), size in zip(per_axis, tf_in)])
    steps = L.kindling_order(lay, [step for _, _, step in per_axis])
    out_tf = list(probe.shape)
    cropped_tf = [len(range(*pa)) for pa in per_axis]
    parts = [kind for kind, needed in (("crop", any(c != (0, 0) for c in crops)), ("step", any(s != 1 for s in steps)),
                                       ("reshape", out_tf != cropped_tf)) if needed]
    if not parts:
        return ALIAS
    if "step" in parts and (len(kshape) != 4 or steps[:2] != [1, 1]):
        _fail(node, "a step on an axis other than height and width")
    modules = []
    for kind in parts:
        if kind == "reshape":
            continue  # named by _reshaped below
        name = _name(node) if kind == parts[-1] else _name(node, f"/{kind}")
        if kind == "crop":
            modules.append(nn.Pad([v for c in crops for v in c], name=name))
        elif kind == "step":
            modules.append(nn.MaxPool2d(1, tuple(steps[2:]), name=name))
    if "reshape" in parts:
        cropped_k = L.kindling_order(lay, cropped_tf)
        modules += _reshaped(node, cropped_k, out_tf, [True] + [False] * (len(out_tf) - 1))
    return modules


TABLE = {
    "Conv2D": convolution, "DepthwiseConv2dNative": convolution, "MatMul": matmul,
    "FusedBatchNorm": fused_batch_norm, "FusedBatchNormV2": fused_batch_norm, "FusedBatchNormV3": fused_batch_norm,
    "BiasAdd": binary, "Add": binary, "AddV2": binary, "Sub": binary, "Mul": binary, "RealDiv": binary,
    "Maximum": binary, "Minimum": binary, "AddN": add_n, "_Affine": affine,
    "Relu": _simple(nn.ReLU), "Relu6": _simple(nn.ReLU6), "Elu": _simple(nn.ELU), "Selu": _simple(nn.SELU),
    "LeakyRelu": lambda node, shapes: nn.LeakyReLU(float(node.attrs.get("alpha", 0.2)), name=_name(node)),
    "Sigmoid": _simple(nn.Sigmoid), "Tanh": _simple(nn.Tanh), "Softplus": _simple(nn.BNLL),
    "Sqrt": _simple(nn.Power, power=0.5), "Rsqrt": _simple(nn.Power, power=-0.5), "Square": _simple(nn.Power, power=2.0),
    "Reciprocal": _simple(nn.Power, power=-1.0), "Neg": _simple(nn.Power, scale=-1.0),
    "Exp": _simple(nn.Exp), "Log": _simple(nn.Log), "Abs": _simple(nn.AbsVal),
    "Softmax": softmax(nn.Softmax), "LogSoftmax": softmax(nn.LogSoftmax),
    "_Swish": lambda node, shapes: nn.Swish(float(node.attrs.get("beta", 1.0)), name=_name(node)),
    "_HardSigmoid": _simple(nn.HardSigmoid), "_HardSwish": _simple(nn.HardSwish),
    "MaxPool": pooling, "AvgPool": pooling, "Mean": reduction, "Max": reduction, "Sum": reduction,
    "Reshape": reshape, "Squeeze": squeeze, "ExpandDims": expand_dims,
    "ConcatV2": concat, "Concat": concat, "Pad": pad, "PadV2": pad, "MirrorPad": pad,
    "StridedSlice": slicing, "Slice": slicing, "Cast": cast,
}
