"""Elementwise ops of an activation and a constant (a scalar: Power or Clip; per channel or per
position: Scale or Bias, the constant moved to kindling's layout), joins of two activations, and
the per-channel affine that patterns.affines makes of a spelled-out batch norm."""
from __future__ import annotations

import numpy as np

from kindling.runtime import nn

from . import layout as L
from .common import array, fail, layout, module_name, wired


def _per_axis(node, c: np.ndarray, shape) -> tuple[list[int], int, np.ndarray]:
    """A constant aligned to an activation of kindling ``shape``, as (parameter shape, axis,
    values) for Scale/Bias: the axes from the first to the last that it varies along."""
    try:
        a = L.align(layout(node), c, len(shape))
    except ValueError as e:
        fail(node, str(e))
    if a.shape[0] != 1 or any(d not in (1, s) for d, s in zip(a.shape, shape)):
        fail(node, f"a constant of shape {list(np.shape(c))} that does not broadcast to the activation")
    varying = [i for i, d in enumerate(a.shape) if d != 1] or [len(shape) - 1]
    first, last = varying[0], varying[-1]
    region = a[(0, *[slice(None) if first <= i <= last else 0 for i in range(1, len(shape))])]
    values = np.broadcast_to(region, tuple(shape[first:last + 1]))
    return list(shape[first:last + 1]), first, np.array(values, np.float32)


def _scale(node, c, shape, name, bias=None) -> nn.Module:
    pshape, axis, values = _per_axis(node, c, shape)
    m = nn.Scale(pshape, bias=bias is not None, axis=axis, name=name)
    m.params["weight"] = values
    if bias is not None:
        m.params["bias"] = np.array(np.broadcast_to(bias, values.shape), np.float32)
    return m


def _bias(node, c, shape, name) -> nn.Module:
    pshape, axis, values = _per_axis(node, c, shape)
    m = nn.Bias(pshape, axis=axis, name=name)
    m.params["bias"] = values
    return m


def scalar(c) -> float | None:
    return float(np.asarray(c).reshape(-1)[0]) if np.size(c) == 1 else None


# op -> join of two activations
JOINS = {"Add": lambda n: nn.Add(name=n), "AddV2": lambda n: nn.Add(name=n),
         "Sub": lambda n: nn.Add(coeffs=[1.0, -1.0], name=n), "Mul": lambda n: nn.Mul(name=n),
         "Maximum": lambda n: nn.Max(name=n), "BiasAdd": lambda n: nn.Add(name=n)}


def binary(node, shapes):
    inputs = wired(node)
    name = module_name(node)
    if len(inputs) == 2:
        if node.type not in JOINS:
            fail(node, f"{node.type} of two activations")
        if len(shapes[0]) != len(shapes[1]):
            fail(node, f"activations of ranks {len(shapes[0])} and {len(shapes[1])}")
        return JOINS[node.type](name)
    if len(inputs) != 1:
        fail(node, f"{len(inputs)} activation inputs")
    ci = 1 - inputs[0]
    c, shape = array(node.weights[ci]), shapes[0]
    s = scalar(c)
    left = ci == 0  # c - x, c / x
    if node.type in ("Add", "AddV2", "BiasAdd"):
        if node.type == "BiasAdd" and len(shape) == 4 and node.attrs.get("data_format", "NHWC") != layout(node):
            fail(node, "a BiasAdd in another data format than the graph's")
        return nn.Power(1.0, 1.0, s, name=name) if s is not None else _bias(node, c, shape, name)
    if node.type == "Sub":
        if s is not None:
            return nn.Power(1.0, -1.0 if left else 1.0, s if left else -s, name=name)
        if not left:
            return _bias(node, -c, shape, name)
        return [nn.Power(1.0, -1.0, 0.0, name=module_name(node, "/negate")), _bias(node, c, shape, name)]
    if node.type == "Mul":
        return nn.Power(1.0, s, 0.0, name=name) if s is not None else _scale(node, c, shape, name)
    if node.type == "RealDiv" and not left:
        return nn.Power(1.0, 1.0 / s, 0.0, name=name) if s is not None else _scale(node, 1.0 / c, shape, name)
    if node.type in ("Maximum", "Minimum") and s is not None:
        return nn.Clip(low=s, name=name) if node.type == "Maximum" else nn.Clip(high=s, name=name)
    fail(node, f"{node.type} with a constant of shape {list(c.shape)}{' on the left' if left else ''}")


def affine(node, shapes):
    """x * scale + shift (patterns.affines)."""
    consts = node.ctx.consts
    scale = array(consts.value(node.attrs["_scale"]))
    shift = array(consts.value(node.attrs["_shift"]))
    shift = -shift if node.attrs.get("_negate_shift") else shift
    shape = shapes[0]
    if np.size(scale) == 1 and np.size(shift) == 1:
        return nn.Power(1.0, scalar(scale), scalar(shift), name=module_name(node))
    both = np.broadcast_arrays(scale, shift)
    pshape, axis, weight = _per_axis(node, both[0], shape)
    _, _, bias = _per_axis(node, both[1], shape)
    m = nn.Scale(pshape, bias=True, axis=axis, name=module_name(node))
    m.params["weight"], m.params["bias"] = weight, bias
    return m


def add_n(node, shapes):
    if wired(node) != list(range(len(node.inputs))):
        fail(node, "AddN of constants and activations")
    return nn.Add(name=module_name(node))
