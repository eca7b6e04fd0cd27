"""TensorFlow's rules on top of the shared assembly (converters/graph.py): which nodes are
converted, the graph's layout, constant folding and pattern fusion before assembly, and the
translation of each node with its constants and the conversion's context at hand."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..graph import CONSTANT, Terms, assemble, check_supported
from . import layout as L
from .common import Unsupported
from .errors import TensorFlowError
from .fold import FOLD, Constants, fold, fold_deferred
from .parse import Selection, TFGraph, TFNode, tf_name
from .patterns import PATTERN_ONLY, fuse
from .translators import TABLE

TERMS = Terms("node", "input", "output", TensorFlowError)
# Ops with a data_format attr: their agreement gives the graph's layout.
FORMATTED = {"Conv2D", "DepthwiseConv2dNative", "MaxPool", "AvgPool", "BiasAdd", "FusedBatchNorm",
             "FusedBatchNormV2", "FusedBatchNormV3"}


@dataclass
class Context:
    """What a translator needs beyond its node: the graph's layout, the constants, which tensors
    are kindling-flattened NHWC maps (shape before the flatten), and the module names taken."""
    path: Path
    layout: str
    consts: Constants
    flattened: dict[str, tuple] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)

    def unique(self, name: str) -> str:
        candidate, i = name, 1
        while candidate in self.used:
            i += 1
            candidate = f"{name}_{i}"
        self.used.add(candidate)
        return candidate


def graph_layout(graph: TFGraph, nodes: list[TFNode]) -> str:
    formats = {n.attrs.get("data_format", "NHWC") for n in nodes if n.type in FORMATTED}
    if len(formats) > 1:
        raise TensorFlowError(f"{graph.path}: the graph mixes NHWC and NCHW ops; kindling converts graphs in one "
                              f"layout")
    return formats.pop() if formats else "NHWC"


def check_ops(graph: TFGraph, nodes: list[TFNode], supported) -> None:
    known = sorted({*(k for k in TABLE if not k.startswith("_")), *PATTERN_ONLY, "Placeholder", "Const", "Identity",
                    "IdentityN", "NoOp", "Shape"})
    check_supported(nodes, supported, graph.path, what="ops", known=known, error=TensorFlowError,
                    hint="SpaceToBatchND and BatchToSpaceND are converted around a convolution (a dilated one).")


def input_shapes(graph: TFGraph, sel: Selection, layout: str, given: dict | None) -> dict[str, list[int]]:
    """Each input's kindling (NCHW) shape: given (--input, kindling's order), else declared."""
    given = dict(given or {})
    unknown = [n for n in given if n not in sel.inputs]
    if unknown:
        raise TensorFlowError(f"{graph.path}: --input names {unknown[0]!r}; the inputs are {list(sel.inputs)}")
    shapes = {}
    for name, declared in sel.inputs.items():
        if name in given:
            shapes[name] = [int(d) for d in given[name]]
            continue
        if declared is None or any(d < 0 for d in declared[1:]) or not declared:
            example = ",".join(["1", *(str(d) if d > 0 else "224" for d in L.kindling_order(layout, declared)[1:])]) \
                if declared and len(declared) == 4 else "1,3,224,224"
            raise TensorFlowError(f"{graph.path}: input {name!r} has shape {declared} (unknown sizes): give it in "
                                  f"kindling's NCHW order, e.g. --input {name}={example}")
        shapes[name] = L.kindling_order(layout, [1, *declared[1:]])
    return shapes


def build(graph: TFGraph, sel: Selection, given_shapes: dict | None, name: str = "net"):
    """Returns a ``Built``: the model, its output tensors, ``sources`` (module name -> the
    TensorFlow tensor it computes), the graph's layout and the input shapes."""
    check_ops(graph, sel.nodes, lambda n: n.type in TABLE or n.type in FOLD or n.type in PATTERN_ONLY
              or n.type == "Const")
    layout = graph_layout(graph, sel.nodes)
    consts = Constants()
    nodes, deferred = fold(sel.nodes, consts, graph.error)
    nodes = fuse(nodes, consts, set(sel.outputs))
    check_ops(graph, nodes, lambda n: n.type in TABLE or n.name in deferred)
    shapes = input_shapes(graph, sel, layout, given_shapes)
    ctx = Context(graph.path, layout, consts, used=set(shapes))

    def translate(node: TFNode, in_shapes):
        node.ctx = ctx
        if node.name in deferred:
            fold_deferred(node, consts, L.tf_shape(layout, in_shapes[0]) if in_shapes else None)
            return CONSTANT
        node.weights = [consts.value(i) if i in consts else None for i in node.inputs]
        try:
            made = TABLE[node.type](node, in_shapes)
        except TensorFlowError:
            raise
        except Unsupported as e:
            raise graph.error(node, f"not converted: {e}") from e
        except IndexError as e:  # a damaged file: fewer inputs or list values than the op takes
            raise graph.error(node, f"cannot convert: an input or attribute value it needs is missing (it has "
                                    f"{len(node.inputs)} input(s); {e})") from e
        except (ValueError, KeyError) as e:
            raise graph.error(node, f"cannot convert: {e}") from e
        return made

    asm = assemble(nodes, shapes, translate, graph.path, name=name, constants=set(consts), terms=TERMS,
                   outputs=sel.outputs)
    # What each module computes, by TensorFlow tensor name ("node:0"), for --verify. An output is
    # named as the user knows it (Keras 3's "Identity:0", not the Softmax behind it); a flatten
    # into a dense layer computes no TensorFlow tensor (kindling flattens in NCHW order).
    named = {t: n for t, n in zip(sel.outputs, sel.output_names)}
    sources = {ref: tf_name(named.get(node.outputs[i], node.outputs[i])) for ref, (node, i) in asm.producers.items()
               if node.outputs[i] not in ctx.flattened}
    return Built(asm.model, asm.outputs, sources, layout, shapes)


@dataclass
class Built:
    model: object
    outputs: list[str]
    sources: dict[str, str]
    layout: str
    input_shapes: dict[str, list[int]]
    output_names: list[str] = field(default_factory=list)  # as the user named them (before aliases)
    path: Path | None = None
    sha256: str = ""
