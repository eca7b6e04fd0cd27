"""A frozen GraphDef as ``graph.Node`` records, cut to the part that computes the outputs from the
inputs, in an order where every node comes after its inputs.

Tensor names follow TensorFlow's: "node" is output 0 of a node (TensorFlow writes "node:0"
too), "node:N" output N, and "^node" a control input, which inference does not need (Keras 3
hangs its output Identity off a NoOp that way). Identity-like ops are resolved here, so no later
stage sees them: a weight read through Identity (a frozen ReadVariableOp) is the constant itself,
and IdentityN (Keras's swish and custom gradients) forwards each input to its output.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from kindling.protos import tensorflow_pb2 as tfpb

from ..graph import Node
from . import wire
from .errors import TensorFlowError
from .tensors import dtype_name, shape_of, to_numpy

IDENTITY_OPS = {"Identity", "StopGradient", "Snapshot", "PreventGradient", "CheckNumerics", "EnsureShape",
                "PlaceholderWithDefault"}
INPUT_OPS = {"Placeholder", "PlaceholderV2"}
# Nodes that are no model output even when nothing reads them.
NOT_OUTPUTS = {"NoOp", "Const", "Assert", "SaveV2", "RestoreV2", "VarHandleOp", "VariableV2", *INPUT_OPS}


def split_ref(ref: str) -> tuple[str, int]:
    node, sep, index = ref.rpartition(":")
    if sep and index.isdigit():
        return node, int(index)
    return ref, 0


def canonical(ref: str) -> str:
    """'x:0' -> 'x'; 'x:1' stays."""
    node, index = split_ref(ref.lstrip("^"))
    return node if index == 0 else f"{node}:{index}"


def tf_name(ref: str) -> str:
    """The name TensorFlow gives a tensor: 'x' -> 'x:0'."""
    node, index = split_ref(ref)
    return f"{node}:{index}"


@dataclass
class TFNode(Node):
    """A node with the conversion it belongs to (layout, constants), for its translator."""
    ctx: object = None


@dataclass
class TFGraph:
    path: Path
    nodes: list[Node]                      # file order
    producer: int = 0
    by_name: dict[str, Node] = field(default_factory=dict)

    def error(self, node: Node | str, problem: str) -> TensorFlowError:
        n = self.by_name.get(node, None) if isinstance(node, str) else node
        what = f"node {n.name!r} ({n.type})" if n is not None else f"node {node!r}"
        return TensorFlowError(f"{self.path}: {what}: {problem}")


def _list(lv: tfpb.AttrValue.ListValue, where: str, stored):
    for kind in ("s", "i", "f", "b", "type", "shape", "tensor", "func"):
        values = getattr(lv, kind)
        if len(values):
            if kind == "s":
                return [v.decode("utf-8", "replace") for v in values]
            if kind == "shape":
                return [shape_of(v) for v in values]
            if kind == "tensor":
                return [to_numpy(v, where) for v in values]
            if kind == "func":
                return [v.name for v in values]
            return list(values)
    return []


def decode_attr(a: tfpb.AttrValue, where: str, stored=None):
    kind = a.WhichOneof("value")
    if kind == "s":
        return a.s.decode("utf-8", "replace")
    if kind == "shape":
        return shape_of(a.shape)
    if kind == "tensor":
        return to_numpy(a.tensor, where, stored)
    if kind == "list":
        return _list(a.list, where, stored)
    if kind == "func":
        return a.func.name
    return None if kind is None else getattr(a, kind)


def _decode(nd: tfpb.NodeDef, index: int, raw: wire.RawGraph, path: Path) -> Node:
    attrs = {}
    for key, a in nd.attr.items():
        if key.startswith("_"):
            continue  # TensorFlow's own bookkeeping (_class, _output_shapes, ...)
        stored = raw.stored.get((index, key))
        where = f"{path}: node {nd.name!r} ({nd.op}) attr {key!r}"
        try:
            attrs[key] = decode_attr(a, where, (path, *stored) if stored else None)
        except ValueError as e:  # raised if the node is converted (a pruned string table is no matter)
            attrs[key] = TensorFlowError(str(e))
    inputs = [canonical(i) for i in nd.input if not i.startswith("^")]
    return TFNode(nd.name, nd.op, inputs, [nd.name], attrs)


def read(path) -> TFGraph:
    """Every node of the frozen GraphDef at ``path``, decoded; duplicate names are an error."""
    path = Path(path)
    try:
        raw = wire.read_graph(path)
    except OSError as e:
        raise TensorFlowError(f"{path}: cannot read: {e.strerror or e}") from e
    except wire.WireError as e:
        raise TensorFlowError(f"{path}: truncated or corrupt GraphDef: {e}") from e
    if not raw.nodes:
        raise TensorFlowError(f"{path}: no nodes: not a frozen TensorFlow GraphDef (a SavedModel's saved_model.pb "
                              f"needs its folder: give the folder, with tensorflow installed)")
    graph = TFGraph(path, [_decode(nd, i, raw, path) for i, nd in enumerate(raw.nodes)], raw.producer)
    for n in graph.nodes:
        if n.name in graph.by_name:
            raise graph.error(n, "a second node has this name")
        if not n.name:
            raise TensorFlowError(f"{path}: a node without a name ({n.type})")
        graph.by_name[n.name] = n
    return graph


# ---- the part to convert ------------------------------------------------------------------------
@dataclass
class Selection:
    nodes: list[Node]                 # inputs excluded, aliases resolved, every node after its inputs
    inputs: dict[str, list[int] | None]   # input tensor -> its declared (TensorFlow-order) shape
    outputs: list[str]                # resolved tensor names, in the requested order
    output_names: list[str]           # the names the user knows (before resolving aliases)


def _check_ref(graph: TFGraph, ref: str, what: str) -> str:
    ref = canonical(ref)
    node, index = split_ref(ref)
    if node not in graph.by_name:
        close = [n for n in graph.by_name if node.lower() in n.lower()][:5]
        raise TensorFlowError(f"{graph.path}: {what} {ref!r} names no node"
                              + (f"; similar: {', '.join(close)}" if close else ""))
    return ref


def _default_outputs(graph: TFGraph, inputs: set[str]) -> list[str]:
    """The sinks that depend on an input: what no node reads (Keras 3's output Identity)."""
    read = {split_ref(i)[0] for n in graph.nodes for i in n.inputs}
    consumers = defaultdict(list)
    for n in graph.nodes:
        for i in n.inputs:
            consumers[split_ref(i)[0]].append(n.name)
    reached, todo = set(), list(inputs)
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(consumers[name])
    return [n.name for n in graph.nodes
            if n.name not in read and n.type not in NOT_OUTPUTS and n.name in reached and n.name not in inputs]


def _aliases(graph: TFGraph, inputs: set[str]) -> dict[str, str]:
    alias = {}
    for n in graph.nodes:
        if n.name in inputs:
            continue
        if n.type in IDENTITY_OPS and n.inputs:
            alias[n.name] = n.inputs[0]
        elif n.type == "IdentityN":
            for i, src in enumerate(n.inputs):
                alias[n.name if i == 0 else f"{n.name}:{i}"] = src
    return alias


def _resolve(ref: str, alias: dict[str, str]) -> str:
    seen = []
    while ref in alias:
        seen.append(ref)
        ref = alias[ref]
        if ref in seen:
            raise ValueError(f"Identity nodes form a cycle: {' -> '.join([*seen, ref])}")
    return ref


def select(graph: TFGraph, inputs: list[str] | None = None, outputs: list[str] | None = None) -> Selection:
    """The nodes computing ``outputs`` (default: the graph's sinks) from ``inputs`` (default: its
    placeholders), inputs themselves left out; a missing input or a cycle is an error naming the
    node."""
    if inputs:
        input_refs = [_check_ref(graph, r, "--inputs") for r in inputs]
        bad = [r for r in input_refs if split_ref(r)[1]]
        if bad:
            raise TensorFlowError(f"{graph.path}: --inputs {bad[0]!r}: only a node's first output can be an input")
    else:
        input_refs = [n.name for n in graph.nodes if n.type in INPUT_OPS]
        if not input_refs:
            raise TensorFlowError(f"{graph.path}: the graph has no Placeholder: name its input with --inputs NODE")
    input_set = set(input_refs)
    output_names = [_check_ref(graph, r, "--outputs") for r in outputs] if outputs else \
        _default_outputs(graph, input_set)
    if not output_names:
        raise TensorFlowError(f"{graph.path}: no node computes anything from the inputs {', '.join(input_refs)}: "
                              f"name the outputs with --outputs NODE")
    alias = _aliases(graph, input_set)
    try:
        resolved = [_resolve(o, alias) for o in output_names]
    except ValueError as e:
        raise TensorFlowError(f"{graph.path}: {e}") from e
    for name, ref in zip(output_names, resolved):
        if ref in input_set:
            raise TensorFlowError(f"{graph.path}: output {name!r} is the input {ref!r} itself")
    kept = _ancestors(graph, resolved, input_set, alias)
    order = _topological(graph, kept, input_set)
    nodes = []
    for n in order:
        nodes.append(TFNode(n.name, n.type, [_resolve(i, alias) for i in n.inputs], [n.name], n.attrs))
    shapes = {r: _declared_shape(graph, graph.by_name[r]) for r in input_refs}
    return Selection(nodes, shapes, resolved, output_names)


def _declared_shape(graph: TFGraph, node: Node) -> list[int] | None:
    shape = node.attrs.get("shape") if node.type in INPUT_OPS else None
    if node.type in INPUT_OPS and node.attrs.get("dtype") not in (tfpb.DT_FLOAT, None):
        raise TensorFlowError(f"{graph.path}: input {node.name!r} is {dtype_name(node.attrs['dtype'])}; kindling "
                              f"models take float32 inputs (name a float tensor after the cast with --inputs)")
    if shape is not None and not (isinstance(shape, list) and all(isinstance(d, int) for d in shape)):
        raise graph.error(node, f"its 'shape' attribute is not a shape ({str(shape)[:60]!r}; a damaged file?)")
    return shape


def _ancestors(graph: TFGraph, outputs: list[str], inputs: set[str], alias: dict) -> set[str]:
    kept, todo = set(), [split_ref(o)[0] for o in outputs]
    while todo:
        name = todo.pop()
        if name in kept or name in inputs:
            continue
        node = graph.by_name[name]
        kept.add(name)
        for ref in node.inputs:
            src = split_ref(_resolve(ref, alias))[0]
            if src not in graph.by_name:
                raise graph.error(node, f"input {ref!r} names no node in the graph")
            todo.append(src)
    return kept


def _topological(graph: TFGraph, kept: set[str], inputs: set[str]) -> list[Node]:
    """Kept nodes, each after its inputs (file order where it already is); a cycle is an error."""
    alias = _aliases(graph, inputs)
    state: dict[str, int] = {}  # 1: on the current path, 2: placed
    order: list[Node] = []
    for start in (n.name for n in graph.nodes if n.name in kept):
        if state.get(start) == 2:
            continue
        stack = [(start, iter(graph.by_name[start].inputs))]
        state[start] = 1
        while stack:
            name, pending = stack[-1]
            for ref in pending:
                src = split_ref(_resolve(ref, alias))[0]
                if src not in kept or state.get(src) == 2:
                    continue
                if state.get(src) == 1:
                    path = [s for s, _ in stack]
                    cycle = path[path.index(src):] + [src]
                    raise graph.error(src, f"the graph has a cycle: {' -> '.join(cycle)} (a loop is not a feed-forward "
                                           f"model; frozen graphs of classifiers have none)")
                state[src] = 1
                stack.append((src, iter(graph.by_name[src].inputs)))
                break
            else:
                state[name] = 2
                order.append(graph.by_name[name])
                stack.pop()
    return order
