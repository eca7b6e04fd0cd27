"""Ops that move an activation's values around without computing: Reshape, Squeeze, ExpandDims,
ConcatV2, Pad and crops by StridedSlice/Slice. Each works in TensorFlow's axis order and hands back
kindling's, moving axes only where elements would otherwise change order."""
from __future__ import annotations

import numpy as np

from kindling.runtime import nn

from ..graph import ALIAS
from . import layout as L
from .common import array, const, fail, layout, module_name, wired
from .elementwise import scalar
from .fold import strided_index


def _reshaped(node, kshape, tf_target, batch: list[bool]) -> list[nn.Module]:
    """Modules giving an activation of kindling shape ``kshape`` TensorFlow's shape ``tf_target``
    (batch entries marked in ``batch``, -1 inferred): into TensorFlow's axis order, reshape, back
    to kindling's; the moves are left out where only axes of size 1 move."""
    lay = layout(node)
    target = [int(t) for t in tf_target]
    if any(batch[1:]) or any(t == 0 for t in target[1:]) or not target:
        fail(node, f"a reshape to {target} that moves the batch axis or makes an empty axis")
    if batch[0] or target[0] > 0:
        target[0] = 0  # the batch stays whatever it is (a graph written for batch 1 says 1)
    modules = []
    if L.permuted(lay, len(kshape)) and not L.same_order(kshape, L.TO_TF):
        modules.append(nn.Permute(list(L.TO_TF), name=module_name(node, "/to_nhwc")))
    resolved = nn.Reshape(target, name="resolve").target(L.tf_shape(lay, kshape))
    if L.permuted(lay, len(target)) and not L.same_order(resolved, L.TO_KINDLING):
        return modules + [nn.Reshape(target, name=module_name(node, "/reshape")),
                          nn.Permute(list(L.TO_KINDLING), name=module_name(node))]
    return modules + [nn.Reshape(L.kindling_order(lay, target), name=module_name(node))]


def reshape(node, shapes):
    x = shapes[0]
    tf_target = [int(v) for v in np.asarray(const(node, 1, "shape")).reshape(-1)]
    batch = node.ctx.consts.batch_dims(node.inputs[1])
    flattens = len(tf_target) == 2 and (batch[0] or tf_target[0] == -1) and tf_target[1] in (-1, int(np.prod(x[1:])))
    if node.attrs.get("_feeds_dense") and L.permuted(layout(node), len(x)) and flattens:
        # flatten into dense layers: kindling's own flatten, with the dense rows permuted (matmul)
        node.ctx.flattened[node.outputs[0]] = tuple(x[1:])
        return nn.Flatten(name=module_name(node))
    return _reshaped(node, x, tf_target, batch)


def squeeze(node, shapes):
    tf_in = L.tf_shape(layout(node), shapes[0])
    dims = [d % len(tf_in) for d in (node.attrs.get("squeeze_dims") or [])] or \
        [i for i, d in enumerate(tf_in) if d == 1 and i > 0]
    if 0 in dims or any(tf_in[d] != 1 for d in dims):
        fail(node, f"squeezing axes {dims} of shape {tf_in}")
    target = [d for i, d in enumerate(tf_in) if i not in dims]
    return _reshaped(node, shapes[0], target, [True] + [False] * (len(target) - 1))


def expand_dims(node, shapes):
    tf_in = L.tf_shape(layout(node), shapes[0])
    a = int(np.asarray(const(node, 1, "axis")).reshape(-1)[0])
    a = a % (len(tf_in) + 1)
    if a == 0:
        fail(node, "a new axis before the batch")
    target = tf_in[:a] + [1] + tf_in[a:]
    return _reshaped(node, shapes[0], target, [True] + [False] * (len(target) - 1))


def concat(node, shapes):
    axis_i = len(node.inputs) - 1 if node.type == "ConcatV2" else 0
    if node.weights[axis_i] is None or len(wired(node)) != len(node.inputs) - 1:
        fail(node, "a concatenation of constants with activations")
    rank = len(shapes[0])
    return nn.Concat(axis=L.axis(layout(node), int(np.asarray(node.weights[axis_i]).reshape(-1)[0]), rank),
                     name=module_name(node))


