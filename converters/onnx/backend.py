"""kindling as an ONNX backend (``onnx.backend.base.Backend``), as onnx's conformance suite
(``onnx.backend.test``) drives one:

    from kindling.converters.onnx.backend import KindlingBackend
    rep = KindlingBackend.prepare(model_proto)
    outputs = rep.run([x, w, ...])          # the graph's inputs in order

kindling keeps weights, shapes, axes, pads, scales and bounds inside its modules, so a graph input
that feeds such a slot (a Conv's W, a Reshape's shape, a Clip's min) is bound to the value given
in ``run`` and the model is converted for it (once per distinct value); the inputs that feed
computed slots stay inputs. Shapes are exact (``convert(..., exact=True)``).
"""
from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.backend.base import Backend, BackendRep

from .build import ALL_COMPUTED, TABLE, convert_model, known_dims, unsupported
from .errors import OnnxError
from .read import nodes_of, opset_of


def data_inputs(model: onnx.ModelProto) -> set[str]:
    """Graph inputs some node reads at a computed slot (input 0, or any input of the ops in
    ALL_COMPUTED); the others are bound as constants."""
    out = set()
    for n in model.graph.node:
        slots = n.input if n.op_type in ALL_COMPUTED else n.input[:1]
        if n.op_type in ("Constant", "ConstantOfShape"):
            continue  # they read constants only
        out.update(t for t in slots if t)
    graph_in = {i.name for i in model.graph.input}
    return out & graph_in


def _elem_type(vi: onnx.ValueInfoProto) -> int | None:
    t = vi.type
    return t.tensor_type.elem_type if t.HasField("tensor_type") else None


def unsupported_reason(model: onnx.ModelProto) -> str | None:
    """Why kindling does not run ``model`` (None when it does): an op it does not convert, or a
    tensor that is not float32 where kindling computes (it computes in float32)."""
    try:
        nodes = nodes_of(model, opset_of(model, "model"))
    except OnnxError as e:
        return str(e)
    used = {t for n in nodes for t in n.inputs} | {o.name for o in model.graph.output}
    missing = unsupported(nodes, TABLE, known_dims(model), used)
    if missing:
        return "; ".join(sorted(set(missing)))
    if any(n.domain not in ("", "ai.onnx") for n in model.graph.node):
        return "an op of another domain"
    data = data_inputs(model)
    for vi in model.graph.input:
        if vi.name in data and _elem_type(vi) != onnx.TensorProto.FLOAT:
            return "a non-float32 input"
    if any(_elem_type(o) != onnx.TensorProto.FLOAT for o in model.graph.output):
        return "a non-float32 output"
    if not data:
        return "no computed input (the whole graph is a constant)"
    computed = set(data)
    for n in model.graph.node:  # tensors computed from the data inputs, and where they go
        if n.op_type == "Shape":
            continue
        slots = n.input if n.op_type in ALL_COMPUTED else n.input[:1]
        if any(t in computed for t in n.input if t not in slots):
            return "a weight or shape computed from an input"
        if any(t in computed for t in n.input):
            computed.update(n.output)
    return None


class KindlingRep(BackendRep):
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.data = data_inputs(model)
        self._converted: dict[str, object] = {}

    def _convert(self, bound: dict[str, np.ndarray]):
        key = hashlib.sha256(b"".join(k.encode() + np.ascontiguousarray(v).tobytes() + str(v.shape).encode()
                                      for k, v in sorted(bound.items()))).hexdigest()
        if key not in self._converted:
            m = onnx.ModelProto()
            m.CopyFrom(self.model)
            for name, value in bound.items():
                m.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
            self._converted = {key: convert_model(m, m.graph.name or "model", None, exact=True).evaluate()}
        return self._converted[key]

    def run(self, inputs, **kwargs):
        names = [i.name for i in self.model.graph.input
                 if i.name not in {t.name for t in self.model.graph.initializer}]
        values = dict(zip(names, inputs if isinstance(inputs, (list, tuple)) else [inputs]))
        model = self._convert({k: v for k, v in values.items() if k not in self.data})
        data = [np.asarray(values[n], np.float32) for n in names if n in self.data]
        y = model.forward(data[0] if len(data) == 1 else data)
        outs = y if len(self.model.graph.output) > 1 else [y]
        return tuple(np.array(o, np.float32) for o in outs)


class KindlingBackend(Backend):
    @classmethod
    def is_compatible(cls, model, device: str = "CPU", **kwargs) -> bool:
        return unsupported_reason(model) is None

    @classmethod
    def prepare(cls, model, device: str = "CPU", **kwargs) -> KindlingRep:
        return KindlingRep(model)

    @classmethod
    def run_model(cls, model, inputs, device: str = "CPU", **kwargs):
        return cls.prepare(model, device).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"
