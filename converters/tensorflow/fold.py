"""Constant folding: every tensor computed from constants alone gets its value here, so
translators see numbers, not subgraphs (Keras's bias reshapes, the batch norm Keras 3 spells out as
Rsqrt/Mul/Sub on constants, Cast of half-precision weights, shape arithmetic).

``Shape`` of an activation is a constant too once its shape is known, which happens while the net
is assembled (the shape probe): nodes that depend on one are *deferred* and folded then. The
batch size is not a number in TensorFlow's graph (Keras's Flatten computes
``reshape(x, [shape(x)[0], -1])``), so such values are computed twice, with batch 1 and batch 2:
a dimension that differs between the two is the batch (see ``Constants.batch_dims``).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from kindling.protos import tensorflow_pb2 as tfpb

from ..graph import Node
from .tensors import BFLOAT16, DTYPES, StoredTensor


class Constants:
    """Constant tensors by name: the value with batch 1, and the value with batch 2 for the few
    that depend on the batch size."""

    def __init__(self):
        self.values: dict[str, object] = {}
        self.batch2: dict[str, np.ndarray] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def __iter__(self):
        return iter(self.values)

    def value(self, name: str):
        return self.values[name]

    def worlds(self, name: str) -> tuple:
        v = self.values[name]
        return v, self.batch2.get(name, v)

    def batch_dims(self, name: str) -> list[bool]:
        """For a 1-D shape tensor: which entries are the batch size."""
        v1, v2 = (np.asarray(v).reshape(-1) for v in self.worlds(name))
        return [int(a) != int(b) for a, b in zip(v1, v2)]

    def set(self, name: str, v1, v2=None) -> None:
        self.values[name] = v1
        if v2 is not None and not (v2 is v1 or (np.shape(v1) == np.shape(v2) and np.array_equal(v1, v2))):
            self.batch2[name] = v2


def numpy_dtype(dtype: int) -> np.dtype:
    d = DTYPES.get(dtype - 100 if dtype > 100 else dtype, (None,))[0]
    if d is None:
        raise ValueError(f"cannot cast to DataType {dtype}")
    return np.dtype(np.float32) if d == BFLOAT16 else d


def _a(v) -> np.ndarray:
    return v.read() if isinstance(v, StoredTensor) else np.asarray(v)


def _ints(v) -> list[int]:
    return [int(i) for i in np.asarray(v).reshape(-1)]


# ---- StridedSlice, shared with the translator for activations ----------------------------------
def strided_index(node: Node, begin, end, strides) -> tuple:
    """The numpy index equal to TensorFlow's StridedSlice with this node's masks."""
    begin, end, strides = _ints(begin), _ints(end), _ints(strides)
    masks = {k: int(node.attrs.get(k, 0) or 0) for k in
             ("begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask", "shrink_axis_mask")}
    index = []
    for i, (b, e, s) in enumerate(zip(begin, end, strides)):
        bit = 1 << i
        if masks["ellipsis_mask"] & bit:
            index.append(Ellipsis)
        elif masks["new_axis_mask"] & bit:
            index.append(np.newaxis)
        elif masks["shrink_axis_mask"] & bit:
            index.append(b)
        else:
            if s == 0:
                raise ValueError("a stride of 0")
            index.append(slice(None if masks["begin_mask"] & bit else b, None if masks["end_mask"] & bit else e, s))
    return tuple(index)


def _strided_slice(node, x, begin, end, strides):
    return _a(x)[strided_index(node, begin, end, strides)]


def _slice(node, x, begin, size):
    x = _a(x)
    index = tuple(slice(b, None if s == -1 else b + s) for b, s in zip(_ints(begin), _ints(size)))
    return x[index]


def _reduce(fn):
    def reduce(node, x, axes):
        keep = bool(node.attrs.get("keep_dims", node.attrs.get("keepdims", False)))
        axes = tuple(_ints(axes))
        return np.asarray(fn(_a(x), axis=axes, keepdims=keep)).astype(_a(x).dtype)
    return reduce


def _binary(fn):
    return lambda node, a, b: np.asarray(fn(_a(a), _a(b))).astype(np.result_type(_a(a), _a(b)))


def _div(a, b):
    return np.floor_divide(a, b) if np.issubdtype(np.result_type(a, b), np.integer) else np.true_divide(a, b)


def _unary(fn):
    return lambda node, x: np.asarray(fn(_a(x))).astype(_a(x).dtype)


def _split(node, axis, x):
    return np.split(_a(x), int(node.attrs["num_split"]), axis=int(_a(axis)))


def _split_v(node, x, sizes, axis):
    points = np.cumsum(_ints(sizes))[:-1]
    return np.split(_a(x), points, axis=int(_a(axis)))


# op -> fn(node, *input values) -> value (or a list of values, one per output)
FOLD: dict[str, Callable] = {
    "Cast": lambda node, x: _a(x).astype(numpy_dtype(node.attrs["DstT"])),
    "Shape": lambda node, x: np.array(np.shape(x), numpy_dtype(node.attrs.get("out_type", tfpb.DT_INT32))),
    "Size": lambda node, x: np.array(np.size(x), numpy_dtype(node.attrs.get("out_type", tfpb.DT_INT32))),
    "Rank": lambda node, x: np.array(np.ndim(x), np.int32),
    "StridedSlice": _strided_slice,
    "Slice": _slice,
    "Pack": lambda node, *xs: np.stack([_a(x) for x in xs], axis=int(node.attrs.get("axis", 0))),
    "Unpack": lambda node, x: list(np.moveaxis(_a(x), int(node.attrs.get("axis", 0)), 0)),
    "ConcatV2": lambda node, *xs: np.concatenate([_a(x) for x in xs[:-1]], axis=int(_a(xs[-1]))),
    "Concat": lambda node, axis, *xs: np.concatenate([_a(x) for x in xs], axis=int(_a(axis))),
    "Reshape": lambda node, x, shape: _a(x).reshape(_ints(shape)),
    "Squeeze": lambda node, x: np.squeeze(_a(x), axis=tuple(node.attrs.get("squeeze_dims") or []) or None),
    "ExpandDims": lambda node, x, axis: np.expand_dims(_a(x), int(_a(axis))),
    "Transpose": lambda node, x, perm: np.transpose(_a(x), _ints(perm)),
    "Fill": lambda node, dims, value: np.full(_ints(dims), _a(value), _a(value).dtype),
    "ZerosLike": lambda node, x: np.zeros_like(_a(x)),
    "OnesLike": lambda node, x: np.ones_like(_a(x)),
    "Range": lambda node, start, limit, delta: np.arange(_a(start), _a(limit), _a(delta)).astype(_a(start).dtype),
    "Tile": lambda node, x, multiples: np.tile(_a(x), _ints(multiples)),
    "GatherV2": lambda node, x, idx, axis: np.take(_a(x), _a(idx), axis=int(_a(axis))),
    "Gather": lambda node, x, idx: np.take(_a(x), _a(idx), axis=0),
    "Split": _split,
    "SplitV": _split_v,
    "Add": _binary(np.add), "AddV2": _binary(np.add), "Sub": _binary(np.subtract), "Mul": _binary(np.multiply),
    "RealDiv": _binary(np.true_divide), "Div": _binary(_div), "FloorDiv": _binary(np.floor_divide),
    "FloorMod": _binary(np.mod), "Maximum": _binary(np.maximum), "Minimum": _binary(np.minimum),
    "Pow": _binary(np.power), "SquaredDifference": _binary(lambda a, b: np.square(a - b)),
    "Neg": _unary(np.negative), "Rsqrt": _unary(lambda x: 1 / np.sqrt(x)), "Sqrt": _unary(np.sqrt),
    "Square": _unary(np.square), "Reciprocal": _unary(lambda x: 1 / x), "Inv": _unary(lambda x: 1 / x),
    "Exp": _unary(np.exp), "Log": _unary(np.log), "Abs": _unary(np.abs), "Floor": _unary(np.floor),
    "Ceil": _unary(np.ceil), "Sigmoid": _unary(lambda x: 1 / (1 + np.exp(-x))), "Tanh": _unary(np.tanh),
    "Relu": _unary(lambda x: np.maximum(x, 0)),
    "Prod": _reduce(np.prod), "Sum": _reduce(np.sum), "Mean": _reduce(np.mean), "Max": _reduce(np.max),
    "Min": _reduce(np.min),
}
# Ops whose value depends only on their input's shape, which the shape probe knows.
SHAPE_OPS = {"Shape", "Size", "Rank"}


def evaluate(node: Node, args: list) -> list:
    """The node's output values for these input values (a list: one per output)."""
    out = FOLD[node.type](node, *args)
    return out if isinstance(out, list) else [out]


