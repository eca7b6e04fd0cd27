"""kindling module -> ONNX nodes: one emitter per module type, ``fn(writer, module, inputs) ->
output tensor name(s)``, in the EMIT table (emit_extra.py adds Caffe's extra layers and the
criterions). An emitter names its last node's output after the module; weights become
initializers named ``module.param``. Every type in runtime/nn.py's LAYERS has an entry (a test
checks it)."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from kindling.runtime.layers.pooling import pooled_size
from kindling.runtime.module import Module
from kindling.runtime.shapes import probe

from .emit_extra import EXTRA
from .errors import OnnxError
from .writer import Writer, channel_shape, tensor

def emit(w: Writer, m: Module, inputs: list[str]) -> list[str]:
    """The output tensor names of ``m`` reading ``inputs``; registers every new tensor's shape."""
    fn = EMIT.get(type(m).__name__)
    if fn is None:
        raise OnnxError(f"module {m.name!r}: no ONNX export for {type(m).__name__} (a module type of your own: add "
                        f"it to kindling.converters.onnx.emit.EMIT)")
    outs = fn(w, m, inputs)
    outs = outs if isinstance(outs, list) else [outs]
    if any(t not in w.shapes for t in outs):  # containers registered theirs while walking
        shapes = probe(m, [w.shape(t) for t in inputs])
        for t, s in zip(outs, shapes if isinstance(shapes, list) else [shapes]):
            w.shapes[t] = tuple(s)
    return outs



def out_shape(w: Writer, m, xs) -> tuple:
    return w.out_shape(m, xs)


def p(w: Writer, m, key: str, value=None, dtype=np.float32) -> str:
    return w.param(m, key, value, dtype)


# ---- compute --------------------------------------------------------------------------------------
def linear(w, m, xs):
    x = xs[0]
    if w.rank(x) != 2:
        x = w.node("Flatten", [x], f"{m.name}/flatten", axis=1)
        w.shapes[x] = (w.shape(xs[0])[0], int(np.prod(w.shape(xs[0])[1:])))
    ins = [x, p(w, m, "weight")] + ([p(w, m, "bias")] if m.has_bias else [])
    return w.node("Gemm", ins, m.name, transB=1)


def conv(w, m, xs):
    ph, pw = m.padding
    ins = [xs[0], p(w, m, "weight")] + ([p(w, m, "bias")] if m.has_bias else [])
    return w.node("Conv", ins, m.name, kernel_shape=list(m.kernel_size), strides=list(m.stride),
                  pads=[ph, pw, ph, pw], dilations=list(m.dilation), group=m.groups)


def conv_transpose(w, m, xs):
    ph, pw = m.padding
    ins = [xs[0], p(w, m, "weight")] + ([p(w, m, "bias")] if m.has_bias else [])
    return w.node("ConvTranspose", ins, m.name, kernel_shape=list(m.kernel_size), strides=list(m.stride),
                  pads=[ph, pw, ph, pw], dilations=list(m.dilation), group=m.groups,
                  output_padding=list(m.output_padding))


def _pool_window(w, m, x):
    """kernel, strides, pads [begins..., ends...]: kindling's ceil rounding (Caffe's: a last window
    starting in the right padding is kept) as explicit end padding with floor rounding."""
    n, c, h, wd = w.shape(x)
    k, s, pad = m.kernel_size, m.stride, m.padding
    ends = []
    for size, kk, ss, pp in zip((h, wd), k, s, pad):
        o = pooled_size(size, kk, ss, pp, m.ceil_mode)
        ends.append((o - 1) * ss + kk - size - pp)
    return list(k), list(s), [pad[0], pad[1], *ends]


def max_pool(w, m, xs):
    x = xs[0]
    if m.global_pooling:
        return w.node("GlobalMaxPool", [x], m.name)
    k, s, pads = _pool_window(w, m, x)
    if max(pads[2] - k[0], pads[3] - k[1]) >= 0:  # more end padding than a kernel: pad first
        x = w.node("Pad", [x, w.ints(f"{m.name}/pads", [0, 0, 0, 0, 0, 0, pads[2], pads[3]]),
                           w.const(f"{m.name}/-inf", np.float32(-np.inf))], f"{m.name}/pad")
        pads = [pads[0], pads[1], 0, 0]
    if not m.return_indices:
        return w.node("MaxPool", [x], m.name, kernel_shape=k, strides=s, pads=pads)
    values, flat = w.node("MaxPool", [x], m.name, outputs=2, kernel_shape=k, strides=s, pads=pads)
    h, wd = w.shape(xs[0])[2:]
    plane = w.node("Mod", [flat, w.const(f"{m.name}/plane", np.int64(h * wd), np.int64)], f"{m.name}/in_plane")
    return [values, w.node("Cast", [plane], f"{m.name}_1", to=TensorProto.FLOAT)]


