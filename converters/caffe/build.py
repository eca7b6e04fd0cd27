"""Assembling translated layers into a kindling Graph (or a Sequential when the net is a chain).

Wiring is by blob name, as in Caffe: each top name points at the module output that last wrote
it, so in-place layers (top == bottom) simply move the pointer and the graph stays acyclic.
Output shapes are found by running each new module once on zeros (batch 1), which also checks that
the weights fit their inputs.
"""
from __future__ import annotations

import numpy as np

from kindling.protos import caffe_pb2
from kindling.runtime import nn

from .errors import CaffeError
from .parse import CaffeLayer
from .translators import DROP, INPUT_TYPES, SPLIT, TABLE


def translator_table(user: dict | None) -> dict:
    table = dict(TABLE)
    for name, fn in (user or {}).items():
        if TABLE.get(name) is not None:
            raise ValueError(f"a translator for the built-in Caffe type {name!r} cannot be replaced")
        table[name] = fn
    return table


def dummy_data_shapes(layer: CaffeLayer) -> list[list[int] | None]:
    p = layer.param.dummy_data_param
    if p.shape:
        shapes = [list(s.dim) for s in p.shape]
    else:
        shapes = [[n, c, h, w] for n, c, h, w in zip(p.num, p.channels, p.height, p.width)]
    return [shapes[i] if i < len(shapes) else (shapes[0] if shapes else None) for i in range(len(layer.tops))]


def _python_computes(layer: CaffeLayer, table: dict) -> bool:
    """A Python layer reading bottoms runs user code (Faster R-CNN's proposal layer): only a translator
    passed in can convert it. One without bottoms only feeds data (FCN's VOCSegDataLayer)."""
    return layer.type == "Python" and bool(layer.bottoms) and table.get("Python") is DROP


def dropped(layer: CaffeLayer, table: dict) -> bool:
    """Left out of the converted model: training-only types, and Python data layers."""
    return (layer.type in table and table[layer.type] is DROP) or (layer.type == "Python" and not layer.bottoms)


def _describe(layer: CaffeLayer) -> str:
    p = layer.param.python_param
    if layer.type == "Python" and (p.module or p.layer):
        return f"{layer.name} (Python {p.module}.{p.layer})"
    return f"{layer.name} ({layer.type})"


def check_supported(layers: list[CaffeLayer], table: dict, path) -> None:
    unsupported = [_describe(la) for la in layers
                   if (la.type not in table and la.type not in INPUT_TYPES) or _python_computes(la, table)]
    if unsupported:
        known = sorted(k for k, v in table.items() if v is not None)
        raise CaffeError(f"{path}: unsupported layers: {', '.join(unsupported)}. Supported types: {', '.join(known)}. "
                         f"Register a translator for a custom type (see kindling.converters.caffe).")


def _shape_of(y):
    return [tuple(np.shape(o)) for o in y] if isinstance(y, (list, tuple)) else tuple(np.shape(y))


def _zeros(shape):
    """A zero input for a shape probe: a broadcast view, so no memory is touched until a layer
    that must compute (not one that knows its output shape) reads it."""
    return np.broadcast_to(np.float32(0), tuple(shape))


def _run(module, xs, layer, path):
    if hasattr(module, "output_shape") and len(xs) == 1:  # heavy layers know their shapes: no compute
        try:
            shape = module.output_shape(xs[0].shape)  # a list of shapes for several outputs
            return [tuple(s) for s in shape] if isinstance(shape, list) else tuple(shape)
        except ValueError as e:
            raise CaffeError(f"{path}: layer {layer.name!r} ({layer.type}) does not fit its input shape "
                             f"{tuple(xs[0].shape)}: {e}") from e
    training = module.training
    module.train(False)  # a shape probe must not move BatchNorm's running statistics
    try:
        with np.errstate(all="ignore"):
            y = module.forward(xs if getattr(module, "multi_input", False) else xs[0])
    except (ValueError, IndexError) as e:
        raise CaffeError(f"{path}: layer {layer.name!r} ({layer.type}) does not fit its input shapes "
                         f"{[tuple(x.shape) for x in xs]}: {e}") from e
    finally:
        module.train(training)
    shape = _shape_of(y)
    module._scratch.clear()  # build-time buffers are not kept
    return shape


