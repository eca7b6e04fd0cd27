"""TensorFlow graphs into kindling, with no TensorFlow at run time: a frozen GraphDef (.pb) is
read through kindling's own copy of TensorFlow's schema (protos/tensorflow.proto).

    from kindling.converters import tensorflow as tf
    model = tf.convert("frozen.pb")                                  # placeholders in, sinks out
    model = tf.convert("frozen.pb", inputs=["x"], outputs=["logits"])

Image classifiers as TensorFlow 1.x, tf.keras and Keras 3 write them are folded and fused rather
than rejected (see translators.TABLE, fold.FOLD, patterns.PATTERNS). An NHWC graph becomes an NCHW
model: its metadata says so (``extra.source_layout``), and the first dense layer after a flatten
has its rows permuted to match kindling's flattening. Every unsupported op is listed in one error
before any weight is read. SavedModel directories and Keras files are frozen through TensorFlow
first (``freeze``, which needs the optional ``tensorflow`` extra).
"""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kindling.runtime import nn

from .build import Built, build
from .errors import TensorFlowError
from .freeze import freeze
from .parse import read, select
from .reference import TensorFlowReference

__all__ = ["convert", "convert_graph", "finish", "freeze", "TensorFlowError", "TensorFlowReference", "read", "select"]



def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    buf = memoryview(bytearray(1 << 20))  # one small buffer, reused: the hash adds no memory to speak of
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            h.update(buf[:n])
    return h.hexdigest()


def convert_graph(path, *, inputs: list[str] | None = None, outputs: list[str] | None = None,
                  input_shapes: dict | None = None) -> Built:
    """The conversion with everything it found out (see build.Built); ``convert`` returns its model."""
    path = Path(path)
    if path.is_dir() or path.suffix in (".keras", ".h5", ".hdf5"):
        raise TensorFlowError(f"{path}: a SavedModel or Keras file is frozen through TensorFlow first: "
                              f"kindling.converters.tensorflow.freeze (or kindling convert tf --graph, which does it)")
    # The file's SHA-256 runs alongside the conversion (hashlib lets go of the GIL).
    with ThreadPoolExecutor(1, thread_name_prefix="kindling-sha256") as hashing:
        digest = hashing.submit(_sha256, path) if path.is_file() else None
        graph = read(path)
        sel = select(graph, inputs, outputs)
        built = build(graph, sel, input_shapes, name=path.stem or "net")
        built.sha256 = digest.result()
    built.output_names = sel.output_names
    built.path = path
    return built


def convert(path, *, inputs: list[str] | None = None, outputs: list[str] | None = None,
            input_shapes: dict | None = None, labels: list[str] | None = None,
            preprocessing: dict | None = None) -> nn.Module:
    """A kindling model computing the frozen graph at ``path`` from ``inputs`` to ``outputs``
    (tensor names such as "x" or "x:0"; default: its placeholders and its sinks). ``input_shapes``
    gives an input's kindling (NCHW) shape where the graph leaves sizes open. Module names are
    the node names; ``model.sources`` maps each to the TensorFlow tensor it computes."""
    built = convert_graph(path, inputs=inputs, outputs=outputs, input_shapes=input_shapes)
    return finish(built, labels=labels, preprocessing=preprocessing)


def finish(built: Built, *, labels=None, preprocessing=None, frozen_from=None) -> nn.Module:
    """The model with its metadata (``frozen_from``: the SavedModel or Keras file the graph came from)."""
    model = built.model
    name = f"{Path(frozen_from).name} (frozen)" if frozen_from else built.path.name
    meta = {"source": {"framework": "tensorflow",
                       "files": [{"path": name, "sha256": built.sha256, "size": built.path.stat().st_size}]},
            "input_names": list(built.input_shapes), "output_names": list(built.output_names),
            "extra": {"source_layout": built.layout, "layout": "NCHW" if built.layout == "NHWC" else built.layout}}
    if len(built.input_shapes) == 1:
        meta["input_shape"] = [-1, *list(built.input_shapes.values())[0][1:]]
    if labels:
        meta["labels"] = list(labels)
    if preprocessing:
        meta["preprocessing"] = dict(preprocessing)
    model.metadata = meta
    model.sources = dict(built.sources)
    model.notes = []
    return model