def avg_pool(w, m, xs):
    x = xs[0]
    if m.global_pooling:
        return w.node("GlobalAveragePool", [x], m.name)
    k, s, pads = _pool_window(w, m, x)
    if not m.count_include_pad:
        return w.node("AveragePool", [x], m.name, kernel_shape=k, strides=s, pads=pads, count_include_pad=0)
    # Caffe's divisor: the window clipped to the padded input (right padding = left padding), not
    # to the ceil-mode extension: sum over the window (zeros beyond) divided by that count
    n, c, h, wd = w.shape(x)
    counts = np.ones((1, 1, *[pooled_size(size, kk, ss, pp, m.ceil_mode) for size, kk, ss, pp in
                              zip((h, wd), m.kernel_size, m.stride, m.padding)]), np.float32)
    for axis, (size, kk, ss, pp) in enumerate(zip((h, wd), m.kernel_size, m.stride, m.padding)):
        start = np.arange(counts.shape[2 + axis]) * ss - pp
        shape = [1, 1, 1, 1]
        shape[2 + axis] = -1
        counts = counts * (np.minimum(start + kk, size + pp) - start).reshape(shape)
    mean = w.node("AveragePool", [x], f"{m.name}/full_window", kernel_shape=k, strides=s, pads=pads,
                  count_include_pad=1)
    return w.node("Mul", [mean, w.const(f"{m.name}/window_scale", k[0] * k[1] / counts)], m.name)


def max_unpool(w, m, xs):
    """ScatterElements of each value at its plane index into a zero (N, C, H'*W') tensor."""
    x, idx = xs
    n, c, h, wd = w.shape(x)
    oh, ow = m.size(h, wd)
    flat = w.node("Reshape", [x, w.ints(f"{m.name}/flat", [0, 0, -1])], f"{m.name}/values")
    where = w.node("Cast", [w.node("Reshape", [idx, w.ints(f"{m.name}/flat_i", [0, 0, -1])], f"{m.name}/idx")],
                   f"{m.name}/positions", to=TensorProto.INT64)
    lead = w.node("Slice", [w.node("Shape", [x], f"{m.name}/shape"), w.ints(f"{m.name}/s0", [0]),
                            w.ints(f"{m.name}/s2", [2])], f"{m.name}/nc")
    size = w.node("Concat", [lead, w.ints(f"{m.name}/plane", [oh * ow])], f"{m.name}/zeros_shape", axis=0)
    zeros = w.node("ConstantOfShape", [size], f"{m.name}/zeros",
                   value=tensor(np.zeros(1, np.float32), "zero"))
    out = w.node("ScatterElements", [zeros, where, flat], f"{m.name}/scattered", axis=2)
    return w.node("Reshape", [out, w.ints(f"{m.name}/out_shape", [0, 0, oh, ow])], m.name)


# ---- activations ----------------------------------------------------------------------------------
def _unary(op, **attrs):
    def fn(w, m, xs):
        return w.node(op, xs[:1], m.name, **{k: getattr(m, v) if isinstance(v, str) else v for k, v in attrs.items()})
    return fn


def prelu(w, m, xs):
    slope = m.params["weight"]
    shape = (1,) if m.num_parameters == 1 else channel_shape(m.num_parameters, w.rank(xs[0]))
    return w.node("PRelu", [xs[0], p(w, m, "weight", slope.reshape(shape))], m.name)


def softmax(op):
    def fn(w, m, xs):
        return w.node(op, xs[:1], m.name, axis=m.axis)
    return fn


def clip(w, m, xs):
    lo = w.const(f"{m.name}.low", np.float32(m.low)) if m.low is not None else ""
    hi = w.const(f"{m.name}.high", np.float32(m.high)) if m.high is not None else ""
    return w.node("Clip", [xs[0], lo, hi] if hi else [xs[0], lo], m.name)


def swish(w, m, xs):
    x = xs[0]
    z = x if m.beta == 1 else w.node("Mul", [x, w.const(f"{m.name}/beta", np.float32(m.beta))], f"{m.name}/bx")
    return w.node("Mul", [x, w.node("Sigmoid", [z], f"{m.name}/gate")], m.name)