# Fields the converted model does not follow, with what Caffe does instead: noted, never silent.
_DIFFERENCES = {
    "BatchNorm": lambda la: "use_global_stats: false, so Caffe normalizes with each batch's own statistics; "
                            "the converted model uses the stored mean and variance"
    if la.param.batch_norm_param.HasField("use_global_stats") and not la.param.batch_norm_param.use_global_stats
    else None,
    "BN": lambda la: "bn_mode LEARN: Caffe normalizes with each batch's statistics, as the converted model does "
                     "while training; evaluate mode uses running statistics (mean 0, variance 1 until trained). "
                     "For inference, convert what compute_bn_statistics.py writes (bn_mode: INFERENCE)"
    if la.param.bn_param.bn_mode == caffe_pb2.BNParameter.LEARN else None,
}


def build(layers: list[CaffeLayer], inputs: dict, table: dict, path, notes: list[str],
          softmax_loss_as_softmax: bool = False, name: str = "net"):
    """Returns (model, output blob names)."""
    refs: dict[str, tuple[str, tuple]] = {}
    for blob, shape in inputs.items():
        refs[blob] = (blob, tuple([1, *shape[1:]]))
    graph = nn.Graph(inputs=list(inputs), outputs=list(inputs)[:1], name=name)
    # Caffe's net outputs: blobs written and not read afterwards, in the order last written.
    available: dict[str, None] = {}
    for layer in layers:
        if layer.type in INPUT_TYPES:
            continue
        fn = table[layer.type]
        if dropped(layer, table):
            if layer.type == "SoftmaxWithLoss" and softmax_loss_as_softmax:
                layer = CaffeLayer(layer.name, "Softmax", layer.bottoms[:1], layer.tops[:1], caffe_pb2.LayerParameter())
                fn = table["Softmax"]
            else:
                why = "feeds data" if layer.type == "Python" else "used in training only"
                notes.append(f"dropped {layer.name} ({layer.type}): {why}")
                continue
        missing = [b for b in layer.bottoms if b not in refs]
        if missing:
            raise CaffeError(f"{path}: layer {layer.name!r} ({layer.type}): bottom {missing[0]!r} names no earlier "
                             f"top; known blobs: {', '.join(refs)}")
        in_refs = [refs[b][0] for b in layer.bottoms]
        shapes = [refs[b][1] for b in layer.bottoms]
        for b in layer.bottoms:
            available.pop(b, None)
        if fn is SPLIT:
            for top in layer.tops:
                refs[top] = refs[layer.bottoms[0]]
                available[top] = None
            continue
        made = fn(layer, shapes)
        differs = _DIFFERENCES.get(layer.type, lambda la: None)(layer)
        if differs:
            notes.append(f"{layer.name} ({layer.type}): {differs}")
        modules = made if isinstance(made, list) else [made]
        prev, xs = in_refs, [_zeros(s) for s in shapes]
        for m in modules:
            multi = getattr(m, "multi_input", False)
            if not multi and len(prev) != 1:
                raise CaffeError(f"{path}: layer {layer.name!r} ({layer.type}) takes one bottom, got {len(prev)}")
            graph.add(m, prev if multi else prev[:1])
            out_shape = _run(m, xs, layer, path)
            xs = [_zeros(s) for s in out_shape] if isinstance(out_shape, list) else [_zeros(out_shape)]
            prev = [m.name]
        last = modules[-1]
        if isinstance(out_shape, list):
            if len(layer.tops) != len(out_shape):
                raise CaffeError(f"{path}: layer {layer.name!r} ({layer.type}) has {len(layer.tops)} tops but "
                                 f"produces {len(out_shape)} outputs")
            for i, top in enumerate(layer.tops):
                refs[top] = (f"{last.name}:{i}", out_shape[i])
        else:
            if len(layer.tops) != 1:
                raise CaffeError(f"{path}: layer {layer.name!r} ({layer.type}) has {len(layer.tops)} tops; "
                                 f"this type produces one")
            refs[layer.tops[0]] = (last.name, out_shape)
        for top in layer.tops:
            available.pop(top, None)
            available[top] = None
    outputs = list(available)
    if not outputs:
        raise CaffeError(f"{path}: the net has no output (every top is consumed by a later layer)")
    graph.output_names = [refs[t][0] for t in outputs]
    graph._order = None
    return _simplify(graph), outputs


def _simplify(graph: nn.Graph):
    """A Sequential when every node reads the previous one (a plain chain), else the Graph."""
    order = graph.order()
    if len(graph.input_names) != 1 or len(graph.output_names) != 1 or graph.output_names[0] != order[-1].name:
        return graph
    prev = graph.input_names[0]
    for m in order:
        if graph.node_inputs[m.name] != [prev] or getattr(m, "multi_input", False) or getattr(m, "num_outputs", 1) > 1:
            return graph
        prev = m.name
    if len(order) != len(graph.modules_list):
        return graph
    return nn.Sequential(*order, name=graph.name)
