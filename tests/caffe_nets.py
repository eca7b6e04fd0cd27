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


# Real zoo prototxts (tests/fixtures/caffe/zoo/README.md says where each comes from).
ZOO = Path(__file__).resolve().parent / "fixtures" / "caffe" / "zoo"
CAT = FIXTURES / "images" / "cat.jpg"


def _blob_shapes(layer, module) -> list[tuple]:
    """The blobs Caffe stores for a layer, shaped as the structure-only conversion built it."""
    p, b = module.params, module.buffers
    if layer.type == "BatchNorm":
        c = b["running_mean"].shape
        return [c, c, (1,)]
    if layer.type == "BN":
        c = (1, p["weight"].shape[0], 1, 1)
        return [c, c]
    if layer.type == "Bias":
        return [p["bias"].shape]
    return [p[k].shape for k in ("weight", "bias") if k in p]


def _values(rng, layer, shapes) -> list[np.ndarray]:
    """Seeded weights of real shapes and scales: He-scaled filters (activations stay near 1 through
    a deep net), small biases, statistics and scales near those of a trained net."""
    if layer.type == "BatchNorm":
        c = shapes[0]
        return [rng.normal(0, 0.1, c), rng.uniform(0.5, 1.5, c), np.ones(1)]
    if layer.type in ("Scale", "BN") and len(shapes) == 2:
        return [rng.uniform(0.5, 1.5, shapes[0]), rng.normal(0, 0.1, shapes[1])]
    if layer.type in ("Convolution", "Deconvolution", "ConvolutionDepthwise", "DepthwiseConvolution",
                      "InnerProduct"):
        w = shapes[0]
        fan_in = int(np.prod(w[1:])) if layer.type != "Deconvolution" else int(np.prod(w[2:])) * w[0]
        out = [rng.standard_normal(w) * np.sqrt(2.0 / max(fan_in, 1))]
        return out + [rng.uniform(-0.1, 0.1, s) for s in shapes[1:]]
    if layer.type == "Normalize":
        return [np.full(shapes[0], 20.0)]  # SSD's scale_filler
    return [rng.uniform(0.5, 1.5, s) for s in shapes]


def zoo_net(tmp: Path, prototxt, seed: int = 0, narrow: int = 1, keep_widths=(), scale: dict | None = None,
            outputs: list[str] | None = None):
    """A real zoo prototxt and a caffemodel of seeded, real-shaped weights for it. ``narrow``
    divides every convolution's num_output (but those in ``keep_widths``: class scores) to keep
    big nets quick; ``scale`` multiplies named layers' weights (to make a detector's scores
    peaky enough to detect something); ``outputs`` gives weights only to the layers those blobs
    need. Returns (prototxt path, caffemodel path)."""
    from kindling.converters import caffe
    net = caffe_pb2.NetParameter()
    text_format.Parse(Path(prototxt).read_text(), net, allow_unknown_field=True)
    if narrow > 1:
        for layer in net.layer:
            if layer.type in ("Convolution", "Deconvolution") and layer.name not in keep_widths:
                p = layer.convolution_param
                p.num_output = max(1, p.num_output // narrow)
                if p.group > 1:
                    p.group = max(1, p.group // narrow)
    proto_path = tmp / Path(prototxt).name
    proto_path.write_text(text_format.MessageToString(net))
    structure = caffe.convert(proto_path, outputs=outputs)
    rng = np.random.default_rng(seed)
    for layer in net.layer:
        try:
            module = structure.find(layer.name)
        except KeyError:
            continue
        shapes = _blob_shapes(layer, module)
        if not shapes or layer.type in ("ReLU", "Pooling", "Softmax", "Concat", "Eltwise", "Flatten", "Permute",
                                        "Reshape", "PriorBox", "DetectionOutput", "Crop", "Dropout"):
            continue
        for arr in _values(rng, layer, shapes):
            arr = np.asarray(arr, np.float32) * np.float32((scale or {}).get(layer.name, 1.0))
            b = layer.blobs.add()
            b.shape.dim.extend(arr.shape)
            b.data.extend(arr.ravel().tolist())
    model_path = tmp / (Path(prototxt).stem + ".caffemodel")
    model_path.write_bytes(net.SerializeToString())
    return proto_path, model_path


def photo(size: tuple[int, int] | None = None, mean=(104.0, 117.0, 123.0)) -> np.ndarray:
    """The real cat photo as a (1, 3, H, W) BGR float32 batch less the ImageNet mean, at its own
    size or resized to (H, W)."""
    from PIL import Image
    img = Image.open(CAT).convert("RGB")
    if size:
        img = img.resize((size[1], size[0]), Image.BILINEAR)
    a = np.asarray(img, np.float32)[:, :, ::-1].transpose(2, 0, 1)
    return np.ascontiguousarray((a - np.asarray(mean, np.float32).reshape(3, 1, 1))[None])
