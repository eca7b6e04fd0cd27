"""`kindling info model.kdl`: the native loader (header, module configs, tensor shapes and
checksums) and the shape trace. A hostile file signs what it changes, so a header that is still
framed gets a fresh SHA-256 before loading: mutations reach the parser and the modules, not just
the checksum."""
from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np

from . import LENET, run_command

_PREFIX = 47  # magic 5, major, minor, header length u64, header SHA-256


def resign(data: bytes) -> bytes:
    if len(data) < _PREFIX or data[:5] != b"\x93KNDL":
        return data
    n = int.from_bytes(data[7:15], "little")
    if _PREFIX + n > len(data):
        return data
    return data[:15] + hashlib.sha256(data[_PREFIX:_PREFIX + n]).digest() + data[_PREFIX:]


def structured(rng, data: bytes) -> bytes:
    """A header field changed as a hostile writer would (a module attribute, a tensor shape or
    size, a module type, the metadata), the file re-framed around the new header."""
    from kindling.protos import kindling_pb2 as pb
    if len(data) < _PREFIX or data[:5] != b"\x93KNDL":
        return data
    n = int.from_bytes(data[7:15], "little")
    header = pb.ModelFile()
    try:
        header.ParseFromString(data[_PREFIX:_PREFIX + n])
    except Exception:  # noqa: BLE001 - a seed mutated before: leave it
        return data
    modules = []

    def walk(d):
        modules.append(d)
        for c in d.children:
            walk(c)
    walk(header.graph)
    m = rng.choice(modules)
    choice = rng.randrange(6)
    if choice == 0 and m.attrs:
        a = m.attrs[rng.choice(sorted(m.attrs))]
        rng.choice([lambda: setattr(a, "i", rng.choice(INTS)), lambda: setattr(a, "f", rng.choice(FLOATS)),
                    lambda: setattr(a, "s", rng.choice(["", "x" * 1000, "1e999", "-1"])),
                    lambda: setattr(a, "json", rng.choice(JSONS)), lambda: setattr(a, "none", True),
                    lambda: a.ints.values.extend([rng.choice(INTS)] * rng.randrange(4))])()
    elif choice == 1 and header.tensors:
        t = rng.choice(header.tensors)
        del t.shape[:]
        t.shape.extend(rng.choice(INTS) for _ in range(rng.randrange(5)))
        if rng.random() < 0.5:
            t.nbytes = rng.choice([v for v in INTS if v >= 0])
    elif choice == 2:
        m.type = rng.choice(TYPES)
    elif choice == 3:
        m.name = rng.choice(["", header.graph.name, modules[-1].name, "a:0", "x" * 300])
    elif choice == 4:
        del header.metadata.input_shape[:]
        header.metadata.input_shape.extend(rng.choice(INTS) for _ in range(rng.randrange(6)))
    elif m.children:
        del m.children[rng.randrange(len(m.children))]
    blob = header.SerializeToString()
    start = _PREFIX + n + (-(_PREFIX + n) % 64)
    prefix = data[:7] + len(blob).to_bytes(8, "little") + hashlib.sha256(blob).digest()
    return prefix + blob + b"\0" * (-(_PREFIX + len(blob)) % 64) + data[start:]


INTS = [0, 1, -1, 2, 3, 65536, 2**31 - 1, 2**31, 2**40, 2**62, -2**63]
FLOATS = [0.0, -1.0, 1e999, -1e999, float("nan"), 1e-45, 3.5]
JSONS = ["[" * 100000, "{}", "[]", '{"a": [1, 2]}', "1e999", '"x"', "null", '[[[["deep"]]]]', "{" + '"a":' * 50]
TYPES = ["Linear", "Conv2d", "Graph", "Sequential", "BatchNorm2d", "Concat", "Upsample", "Tile", "MaxUnpool2d",
         "ConvTranspose2d", "Reshape", "Slice", "Crop", "Permute", "Unknown", "Module"]

TOKENS = [b"Linear", b"Conv2d", b"Graph", b"Sequential", b"BatchNorm2d", b"out_features", b"in_channels",
          b"[[[[", b"{\"a\": ", b'"1e999"', b"\xff\xff\xff\xff\x07", b"\x01\x00\x00\x00\x00\x00\x00\x80"]
NESTING = [b"[", b"{\"a\":"]


def _models():
    from kindling.converters import caffe
    from kindling.runtime import nn
    yield caffe.convert(LENET / "lenet.prototxt", LENET / "lenet_iter_10000.caffemodel")
    yield nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, name="conv"), nn.BatchNorm2d(4, name="bn"),
                        nn.ReLU(name="relu"), nn.MaxPool2d(2, 2, name="pool"), nn.Flatten(name="flat"),
                        nn.Linear(64, 5, name="fc"), nn.LogSoftmax(name="out"), name="small")
    g = nn.Graph(inputs=["x"], outputs=["cat"], name="graph")
    g.add(nn.Conv2d(3, 2, 1, name="a"), ["x"])
    g.add(nn.Conv2d(3, 2, 3, padding=1, name="b"), ["x"])
    g.add(nn.Concat(axis=1, name="cat"), ["a", "b"])
    g.add(nn.Scale([4], name="scale"), ["cat"])
    g.set_outputs(["scale"])
    yield g


def seeds() -> list[bytes]:
    import kindling
    out = []
    with tempfile.TemporaryDirectory() as d:
        for i, m in enumerate(_models()):
            meta = {"input_shape": [-1, 1, 28, 28] if i == 0 else [-1, 3, 8, 8], "labels": ["a", "b"],
                    "preprocessing": {"mean": [1.0], "scale": 0.5, "input_size": [8, 8]}}
            out.append(kindling.save(m, Path(d) / f"m{i}.kdl", metadata=meta).read_bytes())
    return out


def target(data: bytes, tmp) -> None:
    path = tmp / "model.kdl"
    path.write_bytes(resign(data))
    with np.errstate(all="ignore"):
        run_command(["info", str(path)])
