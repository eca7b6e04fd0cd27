"""ONNX models into kindling (``convert``), kindling models out to ONNX (``export``), and kindling
as an ONNX backend (``backend``, for onnx's conformance suite).

    from kindling.converters import onnx
    model = onnx.convert("resnet18.onnx")                 # any batch size; or inputs={"x": [1, 3, 224, 224]}
    onnx.export(model, "resnet18_again.onnx", opset=17)

Opsets 7 and later; the ops of CNN classifiers and what exporters write around them (see
build.TABLE); constant subgraphs (Shape -> Gather -> Concat chains, Constant, ConstantOfShape,
Cast) fold while the graph is assembled. Initializers may keep their data in external files beside
the model (never elsewhere). Every unsupported op is listed in one error, with its opset, before
any weight is read; your own ops come in as ``translators={"MyOp": fn}`` (see translators.py for
the signature). Needs the ``onnx`` package (``pip install 'kindling[onnx]'``).
"""
from __future__ import annotations

from pathlib import Path

from .build import convert_model
from .errors import OnnxError
from .read import read_model

__all__ = ["convert", "export", "OnnxError"]


def convert(path, *, inputs: dict | None = None, labels: list[str] | None = None, preprocessing: dict | None = None,
            translators: dict | None = None, exact: bool = False):
    """A kindling model computing the ONNX model at ``path``. Module names are the node names;
    ``model.sources`` maps each module to the ONNX tensor it computes. ``inputs`` gives shapes
    for inputs the file leaves free (or overrides them). Unless ``exact``, the batch size stays
    free whatever the file declares."""
    path = Path(path)
    model = read_model(path)
    return convert_model(model, path, path.parent, inputs=inputs, labels=labels, preprocessing=preprocessing,
                         translators=translators, exact=exact)


def export(model, path, *, opset: int = 17, dynamic_batch: bool = False, input_shape=None):
    """Writes ``model`` to ``path`` as an ONNX model (atomically); see export.py."""
    from .exporter import export as _export
    return _export(model, path, opset=opset, dynamic_batch=dynamic_batch, input_shape=input_shape)
