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


VALUES = {"int": [0, 1, -1, 2, 3, 7, 65536, 2**31 - 1, -2**31], "uint": [0, 1, 2, 3, 7, 65536, 2**31, 2**32 - 1],
          "int64": [0, 1, -1, 2, 2**31, 2**40, 2**62, -2**63], "float": [0.0, -1.0, 1e-45, 1e38, float("inf"),
                                                                          float("nan"), 0.5, 2.0]}
_KIND = {1: "float", 2: "float", 3: "int64", 4: "uint", 5: "int", 13: "uint", 17: "int", 18: "int64"}


def _settable(msg, depth=0):
    """(message, field) pairs of scalar fields within the message, set or not."""
    out = []
    for f in msg.DESCRIPTOR.fields:
        if f.message_type is not None:
            if depth < 3 and not f.is_repeated and (msg.HasField(f.name) or f.name.endswith("_param")):
                out += _settable(getattr(msg, f.name), depth + 1) if msg.HasField(f.name) else [(msg, f)]
        else:
            out.append((msg, f))
    return out


def structured(rng, data: bytes) -> bytes:
    """A net that parses, with one field of one layer changed as a careless or hostile hand
    would: a number at the edge of its range, a type swapped, a bottom or top lost or renamed, a
    layer repeated."""
    from google.protobuf import text_format
    net = caffe_pb2.NetParameter()
    try:
        text_format.Parse(data.decode("utf-8", "replace"), net, allow_unknown_field=True)
    except Exception:  # noqa: BLE001 - not text any more: leave it
        return data
    layers = net.layer or net.layers
    if not layers:
        return data
    layer = rng.choice(layers)
    choice = rng.randrange(6)
    if choice <= 2:
        msg, f = rng.choice(_settable(layer))
        if f.message_type is not None:
            getattr(msg, f.name).SetInParent()
        elif f.type == f.TYPE_BOOL:
            _set(msg, f, rng.random() < 0.5)
        elif f.type == f.TYPE_ENUM:
            _set(msg, f, rng.choice([v.number for v in f.enum_type.values]))
        elif f.type == f.TYPE_STRING:
            _set(msg, f, rng.choice(["", "data", layer.name, "x" * 100]))
        elif f.type in _KIND:
            _set(msg, f, rng.choice(VALUES[_KIND[f.type]]))
    elif choice == 3 and net.layer:
        layer.type = rng.choice(sorted(TYPES))
    elif choice == 4:
        field = rng.choice([layer.bottom, layer.top])
        if field and rng.random() < 0.5:
            del field[rng.randrange(len(field))]
        else:
            field.append(rng.choice(["data", layer.name, "missing", *(la.name for la in layers)]))
    else:
        layers.add().CopyFrom(layer)
    return text_format.MessageToString(net).encode()


def _set(msg, f, value):
    try:
        if f.is_repeated:
            getattr(msg, f.name).append(value)
        else:
            setattr(msg, f.name, value)
    except (ValueError, TypeError):  # out of the field's range: the text format could not say it either
        pass


TYPES = {"Convolution", "Deconvolution", "InnerProduct", "Pooling", "ReLU", "PReLU", "LRN", "Concat", "Eltwise",
         "BatchNorm", "BN", "Scale", "Bias", "Flatten", "Reshape", "Slice", "Crop", "Permute", "Normalize",
         "ShuffleChannel", "Axpy", "Upsample", "Exp", "Log", "Threshold", "MVN", "Reduction", "Tile", "ArgMax",
         "Split", "Softmax", "Power", "Dropout", "ELU", "Sigmoid", "TanH", "AbsVal", "BNLL", "ConvolutionDepthwise",
         "Input", "DummyData", "Python", "Data", "SoftmaxWithLoss"}
