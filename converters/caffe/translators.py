"""Caffe layer type -> kindling modules: one translator per type, and the TABLE that maps them.

A translator is ``fn(layer: CaffeLayer, shapes: list[tuple]) -> Module | list[Module]``: it gets
the layer (its *_param fields in ``layer.param``, its weights in ``layer.blobs``) and the shapes of
its inputs (batch 1), and returns the module that computes it, or a chain of modules (the first
reads the layer's bottoms, the last produces its top). The module that holds the weights is named
after the Caffe layer, so weights stay addressable as in Caffe. Weight layout fixes live in the
translator. DROP marks types that only matter for training (data, loss, accuracy): they are
left out with a note.

Your own layer types come in as an argument, not a global registry::

    def my_layer(layer, shapes):
        return nn.Scale(shapes[0][1], name=layer.name)
    convert("deploy.prototxt", "w.caffemodel", translators={"MyLayer": my_layer})
"""
from __future__ import annotations

import math

import numpy as np

from kindling.protos import caffe_pb2
from kindling.runtime import nn

from .errors import CaffeError
from .parse import CaffeLayer

DROP = None  # a TABLE value: the type is left out of the converted model, with a note


def _fail(layer: CaffeLayer, problem: str):
    raise CaffeError(f"layer {layer.name!r} ({layer.type}): {problem}")


def _hw(layer, p, name: str, default: int) -> tuple[int, int]:
    """kernel/pad/stride/dilation from the repeated field or its _h/_w forms (DeepLab v1 calls the
    dilation hole)."""
    if name == "dilation" and any(p.HasField(f) for f in ("hole", "hole_h", "hole_w")):
        if p.dilation:
            _fail(layer, "gives both dilation and DeepLab's hole")
        return (int(p.hole_h if p.HasField("hole_h") else p.hole), int(p.hole_w if p.HasField("hole_w") else p.hole))
    h, w = f"{name}_h", f"{name}_w"
    if h in p.DESCRIPTOR.fields_by_name and (p.HasField(h) or p.HasField(w)):
        return int(getattr(p, h)), int(getattr(p, w))
    values = list(p.kernel_size if name == "kernel" else getattr(p, name))
    if not values:
        return default, default
    if len(values) <= 2:
        return int(values[0]), int(values[-1])
    _fail(layer, f"{name} has {len(values)} values; only 2-D layers are supported")


def _blob(layer: CaffeLayer, i: int, shape, what: str) -> np.ndarray:
    """Blob i reshaped to ``shape``; an error names the layer and both shapes when it does not fit."""
    b = layer.blobs[i]
    if b.size != math.prod(shape):  # Python ints: a hostile shape's product must not wrap
        _fail(layer, f"{what} blob has shape {list(b.shape)} ({b.size} values) but the layer needs {list(shape)}")
    return np.ascontiguousarray(b.reshape(shape), dtype=np.float32)


def _expect_blobs(layer: CaffeLayer, counts: tuple[int, ...]):
    if layer.blobs and len(layer.blobs) not in counts:
        _fail(layer, f"has {len(layer.blobs)} blobs in the caffemodel, expected {' or '.join(map(str, counts))}")


def _set(module: nn.Module, layer: CaffeLayer, names: list[str]):
    """Copies the layer's blobs into the module's parameters, in order, checking each shape."""
    _expect_blobs(layer, (len(names),) if len(names) == len(module.params) else (len(names), len(module.params)))
    for i, pname in enumerate(names[:len(layer.blobs)]):
        module.params[pname] = _blob(layer, i, module.params[pname].shape, pname)
    set_mults(module, layer, names)
    return module


def set_mults(module, layer, names):
    """Caffe's lr_mult / decay_mult of each blob onto the module's parameter of that position."""
    for i, pname in enumerate(names):
        lr = layer.lr_mult[i] if i < len(layer.lr_mult) else 1.0
        decay = layer.decay_mult[i] if i < len(layer.decay_mult) else 1.0
        if (lr, decay) != (1.0, 1.0):
            module.set_mult(pname, lr, decay)


