"""`kindling convert onnx model.onnx`: the ModelProto read through the onnx package, opset forms,
constant folding, translators, external data confined to the model's folder. Seeds: models
kindling exports itself (the real LeNet, a residual block, a MobileNet-style block)."""
from __future__ import annotations

import tempfile
from pathlib import Path

from . import LENET, run_command

TOKENS = [b"Conv", b"Gemm", b"Reshape", b"Relu", b"MaxPool", b"kernel_shape", b"pads", b"strides", b"ai.onnx",
          b"external_data", b"location", b"../", b"opset_import"]

_SEEDS: list[bytes] = []


def seeds() -> list[bytes]:
    if not _SEEDS:
        from kindling.converters import caffe
        from kindling.converters.onnx import export
        from kindling.runtime import nn
        with tempfile.TemporaryDirectory() as d:
            lenet = caffe.convert(LENET / "lenet.prototxt", LENET / "lenet_iter_10000.caffemodel")
            g = nn.Graph(inputs=["x"], outputs=["sum"], name="block")
            g.add(nn.Conv2d(3, 3, 3, padding=1, name="c"), ["x"])
            g.add(nn.BatchNorm2d(3, name="bn"), ["c"])
            g.add(nn.ReLU(name="r"), ["bn"])
            g.add(nn.Add(name="sum"), ["x", "r"])
            g.metadata = {"input_shape": [-1, 3, 8, 8], "input_names": ["x"]}
            for i, model in enumerate([lenet, g]):
                path = Path(d) / f"m{i}.onnx"
                export(model, path)
                _SEEDS.append(path.read_bytes())
    return list(_SEEDS)


def target(data: bytes, tmp) -> None:
    path = tmp / "model.onnx"
    path.write_bytes(data)
    run_command(["convert", "onnx", str(path), "-o", str(tmp / "out" / "model.kdl")])
