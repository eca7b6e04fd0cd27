"""Small Caffe nets written in the tests: prototxt text plus a caffemodel made with the same
schema (kindling.protos.caffe_pb2) and random weights, and OpenCV's independent reading of them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from google.protobuf import text_format

from kindling.protos import caffe_pb2

# The project's real fixtures live in ../shared beside the repository (as in CI).
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
LENET = FIXTURES / "caffe" / "lenet_mnist"


def inputs_header(shapes: dict) -> str:
    lines = []
    for name, shape in shapes.items():
        lines.append(f'input: "{name}"')
        lines.append("input_shape { " + " ".join(f"dim: {d}" for d in shape) + " }")
    return "\n".join(lines) + "\n"


def write_net(tmp: Path, prototxt: str, blobs: dict, seed: int = 0, name: str = "net", v1: bool = False):
    """Writes name.prototxt and name.caffemodel; ``blobs`` maps layer names to blob shapes (or
    to arrays). Returns the two paths."""
    rng = np.random.default_rng(seed)
    proto_path, model_path = tmp / f"{name}.prototxt", tmp / f"{name}.caffemodel"
    proto_path.write_text(prototxt)
    net = caffe_pb2.NetParameter()
    text_format.Parse(prototxt, net, allow_unknown_field=True)
    layers = net.layers if v1 else net.layer
    for layer in layers:
        for spec in blobs.get(layer.name, []):
            arr = np.asarray(spec, np.float32) if not isinstance(spec, tuple) else \
                rng.uniform(-1, 1, spec).astype(np.float32)
            b = layer.blobs.add()
            if v1:  # legacy 4-D dimensions
                dims = [1] * (4 - arr.ndim) + list(arr.shape)
                b.num, b.channels, b.height, b.width = dims
            else:
                b.shape.dim.extend(arr.shape)
            b.data.extend(arr.ravel().tolist())
    model_path.write_bytes(net.SerializeToString())
    return proto_path, model_path


def opencv_forward(proto_path, model_path, inputs: dict, outputs: list[str]):
    import cv2
    net = cv2.dnn.readNetFromCaffe(str(proto_path), str(model_path))
    for name, x in inputs.items():
        net.setInput(x, name)
    got = net.forward(outputs)
    return [np.asarray(g) for g in got]


# DIGITS writes one file for train, val and deploy, choosing layers by stage; its deploy input
# (`input: "data"`) is added by DIGITS when it exports, so the file itself declares none.
STAGED = """name: "digits"
layer { name: "train-data" type: "Data" top: "scaled" top: "label" include { stage: "train" } }
layer { name: "scale" type: "Power" bottom: "data" top: "scaled" power_param { scale: 0.5 } include { stage: "deploy" } }
layer { name: "ip" type: "InnerProduct" bottom: "scaled" top: "ip" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" exclude { stage: "deploy" } }
layer { name: "softmax" type: "Softmax" bottom: "ip" top: "softmax" include { stage: "deploy" } }
"""