def pad(node, shapes):
    if node.type == "MirrorPad":
        fail(node, "mirror padding")
    p = np.asarray(const(node, 1, "paddings")).reshape(-1, 2)
    if len(p) != len(shapes[0]):
        fail(node, f"paddings for {len(p)} axes on a rank-{len(shapes[0])} activation")
    pairs = L.kindling_order(layout(node), [tuple(int(v) for v in row) for row in p])
    value = scalar(array(node.weights[2])) if node.type == "PadV2" and len(node.inputs) > 2 else 0.0
    return nn.Pad([v for pair in pairs for v in pair], value, name=module_name(node))


def slicing(node, shapes):
    """StridedSlice and Slice of an activation: crops (Pad with negative amounts), a step on H and
    W (a 1x1 max pooling with that stride), and the axes it drops or adds (a reshape)."""
    kshape = shapes[0]
    lay = layout(node)
    tf_in = L.tf_shape(lay, kshape)
    if node.type == "Slice":
        begin = [int(v) for v in np.asarray(const(node, 1, "begin")).reshape(-1)]
        size = [int(v) for v in np.asarray(const(node, 2, "size")).reshape(-1)]
        index = tuple(slice(b, None if s == -1 else b + s) for b, s in zip(begin, size))
    else:
        index = strided_index(node, *(const(node, i, w) for i, w in ((1, "begin"), (2, "end"), (3, "strides"))))
    probe = np.empty(tf_in, np.uint8)[index]  # the output shape, and which axes survive
    per_axis, kept_axes, pos = [], [], 0
    expanded = list(index)
    if Ellipsis in expanded:
        at = expanded.index(Ellipsis)
        named = sum(1 for e in expanded if e is not None and e is not Ellipsis)
        expanded[at:at + 1] = [slice(None)] * (len(tf_in) - named)
    expanded += [slice(None)] * (len(tf_in) - sum(1 for e in expanded if e is not None))
    for e in expanded:
        if e is None:
            continue
        size = tf_in[pos]
        if isinstance(e, slice):
            start, stop, step = e.indices(size)
            n = len(range(start, stop, step))
            if step < 0 or n == 0:
                fail(node, f"a slice with step {step} or nothing left on axis {pos}")
            per_axis.append((start, start + step * (n - 1) + 1, step))
            kept_axes.append(pos)
        else:
            i = int(e) % size
            per_axis.append((i, i + 1, 1))
        pos += 1
    if per_axis[0] != (0, tf_in[0], 1):
        fail(node, "a slice of the batch axis")
    crops = L.kindling_order(lay, [(-start, -(size - stop)) for (start, stop, _), size in zip(per_axis, tf_in)])
    steps = L.kindling_order(lay, [step for _, _, step in per_axis])
    out_tf = list(probe.shape)
    cropped_tf = [len(range(*pa)) for pa in per_axis]
    parts = [kind for kind, needed in (("crop", any(c != (0, 0) for c in crops)), ("step", any(s != 1 for s in steps)),
                                       ("reshape", out_tf != cropped_tf)) if needed]
    if not parts:
        return ALIAS
    if "step" in parts and (len(kshape) != 4 or steps[:2] != [1, 1]):
        fail(node, "a step on an axis other than height and width")
    modules = []
    for kind in parts:
        if kind == "reshape":
            continue  # named by _reshaped below
        name = module_name(node) if kind == parts[-1] else module_name(node, f"/{kind}")
        if kind == "crop":
            modules.append(nn.Pad([v for c in crops for v in c], name=name))
        elif kind == "step":
            modules.append(nn.MaxPool2d(1, tuple(steps[2:]), name=name))
    if "reshape" in parts:
        cropped_k = L.kindling_order(lay, cropped_tf)
        modules += _reshaped(node, cropped_k, out_tf, [True] + [False] * (len(out_tf) - 1))
    return modules
