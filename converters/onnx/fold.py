"""Constant folding: nodes whose inputs are all constants are computed once, in numpy, while the
graph is assembled (Constant, ConstantOfShape, Cast, and the Shape -> Gather -> Unsqueeze ->
Concat chains exporters write around Reshape and Resize). A FOLD function takes the node and its
input values and returns its output values.

Shape of a computed tensor folds too, from the shape the probe found. Unless shapes are exact,
that probe runs with a batch of 1, so the batch dimension folds to BATCH, a marker value that
stays recognisable through Gather, Concat, Mul and Div: a Reshape then keeps the batch free (see
shape_ops.reshape) instead of baking in a batch of 1.
"""
from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from kindling.runtime.layers.index import slice_bounds

from . import forms
from .errors import OnnxError

BATCH = (1 << 40) + 1  # the folded value of a free batch dimension (and multiples of it: a product with it)


def batch_derived(v) -> bool:
    return int(v) >= BATCH


def shape_value(node, shape) -> np.ndarray:
    """Shape's output: the dims between the start and end attributes (opset 15)."""
    dims = np.array(shape, np.int64)
    if not node.exact and dims.size:
        dims[0] = BATCH
    start, end = node.attr("start", 0), node.attr("end")
    return dims[slice(start, end)]


def _constant(node, values):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in node.attrs:
            v = node.attrs[key]
            if key == "value":
                return [np.array(numpy_helper.to_array(v))]
            return [np.array(v, np.float32 if "float" in key else np.int64)]
    raise OnnxError(f"node {node.name!r} (Constant): only tensor, float and int values are supported; "
                    f"it has {', '.join(node.attrs) or 'no value'}")


def _constant_of_shape(node, values):
    shape = np.asarray(values[0], np.int64)
    if any(batch_derived(d) for d in shape):
        raise OnnxError(f"node {node.name!r} (ConstantOfShape): the shape depends on the batch size; kindling "
                        f"folds it at conversion time (give a fixed batch with --input)")
    value = node.attr("value")
    fill = np.array(numpy_helper.to_array(value)).reshape(-1)[0] if value is not None else np.float32(0)
    return [np.full(shape, fill, dtype=np.asarray(fill).dtype)]


def _cast(node, values):
    return [np.asarray(values[0]).astype(helper.tensor_dtype_to_np_dtype(node.attr("to")))]


def _unsqueeze(node, values):
    x = np.asarray(values[0])
    axes = sorted(forms.normalized_axes(forms.axes(node), x.ndim + len(forms.axes(node)), node))
    for a in axes:
        x = np.expand_dims(x, a)
    return [x]


def _squeeze(node, values):
    x = np.asarray(values[0])
    axes = forms.axes(node)
    return [np.squeeze(x, axis=None if axes is None else tuple(forms.normalized_axes(axes, x.ndim, node)))]


def _slice(node, values):
    x = np.asarray(values[0])
    starts, ends, axes, steps = forms.slice_args(node)
    axes = axes or list(range(len(starts)))
    index = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps or [1] * len(starts)):
        index[a] = slice_bounds(s, e, st, x.shape[a])
    return [x[tuple(index)]]


def _reshape(node, values):
    x, target = np.asarray(values[0]), [int(d) for d in np.asarray(values[1]).reshape(-1)]
    if not node.attr("allowzero", 0):
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return [x.reshape(target)]


def _split(node, values):
    x = np.asarray(values[0])
    axis = node.attr("axis", 0)
    sizes = forms.split_sizes(node) or [x.shape[axis] // len(node.outputs)] * len(node.outputs)
    return np.split(x, np.cumsum(sizes)[:-1], axis=axis)


def _div(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer):
        return (np.trunc(a / b)).astype(np.result_type(a, b))  # C's truncation, as ONNX's integer Div
    return a / b


def _variadic(fn):
    def fold(node, values):
        out = np.asarray(values[0])
        for v in values[1:]:
            out = fn(out, np.asarray(v))
        return [out]
    return fold


def _elementwise(fn):
    return lambda node, values: [fn(*[np.asarray(v) for v in values])]


FOLD = {
    "Constant": _constant,
    "ConstantOfShape": _constant_of_shape,
    "Cast": _cast,
    "Identity": lambda node, values: [values[0]],
    "Shape": lambda node, values: [shape_value(node, np.shape(values[0]))],
    "Gather": lambda node, values: [np.take(np.asarray(values[0]), np.asarray(values[1], np.int64),
                                            axis=node.attr("axis", 0))],
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": lambda node, values: [np.concatenate([np.atleast_1d(v) for v in values], axis=node.attr("axis"))],
    "Slice": _slice,
    "Reshape": _reshape,
    "Flatten": lambda node, values: [np.asarray(values[0]).reshape(
        int(np.prod(np.shape(values[0])[:node.attr("axis", 1)])), -1)],
    "Transpose": lambda node, values: [np.transpose(values[0], node.attr("perm"))],
    "Split": _split,
    "Add": _elementwise(np.add), "Sub": _elementwise(np.subtract), "Mul": _elementwise(np.multiply),
    "Div": _elementwise(_div),
    "Sum": _variadic(np.add), "Max": _variadic(np.maximum), "Min": _variadic(np.minimum),
}


def fold(node, values: list) -> list[np.ndarray]:
    try:
        out = FOLD[node.type](node, values)
    except OnnxError:
        raise
    except (ValueError, IndexError, TypeError) as e:
        raise OnnxError(f"node {node.name!r} ({node.type}): cannot compute it from its constant inputs: {e}") from e
    return [np.asarray(v) for v in out]