def _channels(layer, shapes, axis=1) -> int:
    if not shapes or len(shapes[0]) <= axis:
        _fail(layer, f"needs an input with a channel axis, got shape {shapes[0] if shapes else None}")
    return int(shapes[0][axis])


# ---- compute layers ---------------------------------------------------------------------------
def convolution(layer: CaffeLayer, shapes):
    p = layer.param.convolution_param
    if p.axis != 1:
        _fail(layer, f"convolution over axis {p.axis} is not supported (only axis 1)")
    cin = _channels(layer, shapes)
    group = cin if layer.type == "ConvolutionDepthwise" else p.group
    if not p.num_output:
        _fail(layer, "convolution_param.num_output is missing")
    with _deferred(layer):
        m = nn.Conv2d(cin, p.num_output, _hw(layer, p, "kernel", 0), _hw(layer, p, "stride", 1),
                      _hw(layer, p, "pad", 0), _hw(layer, p, "dilation", 1), group, p.bias_term, name=layer.name)
    return _set(m, layer, ["weight", "bias"] if p.bias_term else ["weight"])


def deconvolution(layer: CaffeLayer, shapes):
    p = layer.param.convolution_param
    cin = _channels(layer, shapes)
    if not p.num_output:
        _fail(layer, "convolution_param.num_output is missing")
    with _deferred(layer):
        m = nn.ConvTranspose2d(cin, p.num_output, _hw(layer, p, "kernel", 0), _hw(layer, p, "stride", 1),
                               _hw(layer, p, "pad", 0), 0, p.group, p.bias_term, _hw(layer, p, "dilation", 1),
                               name=layer.name)
    return _set(m, layer, ["weight", "bias"] if p.bias_term else ["weight"])


def inner_product(layer: CaffeLayer, shapes):
    p = layer.param.inner_product_param
    shape = shapes[0]
    axis = p.axis % len(shape)
    fin = int(np.prod(shape[axis:]))
    with _deferred(layer):
        m = nn.Linear(fin, p.num_output, p.bias_term, name=layer.name)
    if layer.blobs:
        _expect_blobs(layer, (2,) if p.bias_term else (1,))
        w = _blob(layer, 0, (fin, p.num_output) if p.transpose else (p.num_output, fin), "weight")
        m.params["weight"] = np.ascontiguousarray(w.T) if p.transpose else w
        if p.bias_term:
            m.params["bias"] = _blob(layer, 1, (p.num_output,), "bias")
    set_mults(m, layer, ["weight", "bias"])
    if axis == 1:
        return m  # Linear flattens (N, ...) itself
    # Caffe keeps the axes before `axis`: flatten the rest, multiply, restore the leading axes.
    return [nn.Reshape([-1, fin], name=f"{layer.name}/flatten"), m,
            nn.Reshape([-1, *shape[1:axis], p.num_output], name=f"{layer.name}/unflatten")]


def pooling(layer: CaffeLayer, shapes):
    p = layer.param.pooling_param
    ceil = p.round_mode == caffe_pb2.PoolingParameter.CEIL and p.ceil_mode
    kernel = None if p.global_pooling else _hw(layer, p, "kernel", 0)
    if kernel is not None and 0 in kernel:
        _fail(layer, "pooling_param needs kernel_size (or global_pooling)")
    args = dict(kernel_size=kernel, stride=_hw(layer, p, "stride", 1), padding=_hw(layer, p, "pad", 0),
                ceil_mode=ceil, global_pooling=p.global_pooling, name=layer.name)
    if len(layer.tops) > 2:
        _fail(layer, f"has {len(layer.tops)} tops; pooling gives its output and, for MAX, the argmax mask")
    if p.pool == caffe_pb2.PoolingParameter.MAX:
        # A second top is the argmax mask (SegNet): each maximum's h * W + w in its channel plane.
        return nn.MaxPool2d(**args, return_indices=len(layer.tops) == 2)
    if len(layer.tops) == 2:
        _fail(layer, "only MAX pooling has a second top (the argmax mask)")
    if p.pool == caffe_pb2.PoolingParameter.AVE:
        return nn.AvgPool2d(count_include_pad=True, **args)
    _fail(layer, "STOCHASTIC pooling is not supported")


