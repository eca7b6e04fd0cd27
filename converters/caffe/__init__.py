"""Caffe models into kindling: ``convert`` a prototxt + caffemodel, or ``load_weights`` of a Caffe
model into a model of your own by layer name (the transfer-learning path).

    from kindling.converters import caffe
    model = caffe.convert("deploy.prototxt", "bvlc_alexnet.caffemodel")
    report = caffe.load_weights(my_model, "deploy.prototxt", "bvlc_alexnet.caffemodel")

Both formats are read: the current ``layer { type: "Convolution" }`` one and the legacy V1
``layers { type: CONVOLUTION }`` one (a fork's own fields and V1 types with its caffe.proto,
``proto=``), inputs declared by an Input layer or by ``input:`` with
``input_dim:`` / ``input_shape``, and train_val files (layers filtered by phase as Caffe does; data,
loss and accuracy layers dropped with a note). Custom layer types are translated by functions you
pass in (``translators={"MyType": fn}``, see translators.py for the signature); a built-in type
cannot be replaced, and every unsupported layer is listed in one error.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from kindling.protos import caffe_pb2
from kindling.runtime import memory, nn
from kindling.runtime.errors import TooLarge
from kindling.runtime.shapes import free_dims

from ..weights import load_by_name
from . import wire
from .build import build, check_supported, dropped, translator_table
from .errors import CaffeError
from .inputs import PROBE_SIZES, TRAINING_DATA, placeholder_hint, resolve
from .mean import read_mean
from .parse import CaffeLayer, cut_at, layers_of, read_prototxt, unique_names
from .schema import DEFAULT, with_fork
from .translators import batch_norm_factor, set_mults

__all__ = ["convert", "load_weights", "CaffeError", "CaffeLayer", "read_blobs", "read_mean"]

# Types whose layers carry weights in the caffemodel.
WEIGHTED = {"Convolution", "ConvolutionDepthwise", "DepthwiseConvolution", "Deconvolution", "InnerProduct",
            "BatchNorm", "PReLU", "Normalize", "Bias"}


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


# Files that users pass as a caffemodel but are not one, told apart by their first bytes.
_NOT_A_CAFFEMODEL = [
    (lambda head: head.startswith(b"\x89HDF\r\n\x1a\n"),
     "is an HDF5 snapshot (Caffe's snapshot_format: HDF5); kindling reads binary .caffemodel files: "
     "load it in Caffe and save it with net.save(...), or snapshot with the default BINARYPROTO format"),
    (lambda head: _PROTOTXT_START.match(head) is not None,
     "looks like protobuf text (a prototxt), not a binary caffemodel: are --prototxt and --caffemodel swapped?"),
]
# How prototxts begin (a binary caffemodel begins with a field key byte and a length instead).
_PROTOTXT_START = re.compile(rb"\s*(#|(name|layers?|input(_dim|_shape)?|force_backward|state|debug_info)\s*[:{])")


def read_blobs(caffemodel, hasher=None) -> dict[str, list[np.ndarray]]:
    """Every layer's blobs by layer name, read one layer at a time (see wire.py)."""
    path = Path(caffemodel)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(64)
            for matches, what in _NOT_A_CAFFEMODEL:
                if matches(head):
                    raise CaffeError(f"{path}: {what}")
            f.seek(0)
            memory.check(size, "reading the caffemodel")  # its blobs are held as read
            return {layer.name: layer.blobs for layer in wire.read_layers(f, size, hasher) if layer.blobs}
    except OSError as e:
        raise CaffeError(f"{path}: cannot read: {e.strerror or e}") from e
    except TooLarge as e:
        raise CaffeError(f"{path}: {e}") from e
    except wire.WireError as e:
        raise CaffeError(f"{path}: truncated or corrupt caffemodel: {e}") from e


def _weighted(layer: CaffeLayer) -> bool:
    return layer.type in WEIGHTED or (layer.type == "Scale" and len(layer.bottoms) == 1)


