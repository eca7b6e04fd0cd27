"""Pattern fusion: op groups that TensorFlow and Keras write for one layer become one node, so the
converted model has one module where the source had one layer (and its weights in one place).

- SpaceToBatchND -> Conv2D -> BatchToSpaceND: a dilated convolution (how TensorFlow runs atrous
  convolution), with the paddings and crops folded into the convolution's padding.
- BiasAdd (or Add of a per-channel constant, Keras 3's form) into the Conv2D, depthwise
  convolution or MatMul before it.
- x * sigmoid(x) and x * sigmoid(beta * x): Swish (Keras's swish, EfficientNet).
- relu6(x + 3) / 6 (or * 1/6): HardSigmoid; x * that, or x * relu6(x + 3) / 6: HardSwish (MobileNetV3).
- x * c1 + c2 (or - c2) with constant c1, c2: one per-channel affine (the batch norm Keras 3 and
  tf.nn.batch_normalization spell out as Rsqrt/Mul/Sub/AddV2 on constants, folded already).
- A Reshape that only feeds dense layers is marked, so that a flatten of an NHWC map becomes a
  flatten of kindling's NCHW map with the dense layer's rows permuted (the 7x5 trap).

A fused node keeps the name of its main op (the convolution, the Mul) and takes over the tensor
name of the group's last op, so the rest of the graph is wired as before. An intermediate tensor
that is a graph output is never fused away.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from .fold import Constants
from .parse import TFNode

CONVS = {"Conv2D", "DepthwiseConv2dNative"}
# Ops converted only as part of a pattern (here: around a convolution).
PATTERN_ONLY = {"SpaceToBatchND", "BatchToSpaceND"}


class _Graph:
    def __init__(self, nodes: list[TFNode], consts: Constants, protected: set[str]):
        self.nodes, self.consts, self.protected = nodes, consts, protected
        self.refresh()

    def refresh(self):
        self.producer = {o: n for n in self.nodes for o in n.outputs}
        self.readers: dict[str, list[TFNode]] = defaultdict(list)
        for n in self.nodes:
            for i in n.inputs:
                self.readers[i].append(n)

    def only_reader(self, tensor: str, types) -> TFNode | None:
        """The one node reading ``tensor``, if it is of one of ``types`` and the tensor is no graph output."""
        readers = self.readers.get(tensor, [])
        if len(readers) == 1 and readers[0].type in types and tensor not in self.protected:
            return readers[0]
        return None

    def made_by(self, tensor: str, types, single_use: bool = True) -> TFNode | None:
        n = self.producer.get(tensor)
        if n is None or n.type not in types or tensor != n.outputs[0]:
            return None
        if single_use and (len(self.readers.get(tensor, [])) != 1 or tensor in self.protected):
            return None
        return n

    def const(self, tensor: str):
        return self.consts.value(tensor) if tensor in self.consts and tensor not in self.consts.batch2 else None

    def scalar(self, tensor: str) -> float | None:
        v = self.const(tensor)
        if v is None or np.size(v) != 1:
            return None
        return float(np.asarray(v).reshape(-1)[0])

    def replace(self, group: list[TFNode], fused: TFNode) -> None:
        gone = {id(n) for n in group}
        at = min(i for i, n in enumerate(self.nodes) if id(n) in gone)
        self.nodes[:] = [n for n in self.nodes if id(n) not in gone]
        self.nodes.insert(min(at, len(self.nodes)), fused)
        self.refresh()


def _split_operands(g: _Graph, node: TFNode):
    """(activation input, constant input name) of a binary node with exactly one constant."""
    a, b = node.inputs[:2]
    if (a in g.consts) == (b in g.consts):
        return None
    return (b, a) if a in g.consts else (a, b)


def _fused(main: TFNode, last: TFNode, type_=None, inputs=None, **attrs) -> TFNode:
    return TFNode(main.name, type_ or main.type, list(inputs if inputs is not None else main.inputs), list(last.outputs),
                  {**main.attrs, **attrs})


def dilated_convolutions(g: _Graph) -> None:
    for s2b in [n for n in g.nodes if n.type == "SpaceToBatchND"]:
        conv = g.only_reader(s2b.outputs[0], CONVS)
        b2s = conv and g.only_reader(conv.outputs[0], {"BatchToSpaceND"})
        if not b2s or conv.inputs[0] != s2b.outputs[0] or any(i not in g.consts for i in (*s2b.inputs[1:3], *b2s.inputs[1:3])):
            continue
        block, crops_block = g.const(s2b.inputs[1]), g.const(b2s.inputs[1])
        pads, crops = g.const(s2b.inputs[2]), g.const(b2s.inputs[2])
        if block is None or crops_block is None or not np.array_equal(block, crops_block) or np.size(block) != 2 \
                or np.size(pads) != 4 or np.size(crops) != 4:
            continue  # not the 2-D pattern: the nodes stay, and are converted or refused by name
        g.replace([s2b, conv, b2s], _fused(conv, b2s, inputs=[s2b.inputs[0], conv.inputs[1]],
                                           _block=[int(v) for v in np.asarray(block).reshape(-1)],
                                           _pads=np.asarray(pads).reshape(2, 2).tolist(),
                                           _crops=np.asarray(crops).reshape(2, 2).tolist()))


def _out_channels(g: _Graph, node: TFNode) -> int | None:
    w = g.const(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None or np.ndim(w) < 2:
        return None
    shape = np.shape(w)
    if node.type == "Conv2D":
        return int(shape[3])
    if node.type == "DepthwiseConv2dNative":
        return int(shape[2] * shape[3])
    return int(shape[0] if node.attrs.get("transpose_b") else shape[1])


def biases(g: _Graph) -> None:
    for node in [n for n in g.nodes if n.type in CONVS | {"MatMul"} and "_bias" not in n.attrs]:
        add = g.only_reader(node.outputs[0], {"BiasAdd", "Add", "AddV2"})
        split = add and _split_operands(g, add)
        if not split or split[0] != node.outputs[0] or (add.type == "BiasAdd" and add.inputs[0] != split[0]):
            continue
        channels, b = _out_channels(g, node), g.const(split[1])
        shape = np.shape(b)
        if b is None or channels is None or np.size(b) != channels or any(d != 1 for d in shape[:-1]):
            continue
        fmt = node.attrs.get("data_format", "NHWC")
        if node.type != "MatMul" and (add.attrs.get("data_format", "NHWC") if add.type == "BiasAdd" else "NHWC") != fmt:
            continue  # an Add broadcasts over the last axis: a bias only for NHWC
        g.replace([node, add], _fused(node, add, _bias=split[1]))


def swishes(g: _Graph) -> None:
    for mul in [n for n in g.nodes if n.type == "Mul"]:
        for x, s in (mul.inputs[:2], mul.inputs[1::-1]):
            sig = g.made_by(s, {"Sigmoid"})
            if sig is None:
                continue
            beta, group = 1.0, [sig, mul]
            if sig.inputs[0] != x:
                inner = g.made_by(sig.inputs[0], {"Mul"})
                split = inner and _split_operands(g, inner)
                if not split or split[0] != x or g.scalar(split[1]) is None:
                    continue
                beta, group = g.scalar(split[1]), [inner, sig, mul]
            g.replace(group, _fused(mul, mul, "_Swish", [x], beta=beta))
            break


def _is(value: float | None, target: float) -> bool:
    return value is not None and abs(value - target) <= 1e-6 * abs(target)


def _relu6_of_x_plus_3(g: _Graph, tensor: str):
    """(x, [add, relu6]) when ``tensor`` is relu6(x + 3), each used once."""
    relu6 = g.made_by(tensor, {"Relu6"})
    add = relu6 and g.made_by(relu6.inputs[0], {"Add", "AddV2"})
    split = add and _split_operands(g, add)
    if not split or not _is(g.scalar(split[1]), 3.0):
        return None
    return split[0], [add, relu6]


def _divided_by_6(g: _Graph, node: TFNode):
    """The other operand when ``node`` is t / 6 or t * (1/6)."""
    split = _split_operands(g, node) if node.type in ("RealDiv", "Mul") else None
    if not split or (node.type == "RealDiv" and node.inputs[1] != split[1]):
        return None
    c = g.scalar(split[1])
    return split[0] if (_is(c, 6.0) if node.type == "RealDiv" else _is(c, 1 / 6)) else None


def hard_activations(g: _Graph) -> None:
    for div in [n for n in g.nodes if n.type in ("RealDiv", "Mul")]:
        if not any(n is div for n in g.nodes):
            continue
        t = _divided_by_6(g, div)
        found = t and _relu6_of_x_plus_3(g, t)
        if found:  # relu6(x + 3) / 6
            x, group = found
            g.replace([*group, div], _fused(div, div, "_HardSigmoid", [x]))
            continue
        prod = t and g.made_by(t, {"Mul"})  # (x * relu6(x + 3)) / 6
        if prod:
            for x, r in (prod.inputs[:2], prod.inputs[1::-1]):
                found = _relu6_of_x_plus_3(g, r)
                if found and found[0] == x:
                    g.replace([*found[1], prod, div], _fused(div, div, "_HardSwish", [x]))
                    break
    for mul in [n for n in g.nodes if n.type == "Mul"]:
        for x, h in (mul.inputs[:2], mul.inputs[1::-1]):
            hs = g.made_by(h, {"_HardSigmoid"})
            if hs is not None and hs.inputs[0] == x:
                g.replace([hs, mul], _fused(mul, mul, "_HardSwish", [x]))
                break


def affines(g: _Graph) -> None:
    for mul in [n for n in g.nodes if n.type == "Mul"]:
        split = _split_operands(g, mul)
        add = split and g.only_reader(mul.outputs[0], {"Add", "AddV2", "Sub"})
        shift = add and _split_operands(g, add)
        if not shift or shift[0] != mul.outputs[0] or (add.type == "Sub" and add.inputs[1] != shift[1]):
            continue
        if g.const(split[1]) is None or g.const(shift[1]) is None:
            continue
        g.replace([mul, add], _fused(mul, add, "_Affine", [split[0]], _scale=split[1], _shift=shift[1],
                                     _negate_shift=add.type == "Sub"))


def flattens_into_dense(g: _Graph) -> None:
    for node in g.nodes:
        if node.type != "Reshape":
            continue
        readers = g.readers.get(node.outputs[0], [])
        if readers and node.outputs[0] not in g.protected and all(
                r.type == "MatMul" and r.inputs[0] == node.outputs[0] and r.inputs[1] in g.consts
                and not r.attrs.get("transpose_a") for r in readers):
            node.attrs["_feeds_dense"] = True


PATTERNS = [dilated_convolutions, biases, swishes, hard_activations, affines, flattens_into_dense]


def fuse(nodes: list[TFNode], consts: Constants, protected: set[str]) -> list[TFNode]:
    g = _Graph(list(nodes), consts, protected)
    for pattern in PATTERNS:
        pattern(g)
    return g.nodes