# ---- activations and normalisation --------------------------------------------------------------
def relu(layer, shapes):
    slope = layer.param.relu_param.negative_slope
    return nn.LeakyReLU(slope, name=layer.name) if slope else nn.ReLU(name=layer.name)


def prelu(layer, shapes):
    shared = layer.param.prelu_param.channel_shared
    m = nn.PReLU(1 if shared else _channels(layer, shapes), name=layer.name)
    return _set(m, layer, ["weight"])


def lrn(layer, shapes):
    p = layer.param.lrn_param
    within = p.norm_region == caffe_pb2.LRNParameter.WITHIN_CHANNEL
    return nn.LocalResponseNorm(p.local_size, p.alpha, p.beta, 1.0 if within else p.k,
                                region="within" if within else "across", name=layer.name)


def bn(layer, shapes):
    """SegNet's BN: per-channel scale and shift blobs, (1, C, 1, 1) each. INFERENCE computes
    scale * x + shift (SegNet-Tutorial's compute_bn_statistics.py folds the data set's statistics
    into the two blobs): a Scale. LEARN first normalizes with the batch's own mean and biased
    variance (eps 1e-9): a BatchNorm2d without affine before the Scale, which does the same while
    training (build notes what evaluate mode does instead)."""
    p = layer.param.bn_param
    c = _channels(layer, shapes)
    if len(layer.tops) != 1:
        _fail(layer, f"has {len(layer.tops)} tops; the extra ones (the batch mean and variance of LEARN mode, "
                     f"which compute_bn_statistics.py adds) are not converted")
    if len(layer.blobs) not in (0, 2):
        _fail(layer, f"has {len(layer.blobs)} blobs in the caffemodel; SegNet's BN keeps 2 (scale, shift). A BN "
                     f"with separate mean and variance blobs is another fork's layer")
    m = _set(nn.Scale([c], bias=True, axis=1, name=layer.name), layer, ["weight", "bias"])
    if p.bn_mode == caffe_pb2.BNParameter.INFERENCE:
        return m
    return [nn.BatchNorm2d(c, eps=1e-9, affine=False, name=f"{layer.name}/normalize"), m]


def batch_norm(layer, shapes):
    """Caffe keeps mean and variance multiplied by a running factor (the third blob)."""
    p = layer.param.batch_norm_param
    c = _channels(layer, shapes)
    m = nn.BatchNorm2d(c, eps=p.eps, momentum=1.0 - p.moving_average_fraction, affine=False, name=layer.name)
    if layer.blobs:
        _expect_blobs(layer, (3,))
        m.buffers["running_mean"] = _blob(layer, 0, (c,), "mean") * batch_norm_factor(layer.blobs)
        m.buffers["running_var"] = _blob(layer, 1, (c,), "variance") * batch_norm_factor(layer.blobs)
    return m


def batch_norm_factor(blobs) -> np.float32:
    """What Caffe's stored mean and variance are multiplied by to give the statistics: the inverse
    of the running factor in the third blob (0 when that factor is 0, as Caffe does)."""
    factor = float(blobs[2].reshape(-1)[0]) if blobs[2].size else 1.0
    return np.float32(0.0 if factor == 0 else 1.0 / factor)


def scale(layer, shapes):
    p = layer.param.scale_param
    if len(layer.bottoms) == 2:
        if p.bias_term:
            _fail(layer, "Scale with two bottoms and bias_term is not supported")
        return nn.ScaleBy(p.axis, name=layer.name)
    shape = _param_shape(shapes[0], p.axis, p.num_axes)
    m = nn.Scale(shape, bias=p.bias_term, axis=p.axis, name=layer.name)
    return _set(m, layer, ["weight", "bias"] if p.bias_term else ["weight"])


