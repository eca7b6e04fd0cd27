"""ONNX's rules on top of the shared assembly (converters/graph.py): the support check (each
unsupported type with its opset, before any weight is read), the graph's inputs and their shapes,
constant folding as the graph is assembled, module names from node names, and the provenance
that verify and the exporter read back (model.sources, metadata)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx

from kindling.runtime import nn

from ..graph import ALIAS, CONSTANT, Terms, assemble, check_supported
from .errors import OnnxError
from .fold import FOLD, fold, shape_value
from .read import GraphInput, OnnxNode, graph_inputs, initializers, nodes_of, opset_of, ordered
from .shape_ops import SHAPES
from .translators import COMPUTE

TERMS = Terms("node", "input", "output", OnnxError)
TABLE = {**COMPUTE, **SHAPES}
FOLD_ONLY = {"Constant", "ConstantOfShape", "Shape"}  # ops that never become modules
MIN_OPSET = 7
# Ops that take computed tensors at every input; the others at input 0 only, and the rest of
# their inputs (weights, shapes, axes, pads, scales, bounds) must be constants.
ALL_COMPUTED = {"Add", "Sub", "Mul", "Div", "Pow", "Sum", "Max", "Min", "Mean", "Concat", "MatMul", "PRelu"}
METADATA_LABELS, METADATA_PREPROCESSING = "kindling.labels", "kindling.preprocessing"
_OUTPUT = "kindling.output"  # a node type of our own: a declared output that folded to a constant


def _rank(node: OnnxNode, dims: dict) -> int | None:
    """Spatial rank of a convolution or pooling node, from its attributes or its weight's dims."""
    if "kernel_shape" in node.attrs:
        return len(node.attr("kernel_shape"))
    w = dims.get(node.inputs[1]) if len(node.inputs) > 1 else None
    return None if w is None else len(w) - 2


def _spatial(node, dims):
    rank = _rank(node, dims)
    return None if rank in (1, 2, None) else f"{rank}-D"


def _used_extra_outputs(n: OnnxNode, used: set, keep: int) -> str | None:
    extra = [o for o in n.outputs[keep:] if o in used]
    return f"output {extra[0]!r} is used" if extra else None


# Variants of supported ops that kindling does not run: a reason, or None when the node is fine.
VARIANTS = {
    "Conv": lambda n, dims, used: _spatial(n, dims),
    "ConvTranspose": lambda n, dims, used: _spatial(n, dims),
    "MaxPool": lambda n, dims, used: (_spatial(n, dims) or _used_extra_outputs(n, used, 1)
                                      or ("dilations" if any(d != 1 for d in n.attr("dilations", [1])) else None)
                                      or ("storage_order" if n.attr("storage_order", 0) else None)),
    "AveragePool": lambda n, dims, used: (_spatial(n, dims)
                                          or ("dilations" if any(d != 1 for d in n.attr("dilations", [1])) else None)),
    "BatchNormalization": lambda n, dims, used: (
        ("training_mode" if n.attr("training_mode", 0) else None) or _used_extra_outputs(n, used, 1)
        or ("spatial=0" if n.opset < 9 and n.attr("spatial", 1) == 0 else None)),
    "Dropout": lambda n, dims, used: (_used_extra_outputs(n, used, 1)
                                      or ("training_mode input: random" if n.has(2) else None)),
    "Constant": lambda n, dims, used: "sparse_value" if "sparse_value" in n.attrs else None,
    # with allowzero a 0 in the target is a 0, not 'as the input': kindling's Reshape copies
    "Reshape": lambda n, dims, used: "allowzero=1" if n.attr("allowzero", 0) else None,
}


def known_dims(model: onnx.ModelProto) -> dict[str, list]:
    """Dims known before any data is read: the initializers' and the declared inputs'."""
    dims = {i.name: i.shape for i in graph_inputs(model)}
    dims.update({t.name: list(t.dims) for t in model.graph.initializer})
    return dims


def translator_table(user: dict | None) -> dict:
    table = dict(TABLE)
    for name, fn in (user or {}).items():
        if name in TABLE or name in FOLD:
            raise ValueError(f"a translator for the built-in ONNX op {name!r} cannot be replaced")
        table[name] = fn
    return table


def variant(node: OnnxNode, dims: dict, used: set) -> str | None:
    check = VARIANTS.get(node.type)
    return check(node, dims, used) if check else None


def _supported(n: OnnxNode, table: dict, dims: dict, used: set) -> bool:
    return (n.type in table or n.type in FOLD) and variant(n, dims, used) is None


