"""kindling convert tf: a frozen GraphDef (.pb), read without TensorFlow; a SavedModel folder or a
Keras .keras/.h5 file is frozen through TensorFlow first (the optional tensorflow extra)."""
from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

HELP = "a TensorFlow frozen graph (.pb), or a SavedModel folder / Keras file (frozen through TensorFlow)"


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(p):
    p.add_argument("--graph", required=True,
                   help="frozen GraphDef (.pb); a SavedModel folder or a .keras/.h5 file needs tensorflow installed")
    p.add_argument("--inputs", type=_names, metavar="TENSOR[,TENSOR]",
                   help="input tensors, e.g. x:0 (default: the graph's placeholders); the graph is cut there")
    p.add_argument("--outputs", type=_names, metavar="TENSOR[,TENSOR]",
                   help="output tensors, e.g. logits:0 (default: what no node reads)")
    p.add_argument("--signature", help="SavedModel signature to freeze (default: serving_default)")


# --reference NAME -> the reference for this framework's files
REFERENCES = {"tf": lambda args: _tensorflow(args)}
DEFAULT_REFERENCE = "tf"


def _tensorflow(args):
    from kindling.converters.tensorflow.reference import TensorFlowReference
    built = args._tensorflow
    return TensorFlowReference(built.path, layout=built.layout)


def _frozen(graph: Path, signature: str | None) -> Path:
    """A SavedModel or Keras file frozen into a .pb that lives as long as this command."""
    from kindling.converters.tensorflow.freeze import freeze
    tmp = Path(tempfile.mkdtemp(prefix="kindling-freeze-"))
    atexit.register(shutil.rmtree, tmp, True)
    return freeze(graph, tmp / f"{graph.stem or 'saved_model'}.frozen.pb", signature)


def convert(args, *, inputs: dict, labels, preprocessing: dict | None):
    from kindling.converters import tensorflow as tfc
    from kindling.converters.tensorflow.freeze import needs_freezing
    graph = Path(args.graph)
    source = _frozen(graph, args.signature) if needs_freezing(graph) else graph
    built = tfc.convert_graph(source, inputs=args.inputs, outputs=args.outputs, input_shapes=inputs)
    args._tensorflow = built  # for --reference tf
    return tfc.finish(built, labels=labels, preprocessing=preprocessing, frozen_from=graph if source != graph else None)
