"""Two-operand arithmetic with numpy broadcasting (ONNX's Add, Sub, Mul, Div, Pow, Max, Min,
MatMul, and PRelu with a slope tensor), either operand a constant the module holds; and Constant,
a module without inputs that gives a stored tensor.

    BinaryOp("sub")                       # two inputs: x - y
    BinaryOp("div", constant=std)         # one input:  x / std
    BinaryOp("sub", constant=1.0, constant_first=True)   # 1 - x

The constant is a buffer (saved, not trained). Gradients follow PyTorch, ties of max/min included
(half to each operand).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..module import Module
from .merge import _unbroadcast


def _matmul_grads(a, b, y, g):
    """numpy.matmul's gradients, 1-D operands promoted as matmul promotes them."""
    a2 = a[None] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    g2 = g.reshape(*np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2]), a2.shape[-2], b2.shape[-1])
    ga = np.matmul(g2, np.swapaxes(b2, -1, -2))
    gb = np.matmul(np.swapaxes(a2, -1, -2), g2)
    return _unbroadcast(ga, a2.shape).reshape(a.shape), _unbroadcast(gb, b2.shape).reshape(b.shape)


def _tie_split(pick):
    """max/min: the gradient goes to the operand that won, half to each on a tie (PyTorch)."""
    def grads(a, b, y, g):
        share = np.where(a == b, np.float32(0.5), np.float32(1))
        return g * share * pick(a, b), g * share * pick(b, a)
    return grads


@dataclass(frozen=True)
class Op:
    forward: Callable      # (a, b) -> y
    grads: Callable        # (a, b, y, g) -> (ga, gb), before unbroadcasting


OPS = {
    "add": Op(np.add, lambda a, b, y, g: (g, g)),
    "sub": Op(np.subtract, lambda a, b, y, g: (g, -g)),
    "mul": Op(np.multiply, lambda a, b, y, g: (g * b, g * a)),
    "div": Op(np.divide, lambda a, b, y, g: (g / b, -g * y / b)),
    "pow": Op(np.power, lambda a, b, y, g: (g * b * np.power(a, b - 1),
                                            g * y * np.log(np.where(a > 0, a, np.float32(1))))),
    "max": Op(np.maximum, _tie_split(lambda a, b: a >= b)),
    "min": Op(np.minimum, _tie_split(lambda a, b: a <= b)),
    "prelu": Op(lambda x, s: np.where(x > 0, x, x * s),
                lambda x, s, y, g: (g * np.where(x > 0, np.float32(1), s), g * np.where(x > 0, np.float32(0), x))),
    "matmul": Op(np.matmul, None),
}


class BinaryOp(Module):
    """``op`` (a key of OPS) of two inputs, or of the input and ``constant`` (the constant is the
    left operand when ``constant_first``). The output has the broadcast shape."""

    def __init__(self, op: str, constant=None, constant_first: bool = False, constant_shape=None,
                 name: str | None = None):
        super().__init__(name)
        if op not in OPS:
            raise ValueError(f"BinaryOp {self.name!r}: unknown op {op!r}; known: {', '.join(OPS)}")
        self.op, self.constant_first = op, bool(constant_first)
        if constant is None and constant_shape is not None:
            constant = np.zeros(constant_shape, np.float32)
        if constant is not None:
            self.buffers["constant"] = np.asarray(constant, np.float32)
        self.multi_input = constant is None

    def config(self):
        c = self.buffers.get("constant")
        return {"op": self.op, "constant_first": self.constant_first,
                "constant_shape": None if c is None else list(c.shape)}

    def _operands(self, x):
        if self.multi_input:
            if len(x) != 2:
                raise ValueError(f"BinaryOp {self.name!r} ({self.op}) takes 2 inputs, got {len(x)}")
            return [np.asarray(v, np.float32) for v in x]
        x = np.asarray(x, np.float32)
        c = self.buffers["constant"]
        return [c, x] if self.constant_first else [x, c]

    def forward(self, x):
        a, b = self._operands(x)
        try:
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                self.output = np.asarray(OPS[self.op].forward(a, b), np.float32)
        except ValueError as e:
            raise ValueError(f"BinaryOp {self.name!r} ({self.op}): operands of shapes {a.shape} and {b.shape} "
                             f"do not broadcast: {e}") from e
        return self.output

    def backward(self, x, grad_out):
        a, b = self._operands(x)
        g = np.asarray(grad_out, np.float32)
        if self.op == "matmul":
            ga, gb = _matmul_grads(a, b, self.output, g)
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                ga, gb = OPS[self.op].grads(a, b, self.output, g)
            ga, gb = _unbroadcast(np.asarray(ga, np.float32), a.shape), _unbroadcast(np.asarray(gb, np.float32), b.shape)
        if self.multi_input:
            return [ga, gb]
        return gb if self.constant_first else ga


class Constant(Module):
    """No input; the output is the stored tensor (``value``), for a graph that needs a fixed
    tensor as an input of a join or as one of its outputs."""
    multi_input = True

    def __init__(self, shape=(), value=None, name: str | None = None):
        super().__init__(name)
        value = np.zeros(shape, np.float32) if value is None else np.asarray(value, np.float32)
        self.buffers["value"] = value

    def config(self):
        return {"shape": list(self.buffers["value"].shape)}

    def forward(self, xs):
        self.output = self.buffers["value"]
        return self.output

    def backward(self, xs, grad_out):
        return []