def _describe(n: OnnxNode, table: dict, dims: dict, used: set) -> str:
    reason = variant(n, dims, used) if n.type in table or n.type in FOLD else None
    return f"{n.type} (opset {n.opset}{', ' + reason if reason else ''})"


def unsupported(nodes: list[OnnxNode], table: dict, dims: dict, used: set) -> list[str]:
    """The description of every node kindling does not convert (its type, opset and why)."""
    return [_describe(n, table, dims, used) for n in nodes if not _supported(n, table, dims, used)]


def check_nodes(nodes: list[OnnxNode], table: dict, dims: dict, used: set, path) -> None:
    check_supported(
        nodes, lambda n: _supported(n, table, dims, used), path, what="ops",
        describe=lambda n: _describe(n, table, dims, used), known=set(table) | set(FOLD), error=OnnxError,
        hint="Pass a translator for a custom op (translators={...}, see kindling.converters.onnx).")


def _input_shapes(inputs: list[GraphInput], given: dict | None, exact: bool, path) -> dict[str, list[int]]:
    given = dict(given or {})
    unknown = [n for n in given if n not in {i.name for i in inputs}]
    if unknown:
        raise OnnxError(f"{path}: --input names {unknown[0]!r}, but the graph's inputs are "
                        f"{[i.name for i in inputs]}")
    shapes = {}
    for i in inputs:
        if i.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            raise OnnxError(f"{path}: input {i.name!r} is {onnx.TensorProto.DataType.Name(i.elem_type)}; kindling "
                            f"models take float tensors (a shape or index input must be a constant)")
        shape = given.get(i.name, i.shape)
        free = [(a, d) for a, d in enumerate(shape) if not isinstance(d, int) or d < 0]
        if exact and free or any(a > 0 for a, _ in free) or not shape and not exact:
            raise OnnxError(f"{path}: input {i.name!r} has shape {shape}" + (
                f" with a free dimension {free[-1][1]!r} at axis {free[-1][0]}" if free else "")
                + f"; give its size, e.g. --input {i.name}=1,3,224,224")
        shapes[i.name] = [d if isinstance(d, int) and d >= 0 else 1 for d in shape]
    return shapes


def name_modules(nodes: list[OnnxNode], taken: set) -> None:
    """Module names from node names: stable, unique, no ':' (Graph's output separator)."""
    used = set(taken)
    for n in nodes:
        base = n.name.strip("/").replace(":", "_") or f"{n.type.lower()}_{n.index}"
        name, k = base, 2
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        n.name = name


def _digest(path: Path) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return {"path": path.name, "sha256": h.hexdigest(), "size": path.stat().st_size}


