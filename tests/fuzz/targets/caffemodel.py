"""`kindling convert caffe --prototxt P --caffemodel net.caffemodel`: the wire-format reader, blob
shapes against the net, weights into modules. The first byte picks the net (LeNet, a V1 net or a
generated one); the rest is the caffemodel."""
from __future__ import annotations

from . import LENET, run_command, selected
from .nets import weighted

_NETS = None


def nets() -> list[tuple[bytes, bytes]]:
    global _NETS
    if _NETS is None:
        real = ((LENET / "lenet.prototxt").read_bytes(), (LENET / "lenet_iter_10000.caffemodel").read_bytes())
        _NETS = [real] + [(p.encode(), m) for p, m in weighted()]
    return _NETS


TOKENS = [b"\x0a\x05conv1", b"\x3a\x08", b"\x3a\x00", b"\x2d\x00\x00\x80\x3f", b"\x42\x04", b"\xa2\x06"]


def seeds() -> list[bytes]:
    return [bytes([i]) + model for i, (_, model) in enumerate(nets())]


def target(data: bytes, tmp) -> None:
    (proto_text, _), model = selected(data, nets())
    proto, weights = tmp / "net.prototxt", tmp / "net.caffemodel"
    proto.write_bytes(proto_text)
    weights.write_bytes(model)
    run_command(["convert", "caffe", "--prototxt", str(proto), "--caffemodel", str(weights),
                 "-o", str(tmp / "out" / "model.kdl")])


def structured(rng, data: bytes) -> bytes:
    """The caffemodel parsed and one blob changed: its shape (edge-of-range, negative, legacy
    dims), its data cut or doubled, or a layer renamed."""
    from kindling.protos import caffe_pb2
    net = caffe_pb2.NetParameter()
    try:
        net.ParseFromString(data[1:])
    except Exception:  # noqa: BLE001 - mutated beyond parsing: leave it
        return data
    layers = [la for la in (net.layer or net.layers) if la.blobs]
    if not layers:
        return data
    layer = rng.choice(layers)
    blob = rng.choice(layer.blobs)
    choice = rng.randrange(5)
    if choice == 0:
        del blob.shape.dim[:]
        blob.shape.dim.extend(rng.choice([0, 1, -1, 3, 2**31, 2**32, 2**62]) for _ in range(rng.randrange(5)))
    elif choice == 1:
        blob.ClearField("shape")
        blob.num, blob.channels, blob.height, blob.width = (rng.choice([0, 1, 3, 2**31 - 1, -1]) for _ in range(4))
    elif choice == 2:
        values = list(blob.data)
        del blob.data[:]
        blob.data.extend(values[:rng.randrange(len(values) + 1)] if rng.random() < 0.5 else values * 2)
    elif choice == 3:
        blob.double_data.extend(float(v) for v in blob.data)
        del blob.data[:]
    else:
        layer.name = rng.choice(["", "data", layers[0].name, "x" * 200])
    return data[:1] + net.SerializeToString()
