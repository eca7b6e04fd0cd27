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
