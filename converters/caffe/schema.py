"""The schema prototxts are read with: kindling's own caffe.proto (BVLC's, with the fork fields
kindling converts), or that merged with a fork's caffe.proto (``proto=``, --proto) so that the
fork's parameter fields and V1 layer types parse by name. Prototxts are text: field numbers do not
matter to them, so a fork's field whose number kindling's schema already uses is renumbered, and a
field both define keeps kindling's definition (noted when the fork's differs). The fork's .proto is
compiled by protoc from grpcio-tools (``pip install 'kindling[caffe-fork]'``), in a process of its
own.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from kindling.protos import caffe_pb2

from .errors import CaffeError

RESERVED = range(19000, 20000)  # protobuf's own


@dataclass(frozen=True)
class Schema:
    net: type                                  # the NetParameter message class
    source: str = "kindling's caffe.proto"
    notes: list[str] = field(default_factory=list)


DEFAULT = Schema(caffe_pb2.NetParameter)


def _free_number(used: set[int]) -> int:
    n = max(used, default=0) + 1
    while n in used or n in RESERVED:
        n += 1
    return n


def _merge_enum(ours: descriptor_pb2.EnumDescriptorProto, theirs: descriptor_pb2.EnumDescriptorProto) -> None:
    names, numbers = {v.name for v in ours.value}, {v.number for v in ours.value}
    for v in theirs.value:
        if v.name not in names:
            added = ours.value.add()
            added.CopyFrom(v)
            if v.number in numbers:
                added.number = _free_number(numbers)
            names.add(v.name)
            numbers.add(added.number)


def _merge_message(ours: descriptor_pb2.DescriptorProto, theirs: descriptor_pb2.DescriptorProto, scope: str,
                   notes: list[str]) -> None:
    fields = {f.name: f for f in ours.field}
    numbers = {f.number for f in ours.field}
    for r in ours.extension_range:
        numbers.update(range(r.start, r.end))
    for f in theirs.field:
        mine = fields.get(f.name)
        if mine is not None:
            # (one value or repeated reads alike in text: only the type matters)
            if (mine.type, mine.type_name) != (f.type, f.type_name):
                notes.append(f"{scope}.{f.name}: kept kindling's definition ({mine.type_name or mine.type}); the "
                             f"fork's is {f.type_name or f.type}")
            continue
        added = ours.field.add()
        added.CopyFrom(f)
        added.ClearField("oneof_index")
        if f.number in numbers:
            added.number = _free_number(numbers)
        numbers.add(added.number)
    _merge_types(ours.nested_type, ours.enum_type, theirs.nested_type, theirs.enum_type, scope, notes)


def _merge_types(messages, enums, their_messages, their_enums, scope: str, notes: list[str]) -> None:
    by_name = {m.name: m for m in messages}
    for m in their_messages:
        if m.name in by_name:
            _merge_message(by_name[m.name], m, f"{scope}.{m.name}", notes)
        elif not m.options.map_entry:
            messages.add().CopyFrom(m)
    enums_by_name = {e.name: e for e in enums}
    for e in their_enums:
        if e.name in enums_by_name:
            _merge_enum(enums_by_name[e.name], e)
        else:
            enums.add().CopyFrom(e)


def _compile(proto: Path) -> descriptor_pb2.FileDescriptorProto:
    """The fork's .proto as a FileDescriptorProto, by protoc (grpcio-tools) in its own process."""
    try:
        import grpc_tools  # noqa: F401  (only to say what is missing)
    except ImportError as e:
        raise CaffeError(f"{proto}: reading a fork's .proto needs protoc, from grpcio-tools: "
                         f"pip install 'kindling[caffe-fork]'") from e
    with tempfile.TemporaryDirectory(prefix="kindling-proto-") as tmp:
        out = Path(tmp) / "fork.pb"
        r = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{proto.parent.resolve()}",
                            f"--descriptor_set_out={out}", str(proto.resolve())], capture_output=True, text=True)
        if r.returncode != 0:
            raise CaffeError(f"{proto}: protoc cannot read it: {r.stderr.strip() or r.stdout.strip()}")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    fork = files[-1]
    if not any(m.name == "NetParameter" for m in fork.message_type):
        raise CaffeError(f"{proto}: defines no NetParameter: not a Caffe schema")
    return fork


def _repackaged(fork: descriptor_pb2.FileDescriptorProto) -> None:
    """Type names of another package (some forks rename it) as the caffe package's."""
    old = f".{fork.package}." if fork.package else "."

    def walk(messages):
        for m in messages:
            for f in m.field:
                if f.type_name.startswith(old):
                    f.type_name = ".caffe." + f.type_name[len(old):]
            walk(m.nested_type)
    if fork.package != "caffe":
        walk(fork.message_type)


def _renamed_type(fork: descriptor_pb2.FileDescriptorProto, old: str, new: str) -> None:
    """Message ``old`` (and every reference to it and to its nested types) renamed ``new``."""
    def walk(messages):
        for m in messages:
            for f in m.field:
                if f.type_name == f".caffe.{old}" or f.type_name.startswith(f".caffe.{old}."):
                    f.type_name = f".caffe.{new}" + f.type_name[len(f".caffe.{old}"):]
            walk(m.nested_type)
    for m in fork.message_type:
        if m.name == old:
            m.name = new
    walk(fork.message_type)


def _v1_era(fork: descriptor_pb2.FileDescriptorProto) -> None:
    """Forks older than Caffe's 2015 layer format (DeepLab v1) call the V1 layer message
    LayerParameter, with the layer types an enum in it: it is kindling's V1LayerParameter."""
    net = next(m for m in fork.message_type if m.name == "NetParameter")
    layers = next((f for f in net.field if f.name == "layers"), None)
    if layers is not None and layers.type_name == ".caffe.LayerParameter":
        _renamed_type(fork, "LayerParameter", "V1LayerParameter")


def with_fork(proto) -> Schema:
    """kindling's schema with a fork's caffe.proto merged in."""
    proto = Path(proto)
    if not proto.is_file():
        raise CaffeError(f"{proto}: no such .proto file")
    fork = _compile(proto)
    _repackaged(fork)
    _v1_era(fork)
    merged = descriptor_pb2.FileDescriptorProto.FromString(caffe_pb2.DESCRIPTOR.serialized_pb)
    merged.name = "kindling_caffe_with_fork.proto"
    notes: list[str] = []
    _merge_types(merged.message_type, merged.enum_type, fork.message_type, fork.enum_type, "caffe", notes)
    pool = descriptor_pool.DescriptorPool()
    try:
        pool.Add(merged)
        net = message_factory.GetMessageClass(pool.FindMessageTypeByName("caffe.NetParameter"))
    except (TypeError, KeyError, ValueError) as e:
        raise CaffeError(f"{proto}: cannot be merged with kindling's Caffe schema: {e}") from e
    return Schema(net, f"kindling's caffe.proto with {proto.name}", notes)


def layer_class(net) -> type:
    """The LayerParameter class of the schema ``net`` was read with."""
    return message_factory.GetMessageClass(net.DESCRIPTOR.fields_by_name["layer"].message_type)