def bias(layer, shapes):
    p = layer.param.bias_param
    if len(layer.bottoms) == 2:
        _fail(layer, "Bias with two bottoms is not supported")
    shape = _param_shape(shapes[0], p.axis, p.num_axes)
    return _set(nn.Bias(shape, p.axis, name=layer.name), layer, ["bias"])


def _param_shape(in_shape, axis, num_axes):
    """The shape Caffe gives the parameter (from the input, not the blob: writers differ on a
    scalar's blob, () or (1,), and on legacy 4-D padding; _blob checks the size)."""
    axis = axis % len(in_shape)
    end = len(in_shape) if num_axes == -1 else axis + num_axes
    return list(in_shape[axis:end])


def normalize(layer, shapes):
    p = layer.param.norm_param
    m = nn.Normalize(_channels(layer, shapes), p.across_spatial, p.channel_shared, p.eps, name=layer.name)
    return _set(m, layer, ["weight"])


# ---- joins and shapes ---------------------------------------------------------------------------
def eltwise(layer, shapes):
    p = layer.param.eltwise_param
    op = p.operation
    if op == caffe_pb2.EltwiseParameter.SUM:
        coeffs = list(p.coeff) or None
        if coeffs and len(coeffs) != len(layer.bottoms):
            _fail(layer, f"{len(coeffs)} coeff values for {len(layer.bottoms)} bottoms")
        return nn.Add(coeffs=coeffs, name=layer.name)
    return {caffe_pb2.EltwiseParameter.PROD: nn.Mul, caffe_pb2.EltwiseParameter.MAX: nn.Max}[op](name=layer.name)


def concat(layer, shapes):
    p = layer.param.concat_param
    axis = p.axis if p.HasField("axis") or not p.HasField("concat_dim") else p.concat_dim
    return nn.Concat(axis=axis, name=layer.name)


def flatten(layer, shapes):
    p = layer.param.flatten_param
    return nn.Flatten(p.axis, p.end_axis, name=layer.name)


def reshape(layer, shapes):
    """Caffe's axis/num_axes form becomes a full target shape (0 = copy, -1 = infer)."""
    p = layer.param.reshape_param
    in_shape = shapes[0]
    axis = p.axis if p.axis >= 0 else len(in_shape) + 1 + p.axis
    end = len(in_shape) if p.num_axes == -1 else axis + p.num_axes
    if not 0 <= axis <= end <= len(in_shape):  # Caffe's checks on axis and num_axes
        _fail(layer, f"reshape_param axis {p.axis} and num_axes {p.num_axes} do not fit a "
                     f"{len(in_shape)}-d input")
    spec = list(p.shape.dim)
    # Leading dims are kept as 0 (copy), so a 0 in the spec still copies the input dim at its position.
    target = [0] * axis + spec + [int(d) for d in in_shape[end:]]
    return nn.Reshape(target, name=layer.name)


def slice_(layer, shapes):
    p = layer.param.slice_param
    if len(layer.tops) == 1 and not p.slice_point:  # Caffe copies the bottom to the one top
        return nn.Identity(name=layer.name)
    axis = p.axis if p.HasField("axis") or not p.HasField("slice_dim") else p.slice_dim
    return nn.Slice(axis, list(p.slice_point), num_outputs=len(layer.tops), name=layer.name)


def crop(layer, shapes):
    p = layer.param.crop_param
    return nn.Crop(p.axis, list(p.offset), name=layer.name)


def permute(layer, shapes):
    return nn.Permute(list(layer.param.permute_param.order), name=layer.name)


