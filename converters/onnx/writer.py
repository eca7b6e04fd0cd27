"""The ONNX graph being written by the exporter: nodes, initializers, unique tensor names and each
tensor's shape, with the small helpers every emitter uses."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from kindling.runtime.shapes import probe


class Writer:
    """The graph being written: nodes, initializers, unique tensor names, and each tensor's shape
    (at the probe batch; the batch axis is 0 here unless the export is static)."""

    def __init__(self, opset: int, dynamic_batch: bool):
        self.opset, self.dynamic_batch = opset, dynamic_batch
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.shapes: dict[str, tuple] = {}
        self._used: set[str] = set()

    def fresh(self, base: str) -> str:
        name, k = base, 2
        while name in self._used:
            name, k = f"{base}_{k}", k + 1
        self._used.add(name)
        return name

    def const(self, base: str, value, dtype=np.float32) -> str:
        name = self.fresh(base)
        self.initializers.append(numpy_helper.from_array(np.array(value, dtype=dtype, order="C"), name))
        return name

    def ints(self, base: str, values) -> str:
        return self.const(base, np.asarray(values, np.int64).reshape(-1), np.int64)

    def node(self, op: str, inputs: list[str], base: str, outputs: int = 1, **attrs) -> str | list[str]:
        """Adds a node; its outputs are fresh names from ``base``. Returns the name (or names)."""
        names = [self.fresh(base if i == 0 else f"{base}_{i}") for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=names[0],
                                           **{k: v for k, v in attrs.items() if v is not None}))
        return names[0] if outputs == 1 else names

    def shape(self, tensor: str) -> tuple:
        return self.shapes[tensor]

    def rank(self, tensor: str) -> int:
        return len(self.shapes[tensor])

    def axes_input_or_attr(self, op: str, x: str, axes, base: str, since: int, **attrs) -> str:
        """A reduction whose axes moved from an attribute to an input at opset ``since``."""
        if self.opset >= since:
            return self.node(op, [x, self.ints(f"{base}/axes", axes)], base, **attrs)
        return self.node(op, [x], base, axes=list(axes), **attrs)

    def batch_target(self, shape) -> list[int]:
        """A Reshape target for ``shape``: the batch axis copied from the input (0) so that any
        batch size runs."""
        return [0, *shape[1:]] if shape else []

    def out_shape(self, m, xs) -> tuple:
        """The (first) output shape of module ``m`` reading tensors ``xs``."""
        s = probe(m, [self.shape(x) for x in xs])
        return s[0] if isinstance(s, list) else s

    def param(self, m, key: str, value=None, dtype=np.float32) -> str:
        """The module's parameter or buffer ``key`` (or ``value``) as an initializer ``module.key``."""
        v = value if value is not None else (m.params[key] if key in m.params else m.buffers[key])
        return self.const(f"{m.name}.{key}", v, dtype)


def tensor(value, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def channel_shape(c: int, rank: int) -> tuple:
    """(C, 1, ..., 1): a per-channel tensor that broadcasts against an input of ``rank``."""
    return (c,) + (1,) * (rank - 2)