def _attach(layers: list[CaffeLayer], blobs: dict, caffemodel) -> None:
    missing = []
    for layer in layers:
        layer.blobs = blobs.get(layer.name, [])
        if not layer.blobs and _weighted(layer):
            missing.append(f"{layer.name} ({layer.type})")
    if missing:
        raise CaffeError(f"{caffemodel}: no weights for layers {', '.join(missing)}: the caffemodel does not "
                         f"match the prototxt (or its layers were renamed)")


def _data_preprocessing(layers, notes: list[str]) -> dict | None:
    """Mean and scale from a train_val data layer's transform_param, as defaults for metadata."""
    for layer in layers:
        if (layer.type in TRAINING_DATA or not layer.bottoms) and layer.param.HasField("transform_param"):
            t = layer.param.transform_param
            out = {}
            if t.mean_value:
                out["mean"] = [float(v) for v in t.mean_value]
            elif t.mean_file:
                notes.append(f"{layer.name} ({layer.type}) subtracts the mean image {t.mean_file}: give it with "
                             f"--mean-file (read_mean) to record its per-channel means")
            if t.scale != 1:
                out["scale"] = float(t.scale)
            if t.crop_size:
                out["input_size"] = [int(t.crop_size)] * 2
            return out or None
    return None


def convert(prototxt, caffemodel=None, *, inputs: dict | None = None, translators: dict | None = None,
            softmax_loss_as_softmax: bool = False, labels: list[str] | None = None,
            preprocessing: dict | None = None, phase: str = "test", stages=(),
            outputs: list[str] | None = None, proto=None) -> nn.Module:
    """A kindling model computing the Caffe net. Module names are the Caffe layer names. Notes
    about what was dropped or ignored are in ``model.notes``; provenance in ``model.metadata``;
    which layer each module output computes in ``model.sources`` (for converters.verify).
    ``stages`` selects layers by their include/exclude stage rules, as Caffe's NetState does
    (DIGITS nets: ``stages=["deploy"]``). ``outputs`` cuts the net at these blobs: only the layers
    they need are converted, and they are the model's outputs. ``proto``, a fork's caffe.proto,
    is merged into the schema the prototxt is read with (its fields and V1 layer types by name)."""
    prototxt = Path(prototxt)
    net, notes = read_prototxt(prototxt, with_fork(proto) if proto else DEFAULT)
    layers = layers_of(net, prototxt, caffe_pb2.TEST if phase == "test" else caffe_pb2.TRAIN, stages)
    if outputs:
        layers = cut_at(layers, list(outputs), prototxt)
    table = translator_table(translators)
    check_supported(layers, table, prototxt)
    layers = unique_names(layers, prototxt, _weighted, lambda la: not dropped(la, table), notes)
    digests = {prototxt: _sha256(prototxt)}
    if caffemodel is not None:
        hasher = hashlib.sha256()
        _attach(layers, read_blobs(caffemodel, hasher), caffemodel)
        digests[Path(caffemodel)] = hasher.hexdigest()
    resolved = resolve(net, layers, inputs, prototxt, table, notes)
    shapes = resolved.shapes
    for side in PROBE_SIZES if resolved.probe else [None]:
        if side:
            shapes[resolved.probe][2:] = [side, side]
        try:
            built = build(layers, shapes, table, prototxt, notes, softmax_loss_as_softmax, name=net.name or "net",
                          outputs=list(outputs) if outputs else None)
            break
        except CaffeError as e:
            if side and side != PROBE_SIZES[-1]:
                continue  # the net does not fit this common size: try the next
            where = "" if str(e).startswith(str(prototxt)) else f"{prototxt}: "
            tried = (f"; tried the input sizes {', '.join(map(str, PROBE_SIZES))}: give one with --input" if side
                     else placeholder_hint(shapes, inputs))
            raise CaffeError(f"{where}{e}{tried}") from e
    meta = {"source": {"framework": "caffe", "files": [{"path": p.name, "sha256": d, "size": p.stat().st_size}
                                                        for p, d in digests.items()]},
            "input_names": list(shapes), "output_names": built.outputs}
    if len(shapes) == 1:
        declared = list(shapes.values())[0]
        meta["input_shape"] = free_dims(built.model, declared)
        if min(meta["input_shape"][1:], default=1) < 0:
            meta["sample_shape"] = [1, *declared[1:]]
    if labels:
        meta["labels"] = list(labels)
    pre = {**(_data_preprocessing(layers, [] if (preprocessing or {}).get("mean") else notes) or {}),
           **(preprocessing or {})}
    if pre:
        meta["preprocessing"] = pre
    model = built.model
    model.metadata = meta
    model.notes = notes
    # what each module computes, by Caffe layer name (OpenCV's dnn module answers by layer name)
    model.sources = {ref: node.name for ref, (node, i) in built.producers.items() if i == 0}
    return model