def upsample(layer, shapes):
    """One bottom: nearest-neighbour (YOLOv3 Caffe). Two bottoms (values, a max pooling's mask):
    SegNet's unpooling, each value put where the mask says in an upsample_h x upsample_w output,
    or scale x the input less pad_out (scale_h/scale_w, else scale) when those are not both given.
    build.py adds a third: the input of the pooling that made the mask, whose size the output must
    have (see nn.MaxUnpool2d)."""
    p = layer.param.upsample_param
    if len(layer.bottoms) in (2, 3):
        if p.HasField("upsample_h") and p.HasField("upsample_w"):
            size = (p.upsample_h, p.upsample_w)
            if min(size) <= 1:
                _fail(layer, f"upsample_h and upsample_w must be above 1, got {size}")
            return nn.MaxUnpool2d(output_size=size, name=layer.name)
        scale = (p.scale_h, p.scale_w) if p.HasField("scale_h") or p.HasField("scale_w") else (p.scale, p.scale)
        if min(scale) <= 1:
            _fail(layer, f"the scale must be above 1, got {scale} (or give upsample_h and upsample_w)")
        pad_out = (int(p.pad_out_h), int(p.pad_out_w))
        if (pad_out[0] and scale[0] != 2) or (pad_out[1] and scale[1] != 2):
            _fail(layer, "pad_out_h / pad_out_w need a scale of 2")
        return nn.MaxUnpool2d(scale, pad_out=pad_out, name=layer.name)
    if p.HasField("scale_h") and p.scale_h != p.scale_w:
        _fail(layer, f"different scales for height and width ({p.scale_h}, {p.scale_w}) are not supported")
    return nn.Upsample(p.scale_h or p.scale, name=layer.name)


# ---- fork layers zoo nets ship ------------------------------------------------------------------
def interp(layer, shapes):
    """DeepLab/PSPNet: the output size from height/width, or from shrink_factor and zoom_factor
    (either or both) of the input less the cropping; Caffe's precedence between them."""
    p = layer.param.interp_param
    shrink, zoom = p.HasField("shrink_factor"), p.HasField("zoom_factor")
    if not (shrink or zoom) and not (p.HasField("height") and p.HasField("width")):
        _fail(layer, "interp_param needs zoom_factor, shrink_factor, or height and width")
    size = (p.height, p.width) if not (shrink or zoom) else None
    return _checked(layer, nn.Interp, size, p.zoom_factor if zoom else 1, p.shrink_factor if shrink else 1,
                    p.pad_beg, p.pad_end)


def padding(layer, shapes):
    """DeepLab v1: pad_beg and pad_end zeros around H and W, both >= 0, or both <= 0 to crop."""
    p = layer.param.padding_param
    if (p.pad_beg > 0 > p.pad_end) or (p.pad_beg < 0 < p.pad_end):
        _fail(layer, f"pad_beg {p.pad_beg} and pad_end {p.pad_end} must both pad or both crop")
    return _checked(layer, nn.Pad, [0, 0, 0, 0, p.pad_beg, p.pad_end, p.pad_beg, p.pad_end])


def reorg(layer, shapes):
    p = layer.param.reorg_param
    if not p.HasField("stride"):
        _fail(layer, "reorg_param.stride is missing")
    return _checked(layer, nn.Reorg, p.stride, p.reverse)


def roi_pooling(layer, shapes):
    p = layer.param.roi_pooling_param
    if len(layer.bottoms) != 2:
        _fail(layer, f"takes two bottoms (features, regions), got {len(layer.bottoms)}")
    return _checked(layer, nn.ROIPooling, p.pooled_h, p.pooled_w, p.spatial_scale)


def psroi_pooling(layer, shapes):
    p = layer.param.psroi_pooling_param
    if len(layer.bottoms) != 2:
        _fail(layer, f"takes two bottoms (features, regions), got {len(layer.bottoms)}")
    if not (p.HasField("output_dim") and p.HasField("group_size") and p.HasField("spatial_scale")):
        _fail(layer, "psroi_pooling_param needs spatial_scale, output_dim and group_size")
    return _checked(layer, nn.PSROIPooling, p.output_dim, p.group_size, p.spatial_scale)