def hard_swish(w, m, xs):
    if w.opset >= 14:
        return w.node("HardSwish", xs[:1], m.name)
    gate = w.node("HardSigmoid", xs[:1], f"{m.name}/gate", alpha=1 / 6, beta=0.5)
    return w.node("Mul", [xs[0], gate], m.name)


def dropout(w, m, xs):
    return w.node("Dropout", [xs[0], w.const(f"{m.name}.ratio", np.float32(m.p))], m.name)


# ---- normalisation --------------------------------------------------------------------------------
def batch_norm(w, m, xs):
    c = m.num_features
    scale = m.params["weight"] if m.affine else np.ones(c, np.float32)
    bias = m.params["bias"] if m.affine else np.zeros(c, np.float32)
    ins = [xs[0], p(w, m, "weight", scale), p(w, m, "bias", bias), p(w, m, "running_mean"), p(w, m, "running_var")]
    return w.node("BatchNormalization", ins, m.name, epsilon=m.eps, momentum=1 - m.momentum)


def instance_norm(w, m, xs):
    c = m.num_features
    scale = m.params["weight"] if m.affine else np.ones(c, np.float32)
    bias = m.params["bias"] if m.affine else np.zeros(c, np.float32)
    return w.node("InstanceNormalization", [xs[0], p(w, m, "weight", scale), p(w, m, "bias", bias)], m.name,
                  epsilon=m.eps)


def lrn(w, m, xs):
    x = xs[0]
    if m.region == "within":  # x / (k + alpha * mean of x^2 over a size x size window)^beta
        sq = w.node("Mul", [x, x], f"{m.name}/square")
        before, after = m.size // 2, (m.size - 1) // 2
        avg = w.node("AveragePool", [sq], f"{m.name}/window", kernel_shape=[m.size, m.size],
                     pads=[before, before, after, after], count_include_pad=1)
        scale = w.node("Add", [w.node("Mul", [avg, w.const(f"{m.name}/alpha", np.float32(m.alpha))], f"{m.name}/ax"),
                               w.const(f"{m.name}/k", np.float32(m.k))], f"{m.name}/scale")
        power = w.node("Pow", [scale, w.const(f"{m.name}/-beta", np.float32(-m.beta))], f"{m.name}/power")
        return w.node("Mul", [x, power], m.name)
    if m.size % 2:
        return w.node("LRN", [x], m.name, size=m.size, alpha=m.alpha, beta=m.beta, bias=m.k)
    # ONNX places an even window the other way round, and onnxruntime runs odd sizes only: the sum
    # over channels as an average pool over a (C, H*W) plane
    n, c, *rest = w.shape(x)
    sq = w.node("Reshape", [w.node("Mul", [x, x], f"{m.name}/square"), w.ints(f"{m.name}/plane", [0, 1, c, -1])],
                f"{m.name}/channels_as_rows")
    before, after = m.size // 2, (m.size - 1) // 2
    avg = w.node("AveragePool", [sq], f"{m.name}/window", kernel_shape=[m.size, 1], pads=[before, 0, after, 0],
                 count_include_pad=1)
    avg = w.node("Reshape", [avg, w.ints(f"{m.name}/back", [0, c, *rest])], f"{m.name}/mean_sq")
    scale = w.node("Add", [w.node("Mul", [avg, w.const(f"{m.name}/alpha", np.float32(m.alpha))], f"{m.name}/ax"),
                           w.const(f"{m.name}/k", np.float32(m.k))], f"{m.name}/scale")
    power = w.node("Pow", [scale, w.const(f"{m.name}/-beta", np.float32(-m.beta))], f"{m.name}/power")
    return w.node("Mul", [x, power], m.name)


def scale(w, m, xs):
    x = xs[0]
    axis = m.axis % w.rank(x)
    shape = tuple(m.shape) + (1,) * (w.rank(x) - axis - len(m.shape))
    y = w.node("Mul", [x, p(w, m, "weight", m.params["weight"].reshape(shape))], f"{m.name}/scaled" if m.has_bias
               else m.name)
    return w.node("Add", [y, p(w, m, "bias", m.params["bias"].reshape(shape))], m.name) if m.has_bias else y


