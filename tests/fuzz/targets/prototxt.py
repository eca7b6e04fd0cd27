"""`kindling convert caffe --prototxt net.prototxt -o out/model.kdl`: the text parser, phase and
stage rules, every translator, the shape probe, the save and the summary."""
from __future__ import annotations

from kindling.protos import caffe_pb2

from . import LENET, run_command
from .nets import prototxts

NESTING = [b"foo { ", b"layer { ", b"convolution_param { "]


def _field_names() -> list[bytes]:
    names = set()
    for msg in ("LayerParameter", "ConvolutionParameter", "PoolingParameter", "InnerProductParameter",
                "NetParameter", "BlobShape", "ReshapeParameter", "SliceParameter", "UpsampleParameter"):
        names.update(f.name for f in caffe_pb2.DESCRIPTOR.message_types_by_name[msg].fields)
    return sorted(n.encode() + b": " for n in names)


TOKENS = _field_names() + [b'bottom: "data" ', b"top: ", b"layer { ", b"} ", b"{ ", b'"', b"#", b"\n",
                           b'type: "Python" ', b"include { phase: TRAIN } ", b"input_dim: ", b"dim: "]


def seeds() -> list[bytes]:
    return [(LENET / "lenet.prototxt").read_bytes()] + [p.encode() for p in prototxts()]


def target(data: bytes, tmp) -> None:
    proto = tmp / "net.prototxt"
    proto.write_bytes(data)
    run_command(["convert", "caffe", "--prototxt", str(proto), "-o", str(tmp / "out" / "model.kdl")])
