"""Shared by the TensorFlow converter tests: the committed graphs, and GraphDefs written with
kindling's own schema (no TensorFlow) for graphs TensorFlow would refuse to build."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kindling.protos import tensorflow_pb2 as tfpb

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tensorflow"


def stored(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}


def tensor(value, dtype=tfpb.DT_FLOAT) -> tfpb.TensorProto:
    a = np.asarray(value)
    t = tfpb.TensorProto(dtype=dtype, tensor_content=a.astype({tfpb.DT_FLOAT: "<f4", tfpb.DT_INT32: "<i4",
                                                                 tfpb.DT_HALF: "<f2"}[dtype]).tobytes())
    t.tensor_shape.dim.extend(tfpb.TensorShapeProto.Dim(size=d) for d in a.shape)
    return t


class GraphWriter:
    """A GraphDef built node by node: ``g.op("Relu", "r", ["x"])``, ``g.const("w", array)``."""

    def __init__(self):
        self.graph = tfpb.GraphDef()

    def node(self, op: str, name: str, inputs=(), **attrs) -> str:
        n = self.graph.node.add(name=name, op=op, input=list(inputs))
        for k, v in attrs.items():
            a = n.attr[k]
            if isinstance(v, tfpb.TensorProto):
                a.tensor.CopyFrom(v)
            elif isinstance(v, bool):
                a.b = v
            elif isinstance(v, int):
                a.i = v
            elif isinstance(v, float):
                a.f = v
            elif isinstance(v, str):
                a.s = v.encode()
            elif isinstance(v, list) and all(isinstance(i, int) for i in v):
                a.list.i.extend(v)
            else:
                raise TypeError(f"attr {k}={v!r}")
        return name

    def placeholder(self, name="x", shape=(-1, 4, 4, 3), dtype=tfpb.DT_FLOAT) -> str:
        n = self.graph.node.add(name=name, op="Placeholder")
        n.attr["dtype"].type = dtype
        n.attr["shape"].shape.dim.extend(tfpb.TensorShapeProto.Dim(size=d) for d in shape)
        return name

    def const(self, name: str, value, dtype=tfpb.DT_FLOAT) -> str:
        return self.node("Const", name, value=tensor(value, dtype))

    def write(self, path: Path) -> Path:
        path.write_bytes(self.graph.SerializeToString())
        return path