# ---- SSD's detection head ------------------------------------------------------------------------
def prior_box(layer, shapes):
    p = layer.param.prior_box_param
    if len(layer.bottoms) != 2:
        _fail(layer, f"takes two bottoms (a feature map and the image), got {len(layer.bottoms)}")
    if p.HasField("img_size") and (p.HasField("img_h") or p.HasField("img_w")):
        _fail(layer, "give img_size or img_h/img_w, not both")
    if p.HasField("step") and (p.HasField("step_h") or p.HasField("step_w")):
        _fail(layer, "give step or step_h/step_w, not both")
    img = ((p.img_h, p.img_w) if p.HasField("img_h") or p.HasField("img_w")
           else (p.img_size, p.img_size) if p.HasField("img_size") else None)
    step = ((p.step_h, p.step_w) if p.HasField("step_h") or p.HasField("step_w")
            else (p.step, p.step) if p.HasField("step") else None)
    return _checked(layer, nn.PriorBox, list(p.min_size), list(p.max_size), list(p.aspect_ratio), p.flip, p.clip,
                    list(p.variance) or [0.1], img, step, p.offset)


def detection_output(layer, shapes):
    p = layer.param.detection_output_param
    if not p.HasField("num_classes"):
        _fail(layer, "detection_output_param.num_classes is missing")
    if len(layer.bottoms) != 3:
        _fail(layer, f"SSD's DetectionOutput takes three bottoms (locations, confidences, priors), this one "
                     f"{len(layer.bottoms)}" + (" (YOLO ports give their region output this name too: pass a "
                                                 "translator for it)" if len(layer.bottoms) == 1 else ""))
    n = p.nms_param
    return _checked(layer, nn.DetectionOutput, p.num_classes, p.share_location, p.background_label_id,
                    n.nms_threshold, n.top_k if n.HasField("top_k") else -1, n.eta,
                    caffe_pb2.PriorBoxParameter.CodeType.Name(p.code_type), p.variance_encoded_in_target,
                    p.keep_top_k, p.confidence_threshold if p.HasField("confidence_threshold") else None)


def _simple(cls, **fixed):
    return lambda layer, shapes: cls(**fixed, name=layer.name)


def dropout(layer, shapes):
    return nn.Dropout(layer.param.dropout_param.dropout_ratio, name=layer.name)


def power(layer, shapes):
    p = layer.param.power_param
    return nn.Power(p.power, p.scale, p.shift, name=layer.name)


def _checked(layer, cls, *args):
    """cls(*args) named after the layer; a setting the module refuses becomes a CaffeError."""
    try:
        return cls(*args, name=layer.name)
    except ValueError as e:
        _fail(layer, str(e))


def exp(layer, shapes):
    p = layer.param.exp_param
    return _checked(layer, nn.Exp, p.base, p.scale, p.shift)


def log(layer, shapes):
    p = layer.param.log_param
    return _checked(layer, nn.Log, p.base, p.scale, p.shift)


def threshold(layer, shapes):
    return nn.Threshold(layer.param.threshold_param.threshold, name=layer.name)


def mvn(layer, shapes):
    p = layer.param.mvn_param
    return nn.MVN(p.normalize_variance, p.across_channels, p.eps, name=layer.name)


def reduction(layer, shapes):
    p = layer.param.reduction_param
    op = caffe_pb2.ReductionParameter.ReductionOp.Name(p.operation).lower()
    return nn.Reduction(op, p.axis, p.coeff, name=layer.name)


def argmax(layer, shapes):
    p = layer.param.argmax_param
    return _checked(layer, nn.ArgMax, p.top_k, p.axis if p.HasField("axis") else None, p.out_max_val)


def tile(layer, shapes):
    p = layer.param.tile_param
    if not p.HasField("tiles"):
        _fail(layer, "tile_param.tiles is missing")
    return _checked(layer, nn.Tile, p.axis, p.tiles)


def softmax(layer, shapes):
    return nn.Softmax(layer.param.softmax_param.axis, name=layer.name)


def shuffle_channel(layer, shapes):
    return nn.ShuffleChannel(layer.param.shuffle_channel_param.group, name=layer.name)