def _external_files(model: onnx.ModelProto) -> list[str]:
    return sorted({e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"})


def _own_metadata(model: onnx.ModelProto, path) -> dict:
    """Labels and preprocessing that kindling's exporter wrote into metadata_props."""
    props = {p.key: p.value for p in model.metadata_props}
    out = {}
    try:
        if METADATA_LABELS in props:
            out["labels"] = list(json.loads(props[METADATA_LABELS]))
        if METADATA_PREPROCESSING in props:
            out["preprocessing"] = dict(json.loads(props[METADATA_PREPROCESSING]))
    except (ValueError, TypeError) as e:
        raise OnnxError(f"{path}: metadata_props {METADATA_LABELS} / {METADATA_PREPROCESSING} is not valid JSON: {e}")
    return out


def _link(nodes: list[OnnxNode], declared: list[str], used: set, exact: bool, batch: int | None) -> None:
    """Each node's readers (a graph output counts as a reader from outside: None), the shape
    settings, and its optional outputs nobody reads dropped (Dropout's mask, MaxPool's indices)."""
    by_output = {t: n for n in nodes for t in n.outputs if t}
    for n in nodes:
        for t in n.inputs:
            if t in by_output and n not in by_output[t].readers:
                by_output[t].readers.append(n)
    for o in declared:
        if o in by_output:
            by_output[o].readers.append(None)
    for n in nodes:
        n.exact, n.batch = exact, batch
        n.outputs = [o for o in n.outputs if o]
        while len(n.outputs) > 1 and n.outputs[-1] not in used:
            n.outputs.pop()


def _translator(table: dict, consts: dict, taken: set, path):
    """translate(node, shapes) for assemble: folds what is constant (into ``consts``), checks that
    weight and shape inputs are constants, then calls the node's translator."""
    def constant_output(node: OnnxNode):
        """A declared output that folded to a constant: a Constant module gives it."""
        name, k = node.inputs[0].replace(":", "_"), 2
        while name in taken:
            name, k = f"{node.inputs[0]}_{k}", k + 1
        taken.add(name)
        return nn.Constant(value=consts[node.inputs[0]], name=name)

    def translate(node: OnnxNode, in_shapes):
        node.weights = [consts.get(t) for t in node.inputs]
        given = [t for t in node.inputs if t]
        if node.type == _OUTPUT:
            return constant_output(node) if given[0] in consts else ALIAS
        if node.type in FOLD and all(t in consts for t in given):
            for o, v in zip(node.outputs, fold(node, [consts.get(t) for t in node.inputs])):
                consts[o] = v
            return CONSTANT
        if node.type == "Shape":
            consts[node.outputs[0]] = shape_value(node, in_shapes[0])
            return CONSTANT
        if not in_shapes:
            raise OnnxError(f"{path}: node {node.name!r} ({node.type}): every input is a constant, and kindling does "
                            f"not compute {node.type} at conversion time")
        computed = [t for t in node.inputs[1:] if t and t not in consts]
        if node.type not in ALL_COMPUTED and computed:
            raise OnnxError(f"{path}: node {node.name!r} ({node.type}): input {computed[0]!r} is computed by the "
                            f"graph, but kindling needs it as a constant (an initializer, or computed from constants "
                            f"and shapes)")
        try:
            return table[node.type](node, in_shapes)
        except OnnxError as e:
            raise OnnxError(f"{path}: {e}") from e
    return translate


def _metadata(model: onnx.ModelProto, path, shapes: dict, outputs: list[str], exact: bool, labels, preprocessing):
    meta = {"source": {"framework": "onnx", "files": []}, "input_names": list(shapes), "output_names": outputs,
            **_own_metadata(model, path)}
    if isinstance(path, Path) and path.is_file():
        meta["source"]["files"] = [_digest(f) for f in [path, *(path.parent / f for f in _external_files(model))]]
    if len(shapes) == 1:
        shape = next(iter(shapes.values()))
        meta["input_shape"] = [shape[0] if exact else -1, *shape[1:]]
    if labels:
        meta["labels"] = list(labels)
    if preprocessing:
        meta["preprocessing"] = {**meta.get("preprocessing", {}), **preprocessing}
    return meta


def convert_model(model: onnx.ModelProto, path, folder: Path | None, *, inputs=None, labels=None,
                  preprocessing=None, translators=None, exact: bool = False) -> nn.Module:
    """The kindling model computing ``model`` (see kindling.converters.onnx.convert)."""
    opset = opset_of(model, path)
    if opset < MIN_OPSET:
        raise OnnxError(f"{path}: opset {opset} is older than kindling reads (7 and later); upgrade the model with "
                        f"onnx.version_converter.convert_version(model, 13)")
    nodes = nodes_of(model, opset, path)
    table = translator_table(translators)
    declared = [o.name for o in model.graph.output]
    used = {t for n in nodes for t in n.inputs} | set(declared)
    gin = graph_inputs(model)
    name_modules(nodes, {i.name for i in gin})
    check_nodes(nodes, table, known_dims(model), used, path)
    shapes = _input_shapes(gin, inputs, exact, path)
    consts: dict = initializers(model, folder, path)  # external data is read here, after the check
    consts[""] = None  # an optional input left out
    nodes = ordered(nodes, set(consts) | set(shapes), path)
    batch = next((i.shape[0] for i in gin if i.shape and isinstance(i.shape[0], int) and i.shape[0] > 0), None)
    _link(nodes, declared, used, exact, batch)
    taken = {n.name for n in nodes} | set(shapes)
    nodes += [OnnxNode(f"{o}/output", _OUTPUT, [o], [o], {}, opset=opset) for o in declared]
    built = assemble(nodes, shapes, _translator(table, consts, taken, path), path, name=model.graph.name or "net",
                     constants=consts, terms=TERMS, batch=None if exact else 1, outputs=declared)
    kmodel = built.model
    # what each module output computes, by ONNX tensor name (onnxruntime answers by tensor name)
    kmodel.sources = {ref: node.outputs[i] for ref, (node, i) in built.producers.items()}
    kmodel.notes = []
    kmodel.metadata = _metadata(model, path, shapes, built.outputs, exact, labels, preprocessing)
    return kmodel
