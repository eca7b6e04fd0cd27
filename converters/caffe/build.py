"""Caffe's rules on top of the shared assembly (converters/graph.py): which layers define inputs,
which are dropped (data, loss, accuracy), how a Split aliases its bottom, and the fields whose
Caffe semantics the converted model does not follow (noted, never silent).
"""
from __future__ import annotations

from dataclasses import replace

from kindling.protos import caffe_pb2

from ..graph import ALIAS, Assembly, Terms, assemble
from ..graph import check_supported as check_all_supported
from .errors import CaffeError
from .parse import CaffeLayer
from .translators import DROP, INPUT_TYPES, SPLIT, TABLE

TERMS = Terms("layer", "bottom", "top", CaffeError)


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
        return f"Python {p.module}.{p.layer}"
    return layer.type


def check_supported(layers: list[CaffeLayer], table: dict, path) -> None:
    check_all_supported(
        layers, lambda la: (la.type in table or la.type in INPUT_TYPES) and not _python_computes(la, table), path,
        what="layers", describe=_describe, known=[k for k, v in table.items() if v is not None], error=CaffeError,
        hint="Pass a translator for a custom type (translators={...}, see kindling.converters.caffe).")


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


def _kept(layers: list[CaffeLayer], table: dict, notes: list[str], softmax_loss_as_softmax: bool):
    """The layers that become modules: inputs and dropped layers left out (with a note), a
    train_val net's SoftmaxWithLoss made a Softmax when asked."""
    for layer in layers:
        if layer.type in INPUT_TYPES:
            continue
        if not dropped(layer, table):
            yield layer
        elif layer.type == "SoftmaxWithLoss" and softmax_loss_as_softmax:
            yield CaffeLayer(layer.name, "Softmax", layer.bottoms[:1], layer.tops[:1], caffe_pb2.LayerParameter())
        else:
            notes.append(f"dropped {layer.name} ({layer.type}): "
                         f"{'feeds data' if layer.type == 'Python' else 'used in training only'}")


def _unpooling_sizes(layers: list[CaffeLayer]) -> list[CaffeLayer]:
    """SegNet's Upsample reads a Pooling's mask, whose indices count places in that pooling's
    input: that input becomes the Upsample's third bottom, so the unpooling can check that it makes
    an output of the same size (else the values land in the wrong places, or Caffe stops)."""
    pooled_from: dict[str, str] = {}
    out = []
    for layer in layers:
        if layer.type == "Upsample" and len(layer.bottoms) > 2:
            raise CaffeError(f"layer {layer.name!r} (Upsample): takes one bottom (nearest) or two (values and a max "
                             f"pooling mask), got {len(layer.bottoms)}")
        if layer.type == "Upsample" and len(layer.bottoms) == 2 and layer.bottoms[1] in pooled_from:
            layer = replace(layer, inputs=[*layer.bottoms, pooled_from[layer.bottoms[1]]])
        if layer.type == "Pooling" and len(layer.tops) == 2 and layer.bottoms:  # none: refused by translate
            pooled_from[layer.tops[1]] = layer.bottoms[0]
        out.append(layer)
    return out


def build(layers: list[CaffeLayer], inputs: dict, table: dict, path, notes: list[str],
          softmax_loss_as_softmax: bool = False, name: str = "net", outputs: list[str] | None = None) -> Assembly:
    def translate(layer: CaffeLayer, shapes):
        fn = table[layer.type]
        if not layer.bottoms:  # a lost `bottom:` (a typo, a flipped bit) would leave a translator no input
            raise CaffeError(f"layer {layer.name!r} ({layer.type}) has no bottom: every layer it keeps reads a blob")
        if fn is SPLIT:
            return ALIAS
        differs = _DIFFERENCES.get(layer.type, lambda la: None)(layer)
        if differs:
            notes.append(f"{layer.name} ({layer.type}): {differs}")
        return fn(layer, shapes)

    return assemble(_unpooling_sizes(list(_kept(layers, table, notes, softmax_loss_as_softmax))), inputs, translate,
                    path, name=name, terms=TERMS, outputs=outputs)