# ---- shapes ---------------------------------------------------------------------------------------
def flatten(w, m, xs):
    x = xs[0]
    rank = w.rank(x)
    start, end = m.start_dim % rank, m.end_dim % rank
    if start == 1 and end == rank - 1:
        return w.node("Flatten", [x], m.name, axis=1)
    shape = list(out_shape(w, m, xs))
    target = [0, *shape[1:]] if start > 0 else [-1, *shape[1:]]
    return w.node("Reshape", [x, w.ints(f"{m.name}/shape", target)], m.name)


def reshape(w, m, xs):
    return w.node("Reshape", [xs[0], w.ints(f"{m.name}/shape", m.shape)], m.name)


def permute(w, m, xs):
    return w.node("Transpose", xs[:1], m.name, perm=m._full(w.rank(xs[0])))


# ---- containers and joins ------------------------------------------------------------------------
def sequential(w, m, xs):
    outs = xs
    for child in m.children():
        outs = emit(w, child, outs if child.multi_input else outs[:1])
    return outs


def graph(w, m, xs):
    from kindling.runtime.layers.graph import _split_ref
    values = dict(zip(m.input_names, [[x] for x in xs]))

    def value(ref):
        node, index = _split_ref(ref)
        if ref in values:
            return values[ref][0]
        return values[node][index or 0]
    for child in m.order():
        values[child.name] = emit(w, child, [value(r) for r in m.node_inputs[child.name]])
    return [value(r) for r in m.output_names]


def _branches(w, m, xs):
    """A join's inputs: the inputs themselves, or each branch run on the one input."""
    if m.multi_input:
        return xs
    return [emit(w, b, xs[:1])[0] for b in m.children()]


def concat(w, m, xs):
    return w.node("Concat", _branches(w, m, xs), m.name, axis=m.axis)


def add(w, m, xs):
    ins = _branches(w, m, xs)
    if m.coeffs is not None:
        ins = [x if c == 1 else w.node("Mul", [x, w.const(f"{m.name}/coeff", np.float32(c))], f"{m.name}/weighted")
               for x, c in zip(ins, m.coeffs)]
    return w.node("Sum", ins, m.name) if len(ins) != 2 else w.node("Add", ins, m.name)


def _variadic(op):
    def fn(w, m, xs):
        ins = _branches(w, m, xs)
        if op == "Mul":
            y = ins[0]
            for i, x in enumerate(ins[1:]):
                y = w.node("Mul", [y, x], m.name if i == len(ins) - 2 else f"{m.name}/product")
            return y if len(ins) > 1 else w.node("Identity", ins, m.name)
        return w.node(op, ins, m.name)
    return fn


# ---- the layers ONNX brought ------------------------------------------------------------------------
BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "pow": "Pow", "max": "Max", "min": "Min",
          "matmul": "MatMul", "prelu": "PRelu"}


def binary_op(w, m, xs):
    if m.multi_input:
        return w.node(BINARY[m.op], xs, m.name)
    c = p(w, m, "constant")
    return w.node(BINARY[m.op], [c, xs[0]] if m.constant_first else [xs[0], c], m.name)


def constant(w, m, xs):
    return w.node("Constant", [], m.name, value=tensor(m.buffers["value"], f"{m.name}.value"))


def pad(w, m, xs):
    rank = w.rank(xs[0])
    onnx_pads = m.pads[0::2] + m.pads[1::2]  # ONNX: every axis's before, then every axis's after
    if len(onnx_pads) != 2 * rank:
        raise OnnxError(f"module {m.name!r}: {len(m.pads) // 2} pad pairs for an input of rank {rank}")
    if m.mode == "wrap" and w.opset < 19:
        raise OnnxError(f"module {m.name!r}: wrap padding needs opset 19 or later (--opset 19)")
    ins = [xs[0], w.ints(f"{m.name}/pads", onnx_pads)]
    if m.mode == "constant":
        ins.append(w.const(f"{m.name}/value", np.float32(m.value)))
    return w.node("Pad", ins, m.name, mode=m.mode)