# ---- weights into a model of your own -----------------------------------------------------------------
def _fit(blob: np.ndarray, shape, what: str) -> np.ndarray:
    """The blob as ``shape`` when they agree up to leading 1s (legacy 4-D blobs), else an error."""
    squeezed = list(blob.shape)
    while len(squeezed) > len(shape) and squeezed[0] == 1:
        squeezed.pop(0)
    if tuple(squeezed) != tuple(shape):
        raise ValueError(f"{what}: the caffemodel has shape {list(blob.shape)}, the model expects {list(shape)}")
    return np.ascontiguousarray(blob.reshape(shape), dtype=np.float32)


def _assign(module: nn.Module, layer: CaffeLayer, where: str) -> None:
    blobs = layer.blobs
    if type(module).__name__ == "BatchNorm2d":
        if len(blobs) != 3:
            raise ValueError(f"{where}: BatchNorm needs 3 blobs, the caffemodel has {len(blobs)}")
        for name, b in zip(("running_mean", "running_var"), blobs[:2]):
            module.buffers[name] = _fit(b, module.buffers[name].shape, f"{where} {name}") * batch_norm_factor(blobs)
        return
    names = [n for n in ("weight", "bias") if n in module.params] or list(module.params)
    if len(blobs) > len(names):
        raise ValueError(f"{where}: the caffemodel has {len(blobs)} blobs, the module has {len(names)} parameters")
    transpose = layer.type == "InnerProduct" and layer.param.inner_product_param.transpose
    for name, b in zip(names, blobs):
        target = module.params[name].shape
        if name == "weight" and transpose:
            module.params[name] = np.ascontiguousarray(_fit(b, target[::-1], f"{where} weight").T)
        else:
            module.params[name] = _fit(b, target, f"{where} {name}")
    set_mults(module, layer, names)


def load_weights(model: nn.Module, prototxt, caffemodel, match_all: bool = False,
                 rename: dict[str, str] | None = None, proto=None) -> dict:
    """Copies the Caffe layers' weights into the modules of ``model`` with the same names
    (``rename`` maps Caffe layer names to yours where they differ).

    Returns ``{"loaded": [...], "skipped": [...], "unused": [...]}``: modules that got weights,
    modules with parameters that kept their initialisation (a renamed last layer starts fresh),
    and Caffe layers with weights that no module matched. With ``match_all=True`` a skipped module
    is an error. A same-named module whose shape differs is always an error naming both shapes."""
    prototxt = Path(prototxt)
    net, _ = read_prototxt(prototxt, with_fork(proto) if proto else DEFAULT)
    layers = {la.name: la for la in layers_of(net, prototxt)}

    def layer_with(name: str, blobs: list) -> CaffeLayer:
        layer = layers.get(name) or CaffeLayer(name, "", [], [], caffe_pb2.LayerParameter())
        layer.blobs = blobs
        return layer

    blobs = read_blobs(caffemodel)
    return load_by_name(model, {name: layer_with(name, b) for name, b in blobs.items()}, _assign,
                        source=caffemodel, match_all=match_all, rename=rename, error=CaffeError)