class _deferred:
    """Skips random initialisation of a module whose weights are about to be copied in."""

    def __init__(self, layer):
        from kindling.runtime import init
        self._ctx = init.deferred() if layer.blobs else None

    def __enter__(self):
        if self._ctx:
            self._ctx.__enter__()

    def __exit__(self, *exc):
        if self._ctx:
            return self._ctx.__exit__(*exc)


SPLIT = "split"  # tops alias the bottom: no module

TABLE = {
    "Convolution": convolution, "ConvolutionDepthwise": convolution, "DepthwiseConvolution": convolution,
    "Deconvolution": deconvolution, "InnerProduct": inner_product, "Pooling": pooling,
    "ReLU": relu, "PReLU": prelu, "ELU": lambda layer, s: nn.ELU(layer.param.elu_param.alpha, name=layer.name),
    "Sigmoid": _simple(nn.Sigmoid), "TanH": _simple(nn.Tanh), "AbsVal": _simple(nn.AbsVal), "BNLL": _simple(nn.BNLL),
    "Power": power, "LRN": lrn, "Dropout": dropout, "Softmax": softmax, "Concat": concat, "Eltwise": eltwise,
    "BatchNorm": batch_norm, "BN": bn, "Scale": scale, "Bias": bias, "Flatten": flatten, "Reshape": reshape,
    "Slice": slice_, "Crop": crop, "Permute": permute, "Normalize": normalize,
    "ShuffleChannel": shuffle_channel, "Axpy": _simple(nn.Axpy), "Upsample": upsample,
    "Exp": exp, "Log": log, "Threshold": threshold, "MVN": mvn, "Reduction": reduction, "Tile": tile,
    "ArgMax": argmax, "PriorBox": prior_box, "DetectionOutput": detection_output,
    # forks: MobileNet ports, YOLO ports, DeepLab/PSPNet, R-CNN and R-FCN, SELU nets
    "ReLU6": _simple(nn.ReLU6), "Mish": _simple(nn.Mish), "Interp": interp, "Padding": padding,
    "Reorg": reorg,
    "ROIPooling": roi_pooling, "PSROIPooling": psroi_pooling, "SeLu": _simple(nn.SELU),
    "SeLuDropout": lambda layer, s: nn.AlphaDropout(layer.param.selu_dropout_param.dropout_ratio, name=layer.name),
    "Split": SPLIT,
    # training only
    "Data": DROP, "ImageData": DROP, "HDF5Data": DROP, "MemoryData": DROP, "WindowData": DROP,
    "AnnotatedData": DROP, "Accuracy": DROP, "SoftmaxWithLoss": DROP, "EuclideanLoss": DROP,
    "SigmoidCrossEntropyLoss": DROP, "HingeLoss": DROP, "InfogainLoss": DROP, "ContrastiveLoss": DROP,
    "MultinomialLogisticLoss": DROP, "Silence": DROP, "HDF5Output": DROP,
    "DenseImageData": DROP,  # SegNet's data layer
    "Python": DROP,  # one without bottoms feeds data (FCN); one with bottoms is refused (build.check_supported)
    # forks' training and evaluation layers (SSD, R-CNN and R-FCN with OHEM, YOLO ports, PSPNet, HED)
    "MultiBoxLoss": DROP, "DetectionEvaluate": DROP, "SmoothL1Loss": DROP,
    "SmoothL1LossOHEM": DROP, "SoftmaxWithLossOHEM": DROP, "BoxAnnotatorOHEM": DROP, "RegionLoss": DROP,
    "Yolov3": DROP, "YoloSeg": DROP, "EvalDetection": DROP, "BoxData": DROP, "SegAccuracy": DROP,
    "SegmentationEvaluate": DROP, "ImageLabelmapData": DROP, "ImageSegData": DROP, "MatWrite": DROP,
}
# Input layers and DummyData that feed the net define its inputs (converters/caffe/build.py).
INPUT_TYPES = {"Input", "DummyData"}
