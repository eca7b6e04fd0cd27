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


def add_blob(layer, arr) -> None:
    """Appends ``arr`` to a layer's blobs as float32, its data written as packed bytes (building a
    list of Python floats costs seconds for a VGG-sized net)."""
    arr = np.ascontiguousarray(arr, np.float32)
    raw = arr.tobytes()
    n, size = len(raw), bytearray()
    while True:  # the length as a varint
        size.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            break
    b = layer.blobs.add()
    b.MergeFromString(bytes([5 << 3 | 2]) + bytes(size) + raw)  # field 5, data: packed floats
    return b


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
            b = add_blob(layer, arr)
            if v1:  # legacy 4-D dimensions
                dims = [1] * (4 - arr.ndim) + list(arr.shape)
                b.num, b.channels, b.height, b.width = dims
            else:
                b.shape.dim.extend(arr.shape)
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


# What each weighted Caffe layer stores, read from the kindling module converted from it.
BLOBS = {
    "BatchNorm": lambda m: [m.buffers["running_mean"], m.buffers["running_var"], np.ones(1, np.float32)],
    "BN": lambda m: [m.params["weight"].reshape(1, -1, 1, 1), m.params["bias"].reshape(1, -1, 1, 1)],
    "Bias": lambda m: [m.params["bias"]],
}
WEIGHTED = {"Convolution", "Deconvolution", "ConvolutionDepthwise", "DepthwiseConvolution", "InnerProduct",
            "BatchNorm", "BN", "Scale", "PReLU", "Normalize", "Bias"}


def _seed(module, layer, rng) -> None:
    """Real-shaped seeded weights: He-scaled filters, small biases, statistics and scales near a
    trained net's (SSD's Normalize starts at 20, as its scale_filler says)."""
    p, b = module.params, module.buffers
    if layer.type == "BatchNorm":
        b["running_mean"] = rng.normal(0, 0.1, b["running_mean"].shape).astype(np.float32)
        b["running_var"] = rng.uniform(0.5, 1.5, b["running_var"].shape).astype(np.float32)
        return
    if layer.type == "Normalize":
        p["weight"] = np.full(p["weight"].shape, 20, np.float32)
        return
    if "weight" in p:
        w = p["weight"].shape
        if layer.type in ("Scale", "BN", "PReLU"):
            p["weight"] = rng.uniform(0.5, 1.5, w).astype(np.float32)
        else:
            fan_in = int(np.prod(w[1:])) if layer.type != "Deconvolution" else int(np.prod(w[2:])) * w[0]
            p["weight"] = (rng.standard_normal(w) * np.sqrt(2.0 / max(fan_in, 1))).astype(np.float32)
    if "bias" in p:
        p["bias"] = rng.uniform(-0.1, 0.1, p["bias"].shape).astype(np.float32)


def _calibrate(model, x) -> None:
    """One pass over a real input in execution order, as training leaves a net: each filter
    bank is rescaled so that its output has unit spread, each BatchNorm takes the statistics of
    what it is given. Activations then stay like a trained net's instead of growing or fading."""
    def wrap(m, original):
        def forward(inp, *args, **kwargs):
            if "running_mean" in m.buffers:
                a = np.asarray(inp, np.float64)
                m.buffers["running_mean"] = a.mean(axis=(0, 2, 3)).astype(np.float32)
                m.buffers["running_var"] = a.var(axis=(0, 2, 3)).astype(np.float32)
                return original(inp, *args, **kwargs)
            spread = float(np.std(original(inp, *args, **kwargs))) or 1.0
            for k in ("weight", "bias"):
                if k in m.params:
                    m.params[k] = (m.params[k] / spread).astype(np.float32)
            m._scratch.clear()  # weight layouts built from the old values
            return original(inp, *args, **kwargs)
        return forward

    model.evaluate()
    containers = [m for m in model.modules() if hasattr(m, "fuse")]
    for m in containers:
        m.fuse = False
    for m in model.modules():
        if type(m).__name__ in ("Conv2d", "ConvTranspose2d", "Linear", "BatchNorm2d"):
            m.forward = wrap(m, m.forward)
    try:
        model.forward(x)
    finally:
        for m in model.modules():
            m.__dict__.pop("forward", None)
            m._scratch.clear()
        for m in containers:
            m.__dict__.pop("fuse", None)


def zoo_net(tmp: Path, prototxt, seed: int = 0, narrow: int = 1, keep_widths=(), scale: dict | None = None,
            outputs: list[str] | None = None, calibrate: np.ndarray | None = None):
    """A real zoo prototxt and a caffemodel of seeded, real-shaped weights for it. ``narrow``
    divides every convolution's num_output (but those in ``keep_widths``: class scores) to keep
    big nets quick; ``calibrate`` (an input) rescales the weights as training would leave them
    (see _calibrate); ``scale`` then multiplies named layers' weights (to make a detector's scores
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
    model = caffe.convert(proto_path, outputs=outputs)
    modules = {m.name: m for m in model.modules()}
    weighted = [(la, modules[la.name]) for la in net.layer if la.type in WEIGHTED and la.name in modules]
    rng = np.random.default_rng(seed)
    for layer, module in weighted:
        _seed(module, layer, rng)
    if calibrate is not None:
        _calibrate(model, calibrate)
    for layer, module in weighted:
        blobs = BLOBS.get(layer.type, lambda m: [m.params[k] for k in ("weight", "bias") if k in m.params])(module)
        factor = np.float32((scale or {}).get(layer.name, 1.0))
        for arr in blobs:
            b = add_blob(layer, np.asarray(arr, np.float32) * (factor if layer.type != "BatchNorm" else 1))
            b.shape.dim.extend(arr.shape)
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
