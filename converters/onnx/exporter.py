"""kindling models out to ONNX: every module type of the runtime maps to ONNX ops (emit.py and
emit_extra.py hold the table; writer.py the graph being written), containers and Graph are walked, the file passes
``onnx.checker.check_model(full_check=True)`` and is written atomically.

    from kindling.converters.onnx import export
    export(model, "model.onnx", opset=17, dynamic_batch=True)

Tensor names are module names (a module with several outputs: "name:i" becomes "name_i"), so a
file exported here and converted back keeps its names. Labels and preprocessing go into the
model's metadata_props (kindling.labels, kindling.preprocessing, as JSON) and come back on import.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from kindling.runtime.module import Module

from .build import METADATA_LABELS, METADATA_PREPROCESSING
from .emit import emit
from .emit_extra import CRITERIONS
from .errors import OnnxError
from .writer import Writer

MIN_EXPORT_OPSET = 13


def _rename(w: Writer, tensor: str, name: str) -> str:
    """The module's own name for its output (an Identity when the tensor already has another)."""
    if tensor == name:
        return tensor
    out = w.node("Identity", [tensor], name)
    w.shapes[out] = w.shape(tensor)
    return out


def _value_info(name: str, shape, dynamic: bool, elem=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    dims = [("batch" if dynamic and i == 0 else int(d)) for i, d in enumerate(shape)]
    return helper.make_tensor_value_info(name, elem, dims)


def to_onnx(model: Module, *, opset: int = 17, dynamic_batch: bool = False, input_shapes=None) -> onnx.ModelProto:
    """The ModelProto of ``model``; ``input_shapes`` ({name: shape} or one shape) defaults to the
    model's metadata input_shape."""
    latest = onnx.defs.onnx_opset_version()
    if not MIN_EXPORT_OPSET <= opset <= latest:
        raise OnnxError(f"kindling exports opsets {MIN_EXPORT_OPSET} to {latest} (this onnx package's latest); "
                        f"asked for {opset}")
    meta = dict(getattr(model, "metadata", None) or {})
    target = CRITERIONS.get(type(model).__name__)  # a loss: a model of (input, target)
    names = ["input", "target"] if target else list(meta.get("input_names") or getattr(model, "input_names", ["input"]))
    shapes = _input_shapes(model, meta, names, input_shapes)
    w = Writer(opset, dynamic_batch)
    graph_inputs = []
    for name, shape in shapes.items():
        w._used.add(name)
        w.shapes[name] = tuple(shape)
        graph_inputs.append(_value_info(name, shape, dynamic_batch, target if name == "target" else TensorProto.FLOAT))
    training = model.training
    model.evaluate()
    try:
        outs = emit(w, model, list(shapes))
    finally:
        model.train(training)
    out_names = list(meta.get("output_names") or [])
    if len(out_names) != len(outs) or len(set(out_names)) != len(out_names) or set(out_names) & set(shapes):
        out_names = [o for o in outs]
    outs = [_rename(w, t, n) if n not in w._used or n == t else t for t, n in zip(outs, out_names)]
    graph = helper.make_graph(w.nodes, model.name or "kindling", graph_inputs,
                              [_value_info(t, w.shape(t), dynamic_batch) for t in outs], w.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="kindling",
                              producer_version=_version())
    proto.ir_version = min(proto.ir_version, _ir_version(opset))
    props = {}
    if meta.get("labels"):
        props[METADATA_LABELS] = json.dumps(list(meta["labels"]))
    if meta.get("preprocessing"):
        props[METADATA_PREPROCESSING] = json.dumps(meta["preprocessing"])
    helper.set_model_props(proto, props)
    return proto


def _version() -> str:
    from kindling import __version__
    return __version__


def _ir_version(opset: int) -> int:
    """The IR version that goes with ``opset`` (onnx's own table), so older runtimes read the file."""
    for ir, op in [(ir, opsets.get("ai.onnx", opsets.get("", 0)))
                   for ir, opsets in _ir_opsets().items()]:
        if op >= opset:
            return ir
    return onnx.IR_VERSION


def _ir_opsets() -> dict:
    out = {}
    for release, ir, op, *_ in onnx.helper.VERSION_TABLE:
        out.setdefault(ir, {})["ai.onnx"] = max(out.get(ir, {}).get("ai.onnx", 0), op)
    return dict(sorted(out.items()))


def _input_shapes(model, meta, names, given) -> dict[str, list[int]]:
    if given is not None and not isinstance(given, dict):
        given = {names[0]: list(given)} if len(names) == 1 else None
    if given is None:
        shape = meta.get("input_shape")
        if not shape or len(names) != 1:
            raise OnnxError(f"model {model.name!r}: its input shape is not recorded; give it (--input-shape 1,3,224,224)")
        given = {names[0]: list(shape)}
    return {n: [1 if i == 0 and int(d) < 0 else int(d) for i, d in enumerate(s)] for n, s in given.items()}


def export(model: Module, path, *, opset: int = 17, dynamic_batch: bool = False, input_shape=None) -> Path:
    """Writes ``model`` to ``path`` as ONNX after onnx.checker.check_model(full_check=True); a temp
    file and a rename, so a failed export leaves nothing behind."""
    path = Path(path)
    proto = to_onnx(model, opset=opset, dynamic_batch=dynamic_batch, input_shapes=input_shape)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise OnnxError(f"{path}: the exported model fails onnx's checker (a kindling bug; please report it): {e}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(proto.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
