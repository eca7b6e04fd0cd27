"""A Caffe net's inputs and their shapes: declared (`input:` with its dims, Input and DummyData
layers), given (``inputs=``, --input), or, where neither says, worked out from the net itself, as a
user would: a train_val net whose data layer is dropped, or a placeholder size such as OpenPose's
1x3x1x1 that its tool replaces at run time.

- channels: the first convolution's weights (in / group), when the caffemodel is there;
- size: the data layer's crop_size; else the square size at which the first InnerProduct gets
  exactly as many inputs as its weights take (of several such sizes, the smallest at which every
  pooling that tiles its input, kernel = stride, covers it whole: 28 for LeNet of 25..28, 32 for
  CIFAR-10's nets of 32..39); else nothing fixes it, and the net is probed at a common size (it then
  takes any size that fits).

Only where nothing fixes a shape is --input asked for.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kindling.runtime.shapes import ShapeError, trace

from .build import build, dropped, dummy_data_shapes
from .errors import CaffeError
from .parse import CaffeLayer, cut_at, declared_inputs

# Sizes a net whose input size nothing fixes is probed at, in order (common sizes, multiples of 32 first).
PROBE_SIZES = (224, 256, 227, 300, 320, 368, 416, 448, 512, 96, 64, 32)
# The largest side the search for an InnerProduct's size looks at.
MAX_SIDE = 1024
CONVOLUTIONS = {"Convolution", "ConvolutionDepthwise", "DepthwiseConvolution", "Deconvolution"}
TRAINING_DATA = {"Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "AnnotatedData"}


@dataclass
class Inputs:
    shapes: dict[str, list[int]]   # every input's shape; a size still to probe has H and W of 0
    probe: str | None = None       # the input whose size nothing fixes: the net is probed at PROBE_SIZES


def declared(net, layers, given: dict | None, path, table: dict) -> dict[str, list[int] | None]:
    """Inputs by name: declared, given, and the tops of dropped data layers that kept layers read
    (shape None when unknown)."""
    inputs = declared_inputs(net, layers)
    for layer in layers:
        if layer.type == "DummyData":
            inputs.update(zip(layer.tops, dummy_data_shapes(layer)))
    produced = set(inputs)
    from_dropped = set()  # tops of data layers dropped from a train_val net
    unwritten = []  # bottoms no layer writes: a deploy net whose `input:` line was left to a tool (DIGITS)
    for layer in layers:
        if layer.type in ("Input", "DummyData"):
            continue
        if dropped(layer, table):
            from_dropped.update(layer.tops)
            continue
        for b in layer.bottoms:
            if b not in produced and b in from_dropped:
                inputs.setdefault(b, None)  # now an input of the converted net
                produced.add(b)
            elif b not in produced and b not in unwritten:
                unwritten.append(b)
        produced.update(layer.tops)
    for name, shape in (given or {}).items():
        if name not in inputs and name not in unwritten:
            raise CaffeError(f"{path}: --input names {name!r}, but the net's inputs are {list(inputs)}"
                             + (f" (and no layer writes {', '.join(unwritten)})" if unwritten else ""))
        inputs[name] = list(shape)
    if not inputs:
        raise CaffeError(f"{path}: the net declares no input (no `input:`, Input layer or data layer)"
                         + (f"; layers read {', '.join(unwritten)}, which no layer writes: give its shape, e.g. "
                            f"--input {unwritten[0]}=1,3,224,224" if unwritten else "") + stage_hint(net))
    return inputs


def stage_hint(net) -> str:
    """Nets that pick layers by stage (DIGITS: train / val / deploy) convert only with the right stage."""
    rules = [r for la in [*net.layer, *net.layers] for r in [*la.include, *la.exclude]]
    stages = sorted({s for r in rules for s in [*r.stage, *r.not_stage]})
    return f"; this net selects layers by stage ({', '.join(stages)}): pass stages=[...] (--stage NAME)" if stages else ""


def _placeholder(shape) -> bool:
    """OpenPose declares `input_dim: 1 3 1 1` and sets the image size at run time."""
    return shape is not None and len(shape) == 4 and shape[2] <= 1 and shape[3] <= 1


def _first_convolution(layers: list[CaffeLayer]) -> tuple[CaffeLayer, int] | None:
    """The first convolution with weights, and the channels it reads."""
    for layer in layers:
        if layer.type in CONVOLUTIONS and layer.blobs:
            w = layer.blobs[0]
            w = w.reshape(w.shape[-4:]) if w.ndim > 4 else w
            if w.ndim != 4:
                continue
            if layer.type == "Deconvolution":
                return layer, int(w.shape[0])
            if layer.type != "Convolution":  # depthwise: one filter per channel
                return layer, int(w.shape[0])
            return layer, int(w.shape[1]) * max(int(layer.param.convolution_param.group), 1)
    return None


def _crop_size(layers: list[CaffeLayer], name: str) -> int:
    """The crop_size of the data layer that writes ``name`` (any type with a transform_param:
    Data, ImageData, DeepLab's ImageSegData...)."""
    for layer in layers:
        if name in layer.tops and layer.param.HasField("transform_param"):
            return int(layer.param.transform_param.crop_size)
    return 0


def resolve(net, layers: list[CaffeLayer], given: dict | None, path, table: dict, notes: list[str]) -> Inputs:
    shapes = declared(net, layers, given, path, table)
    open_ = [n for n, s in shapes.items() if (s is None or _placeholder(s)) and n not in (given or {})]
    if not open_:
        return Inputs(shapes)
    if len(open_) > 1 or len(shapes) > 1:
        raise CaffeError(f"{path}: no shape for input(s) {', '.join(open_)}: give it, e.g. "
                         f"--input {open_[0]}=1,3,224,224")
    name = open_[0]
    shape = shapes[name]
    conv = _first_convolution(layers)
    if shape is not None:
        channels, said = shape[1], f"{shape[1]} channels as declared"
    elif conv is not None:
        channels, said = conv[1], f"{conv[1]} channels from {conv[0].name}'s weights"
    else:
        raise CaffeError(f"{path}: no shape for input {name!r}, and no convolution's weights tell its channels"
                         f"{'' if any(la.blobs for la in layers) else ' (give the caffemodel)'}: give it, e.g. "
                         f"--input {name}=1,3,224,224")
    crop = _crop_size(layers, name)
    if crop:
        notes.append(f"input {name!r}: {said}, {crop}x{crop} from its data layer's crop_size")
        return Inputs({name: [1, channels, crop, crop]})
    sized = _size_from_inner_product(layers, name, channels, path, table, notes, said)
    if sized:
        return Inputs({name: [1, channels, sized, sized]})
    kind = "a placeholder its tool replaces at run time" if shape is not None else "nothing fixes its size"
    notes.append(f"input {name!r}: {said}; {kind}: the net takes any size that fits")
    return Inputs({name: [1, channels, 0, 0]}, probe=name)


def _prefix(layers, name, bottom, channels, path, table):
    """The net up to ``bottom`` (what an InnerProduct reads), built at the first common size it fits."""
    head = [la for la in cut_at(layers, [bottom], path) if not dropped(la, table)]
    for side in PROBE_SIZES:
        try:
            return build(head, {name: [1, channels, side, side]}, table, path, [], name="prefix").model
        except CaffeError:
            continue
    return None


def _size_from_inner_product(layers, name, channels, path, table, notes, said) -> int | None:
    """The square side at which the first InnerProduct gets as many inputs as its weights take;
    None when there is no InnerProduct or the number does not depend on the size (a global
    pooling before it)."""
    ip = next((la for la in layers if la.type == "InnerProduct" and la.blobs and not dropped(la, table)), None)
    if ip is None:
        return None
    p = ip.param.inner_product_param
    wanted = ip.blobs[0].size // max(int(p.num_output), 1)
    model = _prefix(layers, name, ip.bottoms[0], channels, path, table)
    if model is None:
        return None

    def features(side: int) -> int | None:
        try:
            out = trace(model, [(1, channels, side, side)])[model.name]
        except ShapeError:
            return None
        return int(np.prod(out[p.axis % len(out):]))

    if features(MAX_SIDE) in (None, wanted) or features(MAX_SIDE) == features(MAX_SIDE // 2):
        return None  # not fixed by the size (or too big to say)
    lo, hi = 1, MAX_SIDE  # the smallest side giving at least as many features
    while lo < hi:
        mid = (lo + hi) // 2
        f = features(mid)
        lo, hi = (lo, mid) if f is not None and f >= wanted else (mid + 1, hi)
    sides = [s for s in range(lo, min(lo + 64, MAX_SIDE)) if features(s) == wanted]
    if not sides:
        raise CaffeError(f"{path}: input {name!r}: {ip.name} takes {wanted} inputs, which no square size gives "
                         f"(sizes {lo - 1} and {lo} give {features(lo - 1)} and {features(lo)}): give it, e.g. "
                         f"--input {name}=1,{channels},{lo},{lo}")
    whole = [s for s in sides if _windows_fit(model, (1, channels, s, s))]
    side = (whole or sides)[0]
    others = f" (sizes {sides[0]}..{sides[-1]} give as many; {side} is the smallest at which every pooling " \
             f"that tiles its input covers it whole)" if len(sides) > 1 else ""
    notes.append(f"input {name!r}: {said}, {side}x{side} from {ip.name}'s {wanted} inputs{others}; give --input "
                 f"to choose another")
    return side


def _windows_fit(model, shape) -> bool:
    """Every pooling that tiles its input (kernel = stride, LeNet's 2x2) covers it exactly at this
    input shape, with no partial window from Caffe's rounding up. Overlapping ones (CIFAR-10's and
    AlexNet's 3x3 by 2) make a partial last window by design, so they say nothing."""
    seen: dict = {}
    trace(model, [shape], inputs=seen)
    for m in model.modules():
        if type(m).__name__ not in ("MaxPool2d", "AvgPool2d") or m.kernel_size is None or m.name not in seen:
            continue
        if tuple(m.kernel_size) != tuple(m.stride):
            continue
        k, h, w = m.kernel_size, *seen[m.name][0][2:]
        if (h + 2 * m.padding[0] - k[0]) % m.stride[0] or (w + 2 * m.padding[1] - k[1]) % m.stride[1]:
            return False
    return True


def placeholder_hint(shapes: dict, given: dict | None) -> str:
    """A shape error at a declared placeholder size comes from the placeholder, not the net."""
    tiny = [n for n, s in shapes.items() if _placeholder(s) and n not in (given or {})]
    if not tiny:
        return ""
    return (f"; the net declares input {tiny[0]!r} as {'x'.join(map(str, shapes[tiny[0]]))}, a placeholder its tool "
            f"replaces at run time: give the real size, e.g. --input {tiny[0]}=1,{shapes[tiny[0]][1]},368,368")