def output_names(node: Node, count: int) -> list[str]:
    return [node.name if i == 0 else f"{node.name}:{i}" for i in range(count)]


def fold(nodes: list[Node], consts: Constants, error) -> tuple[list[Node], set[str]]:
    """Folds every node whose inputs are all constants into ``consts``. Returns the nodes left to
    translate, and the names of those among them that are constants once activation shapes are
    known (Shape of an activation and what is computed from it)."""
    kept, deferred = [], set()
    produced_by_deferred: set[str] = set()
    for node in nodes:
        if node.type == "Const":
            value = node.attrs.get("value")
            if isinstance(value, Exception):
                raise value
            consts.set(node.name, value)
            continue
        if node.type not in FOLD:
            kept.append(node)
            continue
        if node.type in SHAPE_OPS and node.inputs and node.inputs[0] not in consts:
            deferred.add(node.name)
            produced_by_deferred.update(output_names(node, 1))
            kept.append(node)
            continue
        known = [i in consts or i in produced_by_deferred for i in node.inputs]
        if not all(known):
            kept.append(node)
            continue
        if any(i in produced_by_deferred for i in node.inputs):
            deferred.add(node.name)
            produced_by_deferred.update(output_names(node, _num_outputs(node)))
            kept.append(node)
            continue
        try:
            values = evaluate(node, [consts.value(i) for i in node.inputs])
        except (ValueError, IndexError, TypeError, KeyError) as e:
            raise error(node, f"cannot fold its constant inputs: {e}") from e
        for name, v in zip(output_names(node, len(values)), values):
            consts.set(name, v)
    return kept, deferred


def _num_outputs(node: Node) -> int:
    if node.type in ("Split", "Unpack"):
        return int(node.attrs.get("num_split", node.attrs.get("num", 1)))
    return 1


def fold_deferred(node: Node, consts: Constants, input_shape_tf: list | None) -> list[str]:
    """Folds a deferred node during assembly (``input_shape_tf``: its activation input's shape in
    TensorFlow's axis order, batch 1, for Shape/Size/Rank). Returns the names it defined."""
    if node.type in SHAPE_OPS and input_shape_tf is not None:
        shape1 = [1, *input_shape_tf[1:]]
        shape2 = [2, *input_shape_tf[1:]]
        args1, args2 = [np.broadcast_to(np.float32(0), shape1)], [np.broadcast_to(np.float32(0), shape2)]
    else:
        args1 = [consts.worlds(i)[0] for i in node.inputs]
        args2 = [consts.worlds(i)[1] for i in node.inputs]
    v1 = evaluate(node, args1)
    v2 = evaluate(node, args2) if any(a is not b for a, b in zip(args1, args2)) else v1
    names = output_names(node, len(v1))
    for name, a, b in zip(names, v1, v2):
        consts.set(name, a, b)
    return names
