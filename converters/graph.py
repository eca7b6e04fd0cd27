"""What every converter shares: a framework-neutral node record, the check that lists every
unsupported node at once, and the assembly of translated nodes into a kindling Graph (a Sequential
when the net is a plain chain).

A converter parses its format into ``Node`` records (Caffe layers, TensorFlow NodeDefs, ONNX
nodes), keeps a TABLE of translators ``fn(node, shapes) -> Module | [Module, ...] | ALIAS``, and
calls ``assemble``. Wiring is by tensor name, as in Caffe's bottoms and tops: each output name
points at the module output that last wrote it, so in-place layers (output == input) simply move
the pointer and the graph stays acyclic. Each new module is run through the shape probe once
(runtime/shapes.py), which also checks that its weights fit its inputs.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

from kindling.runtime import memory, nn
from kindling.runtime.errors import KindlingError, TooLarge
from kindling.runtime.shapes import ShapeError, probe

ALIAS = "alias"  # a translator's answer: the node's outputs are its first input (Split, Identity)
# A translator's answer: the node's outputs are constants, which the converter has just computed
# (TensorFlow's Shape of an activation, known once the shape probe has run): later nodes read
# them as constants, and they are no net output.
CONSTANT = "constant"


class ConversionError(KindlingError):
    """A model file that cannot be converted; the message names the file and, where it applies,
    the node (layer, op)."""


@dataclass
class Node:
    """One node of a foreign graph, in the terms every translator receives."""
    name: str
    type: str
    inputs: list[str]
    outputs: list[str]
    attrs: Any = None                         # the format's own parameters (a protobuf message, a dict)
    weights: list = field(default_factory=list)  # numpy arrays that belong to the node


Translator = Callable[[Node, list], Any]


@dataclass(frozen=True)
class Terms:
    """The words a format's users know, for error messages (Caffe has layers with bottoms and
    tops), and the error type its converter raises."""
    node: str = "node"
    input: str = "input"
    output: str = "output"
    error: type = ConversionError


def check_supported(nodes: list[Node], supported: Callable[[Node], bool], path, *, what: str = "nodes",
                    describe: Callable[[Node], str] = lambda n: n.type, known=(), hint: str = "",
                    error: type[ConversionError] = ConversionError) -> None:
    """Raises one ConversionError listing every unsupported node, grouped by type with a count,
    before anything is built or any weight is read."""
    groups: dict[str, list[str]] = defaultdict(list)
    for n in nodes:
        if not supported(n):
            groups[describe(n)].append(n.name)
    if not groups:
        return
    listed = "; ".join(f"{kind} x{len(names)} ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})"
                       for kind, names in groups.items())
    raise error(f"{path}: unsupported {what}: {listed}."
                          + (f" Supported types: {', '.join(sorted(known))}." if known else "")
                          + (f" {hint}" if hint else ""))


def _wire_error(path, node: Node, terms: Terms, problem: str) -> ConversionError:
    return terms.error(f"{path}: {terms.node} {node.name!r} ({node.type}){problem}")


def assemble(nodes: list[Node], inputs: dict[str, list[int]], translate: Translator, path, *,
             name: str = "net", constants=frozenset(), terms: Terms = Terms(),
             outputs: list[str] | None = None, batch: int | None = 1) -> "Assembly":
    """Returns the model, its output tensor names, and which node each module output computes.
    ``inputs`` maps each graph input to its shape (the batch axis is probed at ``batch``; None
    probes the shapes exactly as given, for a format's conformance suite); ``constants`` are tensor
    names a translator folds into its module (weights, shapes): they are not wired. The outputs are
    ``outputs`` when given, else the tensors written and not read afterwards, in the order last
    written (Caffe's rule for a net's outputs)."""
    constants = set(constants)
    refs: dict[str, tuple[str, tuple]] = {t: (t, _input_shape(t, shape, path, terms, batch))
                                          for t, shape in inputs.items()}
    producers: dict[str, tuple[Node, int]] = {}
    graph = nn.Graph(inputs=list(inputs), outputs=list(inputs)[:1],
                     name=_free_name(name, {n.name for n in nodes} | set(inputs)))
    available: dict[str, None] = {}
    for node in nodes:
        wired = [t for t in node.inputs if t not in constants]
        missing = [t for t in wired if t not in refs]
        if missing:
            raise _wire_error(path, node, terms, f": {terms.input} {missing[0]!r} names no earlier {terms.output}; "
                                                 f"known: {', '.join(refs)}")
        for t in wired:
            available.pop(t, None)
        shapes = [refs[t][1] for t in wired]
        made = _translated(translate, node, shapes, path, terms)
        if made is CONSTANT:
            constants.update(node.outputs)
            continue
        if made is ALIAS:
            for top in node.outputs:
                refs[top] = refs[wired[0]]
                available[top] = None
            continue
        prev = [refs[t][0] for t in wired]
        out_shape: tuple | list = shapes[0] if shapes else ()
        for m in made if isinstance(made, list) else [made]:
            if not m.multi_input and len(prev) != 1:
                raise _wire_error(path, node, terms, f" takes one {terms.input}, got {len(prev)}")
            try:
                graph.add(m, prev if m.multi_input else prev[:1])
            except ValueError as e:  # a module name used twice
                raise _wire_error(path, node, terms, f": {e}") from e
            try:
                out_shape = probe(m, shapes)
            except ShapeError as e:
                raise _wire_error(path, node, terms, f" does not fit its input shapes {e.shapes}: {e.detail}") from e
            shapes = out_shape if isinstance(out_shape, list) else [out_shape]
            prev = [m.name]
        produced = out_shape if isinstance(out_shape, list) else [out_shape]
        if len(node.outputs) != len(produced):
            raise _wire_error(path, node, terms, f" has {len(node.outputs)} {terms.output}s but produces "
                                                 f"{len(produced)} outputs")
        for i, top in enumerate(node.outputs):
            refs[top] = (prev[0] if len(produced) == 1 else f"{prev[0]}:{i}", produced[i])
            producers[refs[top][0]] = (node, i)
            available.pop(top, None)
            available[top] = None
    if outputs is not None:
        unknown = [t for t in outputs if t not in refs]
        if unknown:
            raise terms.error(f"{path}: output {unknown[0]!r} is no {terms.output} of the net")
    outputs = list(available) if outputs is None else list(outputs)
    if not outputs:
        raise terms.error(f"{path}: the net has no output (every {terms.output} is read by a later "
                          f"{terms.node})")
    graph.set_outputs([refs[t][0] for t in outputs])
    return Assembly(simplify(graph), outputs, producers)


def _free_name(name: str, taken: set[str]) -> str:
    """The container's name: the net's, or name_net, name_net2, ... when a node has it (module
    names are unique in a model; Caffe lets a net and a layer share one)."""
    candidate, i = name, 1
    while candidate in taken:
        candidate, i = f"{name}_net{i if i > 1 else ''}", i + 1
    return candidate


def _input_shape(name: str, shape, path, terms: Terms, batch: int | None) -> tuple:
    """The input's shape at ``batch`` (None: as given), checked: positive dimensions, a size this
    machine can hold."""
    dims = [int(d) for d in shape]
    if batch is None:  # exact shapes (a conformance case): scalars and empty tensors are real inputs
        if any(d < 0 for d in dims):
            raise terms.error(f"{path}: input {name!r} has shape {dims}: a dimension is negative")
    elif len(dims) < 1 or any(d < 1 for d in dims[1:]):
        raise terms.error(f"{path}: input {name!r} has shape {dims}: every dimension after the batch "
                          f"must be positive")
    one = tuple(dims) if batch is None else (batch, *dims[1:])
    try:
        memory.check(4 * math.prod(one), f"one sample of input {name!r} {list(one)}")
    except TooLarge as e:
        raise terms.error(f"{path}: {e}") from e
    return one


def _translated(translate: Translator, node: Node, shapes, path, terms: Terms):
    """The translator's modules; what it or a module's constructor refuses becomes one error
    naming the file and the node (a translator's own error names the node already)."""
    try:
        return translate(node, shapes)
    except ConversionError as e:
        if str(e).startswith(f"{path}:"):
            raise
        raise terms.error(f"{path}: {e}") from e
    except (ValueError, ArithmeticError, TypeError) as e:  # a setting refused, out of range or of the wrong kind
        raise _wire_error(path, node, terms, f": {e}") from e


@dataclass
class Assembly:
    model: nn.Module
    outputs: list[str]              # the net's output tensor names
    producers: dict[str, tuple[Node, int]]  # module output ("name", "name:i") -> (node, which output)


def simplify(graph: nn.Graph) -> nn.Module:
    """A Sequential when every node reads the previous one (a plain chain), else the Graph."""
    order = graph.order()
    if (not order or len(graph.input_names) != 1 or len(graph.output_names) != 1
            or graph.output_names[0] != order[-1].name):
        return graph  # (no module at all: an ONNX graph of Identity nodes)
    prev = graph.input_names[0]
    for m in order:
        if graph.node_inputs[m.name] != [prev] or m.multi_input or m.num_outputs > 1:
            return graph
        prev = m.name
    if len(order) != len(graph.modules_list):
        return graph
    return nn.Sequential(*order, name=graph.name)

