"""Reading ONNX files: the ModelProto (by the onnx package), its nodes as neutral records, its
inputs and their shapes, and its initializers, external data included (confined to the model's
folder) and read only after the support check."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from ..graph import Node
from .errors import OnnxError

DEFAULT_DOMAINS = ("", "ai.onnx")
# Files users pass as an ONNX model that are something else, told apart by their first bytes.
_NOT_ONNX = [
    (lambda head: head.startswith(b"PK\x03\x04"),
     "is a zip archive (a PyTorch checkpoint?), not an ONNX model: export it with torch.onnx.export"),
    (lambda head: head.startswith(b"\x93KNDL"), "is a kindling model (.kdl), not an ONNX model"),
    (lambda head: head.startswith(b"\x89HDF"), "is an HDF5 file (a Keras model?), not an ONNX model"),
]


@dataclass
class OnnxNode(Node):
    """One ONNX node (a converters.graph.Node): ``attrs`` is a dict of its attributes, ``weights``
    the constant value of each input (None for computed ones), filled in as constants fold."""
    opset: int = 0
    index: int = 0
    exact: bool = False        # shapes are exact; else the batch axis stays free
    batch: int | None = None   # the batch size the file declares (a fixed one is freed, see shape_ops)
    readers: list = field(default_factory=list)  # the nodes that read its outputs (a graph output: none)

    def attr(self, key: str, default=None):
        return self.attrs.get(key, default)

    def has(self, i: int) -> bool:
        """Input i is given (optional inputs may be left out or named '')."""
        return i < len(self.inputs) and self.inputs[i] != ""

    def const(self, i: int, default=None):
        """The constant value of input i, or ``default`` when it is not given."""
        if not self.has(i):
            return default
        return self.weights[i] if i < len(self.weights) else None


def sniff(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(16)
    for matches, what in _NOT_ONNX:
        if matches(head):
            raise OnnxError(f"{path}: {what}")


def read_model(path) -> onnx.ModelProto:
    """The ModelProto without its external data (that is read by ``initializers`` later)."""
    path = Path(path)
    try:
        sniff(path)
        model = onnx.load_model(str(path), load_external_data=False)
    except OSError as e:
        raise OnnxError(f"{path}: cannot read: {e.strerror or e}") from e
    except (DecodeError, RuntimeWarning, ValueError) as e:
        raise OnnxError(f"{path}: truncated or not an ONNX model: {e}") from e
    if not model.HasField("graph") or not model.graph.node:
        raise OnnxError(f"{path}: not an ONNX model (no graph nodes; truncated?)")
    _check_text(model.graph, path)
    return model


def _check_text(graph, path) -> None:
    """Names must be text: protobuf hands a proto2 string field that is not UTF-8 back as bytes,
    which every later step would trip over."""
    named = [("graph name", graph.name)]
    for i, n in enumerate(graph.node):
        named += [(f"node {i}'s name", n.name), (f"node {i}'s op_type", n.op_type), (f"node {i}'s domain", n.domain)]
        named += [(f"node {i}'s input", t) for t in n.input] + [(f"node {i}'s output", t) for t in n.output]
        named += [(f"node {i}'s attribute name", a.name) for a in n.attribute]
        named += [(f"node {i}'s attribute {a.name!r}", a.s) for a in n.attribute if a.s and isinstance(a.s, bytes)
                  and not _utf8(a.s)]
    named += [("initializer name", t.name) for t in graph.initializer]
    named += [("graph input name", v.name) for v in graph.input] + [("graph output name", v.name) for v in graph.output]
    for what, value in named:
        if isinstance(value, bytes) and not _utf8(value):
            raise OnnxError(f"{path}: {what} is not UTF-8 text ({value[:40]!r})")


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def opset_of(model: onnx.ModelProto, path) -> int:
    versions = [o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS]
    if not versions:
        raise OnnxError(f"{path}: the model imports no version of the default ONNX domain")
    return int(versions[0])


def nodes_of(model: onnx.ModelProto, opset: int, path="model") -> list[OnnxNode]:
    out = []
    for i, n in enumerate(model.graph.node):
        untyped = [a.name for a in n.attribute if a.type == onnx.AttributeProto.UNDEFINED]
        if untyped:
            raise OnnxError(f"{path}: node {n.name or i!r} ({n.op_type}): attribute {untyped[0]!r} has no type (its value "
                            f"is missing or the file is damaged)")
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
        op = n.op_type if n.domain in DEFAULT_DOMAINS else f"{n.domain}.{n.op_type}"
        out.append(OnnxNode(n.name, op, list(n.input), list(n.output), attrs, opset=opset, index=i))
    return out


def ordered(nodes: list[OnnxNode], known: set[str], path) -> list[OnnxNode]:
    """The nodes in an order where each comes after the nodes it reads (ONNX requires files to be
    so ordered; a file that is not is sorted); a cycle is an error naming its nodes."""
    producer = {t: n for n in nodes for t in n.outputs if t}
    for n in nodes:
        for t in n.inputs:
            if t and t not in known and t not in producer:
                raise OnnxError(f"{path}: node {n.name!r} ({n.type}) reads {t!r}, which no initializer, graph input "
                                f"or node provides (a missing initializer?)")
    done, order, state = set(known), [], {}

    def visit(n: OnnxNode, trail: list[OnnxNode]):
        if state.get(id(n)) == "done":
            return
        if state.get(id(n)) == "visiting":
            loop = trail[trail.index(n):] + [n]
            raise OnnxError(f"{path}: the graph has a cycle: "
                            + " -> ".join(f"{m.name or m.type + '#' + str(m.index)} ({m.type})" for m in loop))
        state[id(n)] = "visiting"
        for t in n.inputs:
            if t and t not in done and t in producer:
                visit(producer[t], [*trail, n])
        state[id(n)] = "done"
        done.update(n.outputs)
        order.append(n)

    for n in nodes:
        visit(n, [])
    return order


@dataclass
class GraphInput:
    name: str
    shape: list[int | str | None]   # ints, symbolic names, or None where unknown
    elem_type: int = onnx.TensorProto.FLOAT


def graph_inputs(model: onnx.ModelProto) -> list[GraphInput]:
    """The graph's inputs that no initializer provides (older exporters list weights as inputs)."""
    init = {t.name for t in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in init:
            continue
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
        out.append(GraphInput(vi.name, dims if t.HasField("shape") else [], t.elem_type))
    return out


def _external_bytes(t: onnx.TensorProto, folder: Path, path) -> bytes:
    info = {e.key: e.value for e in t.external_data}
    location = info.get("location", "")
    target = (folder / location).resolve()
    if not location or Path(location).is_absolute() or not target.is_relative_to(folder.resolve()):
        raise OnnxError(f"{path}: initializer {t.name!r} keeps its data at {location!r}, outside the model's "
                        f"folder {folder}; kindling reads external data only from beside the model")
    offset, length = int(info.get("offset", 0)), info.get("length")
    expected = int(np.prod(t.dims)) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    try:
        with open(target, "rb") as f:
            f.seek(offset)
            data = f.read(int(length) if length is not None else expected)
    except OSError as e:
        raise OnnxError(f"{path}: initializer {t.name!r}: cannot read its external data {location!r}: "
                        f"{e.strerror or e}") from e
    if len(data) != expected:
        raise OnnxError(f"{path}: initializer {t.name!r}: external data {location!r} holds {len(data)} bytes at "
                        f"offset {offset}, the tensor needs {expected} (truncated file?)")
    return data


def tensor_value(t: onnx.TensorProto, folder: Path | None, path) -> np.ndarray:
    """A TensorProto as a numpy array, external data read from ``folder``."""
    if t.data_type not in onnx.TensorProto.DataType.values() or t.data_type == onnx.TensorProto.UNDEFINED:
        raise OnnxError(f"{path}: initializer {t.name!r} has data type {t.data_type}, which is not an ONNX tensor type")
    try:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            if folder is None:
                raise OnnxError(f"{path}: initializer {t.name!r} keeps its data in an external file, but the model "
                                f"was given without its folder")
            inline = onnx.TensorProto()
            inline.CopyFrom(t)
            del inline.external_data[:]
            inline.data_location = onnx.TensorProto.DEFAULT
            inline.raw_data = _external_bytes(t, folder, path)
            t = inline
        return np.array(numpy_helper.to_array(t))
    except (ValueError, TypeError) as e:
        raise OnnxError(f"{path}: initializer {t.name!r} cannot be read: {e}") from e


def initializers(model: onnx.ModelProto, folder: Path | None, path) -> dict[str, np.ndarray]:
    return {t.name: tensor_value(t, folder, path) for t in model.graph.initializer}
