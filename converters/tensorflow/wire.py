"""Reads a frozen GraphDef node by node from the protobuf wire format, leaving large tensor
contents in the file.

A frozen graph is nearly all constants' ``tensor_content``. Parsing it whole with protobuf holds
the file's bytes and the parsed copy at once, and the modules then make a third copy in their own
layout. Here each NodeDef is parsed on its own; in a large one (a weight), the path
node.attr -> AttrValue.tensor -> TensorProto.tensor_content is walked field by field through the
file, and the content's offset and length are kept instead of its bytes (tensors.StoredTensor reads
them when a translator asks, straight into the module's layout).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

from kindling.protos import tensorflow_pb2 as tfpb

VARINT, I64, LEN, I32 = 0, 1, 2, 5
GRAPH_NODE, GRAPH_VERSIONS = 1, 4
NODE_ATTR = 5
ENTRY_KEY, ENTRY_VALUE = 1, 2
ATTR_TENSOR = 8
TENSOR_CONTENT = 4

# A message at most this long is read and parsed whole by protobuf.
SMALL = 64 << 10


class WireError(ValueError):
    pass


@dataclass
class RawGraph:
    nodes: list[tfpb.NodeDef] = field(default_factory=list)
    # (node index, attr key) -> (offset, nbytes) of a tensor_content left in the file
    stored: dict[tuple[int, str], tuple[int, int]] = field(default_factory=dict)
    producer: int = 0


class _Reader:
    def __init__(self, f: BinaryIO, size: int):
        self.f, self.size = f, size

    def read(self, pos: int, n: int) -> bytes:
        self.f.seek(pos)
        data = self.f.read(n)
        if len(data) != n:
            raise WireError(f"truncated: {n} bytes at offset {pos} run past the end of the file ({self.size} bytes)")
        return data

    def varint(self, pos: int) -> tuple[int, int]:
        head = self.read(pos, min(10, self.size - pos)) if pos < self.size else b""
        result = shift = 0
        for i, b in enumerate(head):
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result, pos + i + 1
            shift += 7
        raise WireError(f"truncated or malformed varint at offset {pos}")

    def fields(self, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
        """(field number, wire type, field start, payload start, payload end) for each field."""
        pos = start
        while pos < end:
            key, p = self.varint(pos)
            number, wire = key >> 3, key & 7
            if wire == VARINT:
                _, q = self.varint(p)
            elif wire == I64:
                q = p + 8
            elif wire == I32:
                q = p + 4
            elif wire == LEN:
                n, p = self.varint(p)
                q = p + n
            else:
                raise WireError(f"wire type {wire} for field {number} at offset {pos}: not a TensorFlow GraphDef")
            if q > end:
                raise WireError(f"truncated: field {number} at offset {pos} runs past its message (ends at {end}, "
                                f"file size {self.size})")
            yield number, wire, pos, p, q
            pos = q


def read_graph(path: Path) -> RawGraph:
    path = Path(path)
    with open(path, "rb") as f:
        r = _Reader(f, path.stat().st_size)
        graph = RawGraph()
        for number, wire, start, p, q in r.fields(0, r.size):
            if number == GRAPH_NODE and wire == LEN:
                graph.nodes.append(_node(r, p, q, len(graph.nodes), graph.stored))
            elif number == GRAPH_VERSIONS and wire == LEN and q - p <= SMALL:
                graph.producer = _parse(tfpb.VersionDef, r.read(p, q - p), f"versions at offset {p}").producer
        return graph


def _parse(cls, data: bytes, where: str):
    try:
        return cls.FromString(data)
    except Exception as e:  # protobuf's DecodeError, or a message it cannot make sense of
        raise WireError(f"{where}: not a valid {cls.DESCRIPTOR.name}: {e}") from e


def _node(r: _Reader, p: int, q: int, index: int, stored: dict) -> tfpb.NodeDef:
    if q - p <= SMALL:
        return _parse(tfpb.NodeDef, r.read(p, q - p), f"node {index} at offset {p}")
    node = tfpb.NodeDef()
    for number, wire, start, fp, fq in r.fields(p, q):
        if number == NODE_ATTR and wire == LEN and fq - fp > SMALL:
            key, value = _attr_entry(r, fp, fq, (index, stored))
            node.attr[key].CopyFrom(value)
        else:
            node.MergeFromString(r.read(start, fq - start))
    return node


def _attr_entry(r: _Reader, p: int, q: int, where) -> tuple[str, tfpb.AttrValue]:
    key, value = "", tfpb.AttrValue()
    content = None
    for number, wire, start, fp, fq in r.fields(p, q):
        if number == ENTRY_KEY and wire == LEN:
            key = r.read(fp, fq - fp).decode("utf-8", "replace")
        elif number == ENTRY_VALUE and wire == LEN:
            content = _attr_value(r, fp, fq, value)
    if content is not None:
        index, stored = where
        stored[(index, key)] = content
    return key, value


def _attr_value(r: _Reader, p: int, q: int, value: tfpb.AttrValue):
    content = None
    for number, wire, start, fp, fq in r.fields(p, q):
        if number == ATTR_TENSOR and wire == LEN and fq - fp > SMALL:
            for n2, w2, s2, tp, tq in r.fields(fp, fq):
                if n2 == TENSOR_CONTENT and w2 == LEN:
                    content = (tp, tq - tp)
                else:
                    value.tensor.MergeFromString(r.read(s2, tq - s2))
            value.tensor.SetInParent()
        else:
            value.MergeFromString(r.read(start, fq - start))
    return content