def resize(w, m, xs):
    x = xs[0]
    rank = w.rank(x)
    axes = [a % rank for a in (m.axes if m.axes is not None else range(rank))]
    needs = {"keep_aspect_ratio_policy": m.keep_aspect_ratio_policy != "stretch", "antialias": m.antialias,
             "half_pixel_symmetric": m.coordinate_transformation_mode == "half_pixel_symmetric"}
    since = {"keep_aspect_ratio_policy": 18, "antialias": 18, "half_pixel_symmetric": 19}
    for what, used in needs.items():
        if used and w.opset < since[what]:
            raise OnnxError(f"module {m.name!r}: Resize with {what} needs opset {since[what]} or later")
    roi = ""
    if m.roi is not None:
        full = [0.0] * rank + [1.0] * rank
        for i, a in enumerate(axes):
            full[a], full[rank + a] = m.roi[i], m.roi[len(axes) + i]
        roi = w.const(f"{m.name}/roi", full)
    scales = sizes = ""
    if m.scales is not None:
        full = [1.0] * rank
        for a, s in zip(axes, m.scales):
            full[a] = s
        scales = w.const(f"{m.name}/scales", full)
    else:
        pieces, shape = [], None
        for a in range(rank):
            size = m.sizes[axes.index(a)] if a in axes else 0
            if size:
                pieces.append(w.ints(f"{m.name}/size{a}", [size]))
            else:  # as the input: read from its shape, so any batch size runs
                shape = shape or w.node("Shape", [x], f"{m.name}/in_shape")
                pieces.append(w.node("Slice", [shape, w.ints(f"{m.name}/a{a}", [a]), w.ints(f"{m.name}/b{a}", [a + 1])],
                                     f"{m.name}/in_size{a}"))
        sizes = w.node("Concat", pieces, f"{m.name}/sizes", axis=0)
    attrs = dict(mode=m.mode, coordinate_transformation_mode=m.coordinate_transformation_mode,
                 nearest_mode=m.nearest_mode, cubic_coeff_a=m.cubic_coeff_a, exclude_outside=int(m.exclude_outside),
                 extrapolation_value=m.extrapolation_value)
    if w.opset >= 18:
        attrs.update(antialias=int(m.antialias), keep_aspect_ratio_policy=m.keep_aspect_ratio_policy)
    return w.node("Resize", [x, roi, scales, sizes] if sizes else [x, roi, scales], m.name, **attrs)


def strided_slice(w, m, xs):
    ins = [xs[0], w.ints(f"{m.name}/starts", m.starts), w.ints(f"{m.name}/ends", m.ends),
           w.ints(f"{m.name}/axes", m.axes), w.ints(f"{m.name}/steps", m.steps)]
    return w.node("Slice", ins, m.name)


def gather(w, m, xs):
    return w.node("Gather", [xs[0], p(w, m, "indices", dtype=np.int64)], m.name, axis=m.axis)


REDUCE = {"sum": ("ReduceSum", 13), "mean": ("ReduceMean", 18), "max": ("ReduceMax", 18), "min": ("ReduceMin", 18)}


def reduce_axes(w, m, xs):
    op, since = REDUCE[m.op]
    axes = m.axes if m.axes is not None else list(range(w.rank(xs[0])))
    return w.axes_input_or_attr(op, xs[0], axes, m.name, since, keepdims=int(m.keepdims))


EMIT = {
    "Linear": linear, "Conv2d": conv, "ConvTranspose2d": conv_transpose,
    "MaxPool2d": max_pool, "AvgPool2d": avg_pool, "MaxUnpool2d": max_unpool,
    "ReLU": _unary("Relu"), "LeakyReLU": _unary("LeakyRelu", alpha="negative_slope"), "ELU": _unary("Elu", alpha="alpha"),
    "Sigmoid": _unary("Sigmoid"), "Tanh": _unary("Tanh"), "PReLU": prelu,
    "Softmax": softmax("Softmax"), "LogSoftmax": softmax("LogSoftmax"), "Dropout": dropout,
    "Clip": clip, "ReLU6": clip, "Swish": swish, "HardSigmoid": _unary("HardSigmoid", alpha="alpha", beta="beta"), "HardSwish": hard_swish,
    "SELU": _unary("Selu", alpha="alpha", gamma="gamma"),
    "BatchNorm2d": batch_norm, "InstanceNorm": instance_norm, "LocalResponseNorm": lrn, "Scale": scale,
    "Flatten": flatten, "Reshape": reshape, "Identity": _unary("Identity"), "Permute": permute,
    "Sequential": sequential, "Graph": graph, "Concat": concat, "Add": add, "Mul": _variadic("Mul"),
    "Max": _variadic("Max"), "Min": _variadic("Min"),
    "BinaryOp": binary_op, "Constant": constant, "Pad": pad, "Resize": resize, "StridedSlice": strided_slice,
    "Gather": gather, "ReduceAxes": reduce_axes,
    **EXTRA,
}
