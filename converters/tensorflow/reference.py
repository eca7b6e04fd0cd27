"""TensorFlow itself as the reference for ``--verify``: it runs the same frozen graph and answers by
tensor name ("node:0"), in kindling's layout (NHWC values transposed to NCHW). (An NHWC map
flattened into a dense layer is held in another order by kindling, which flattens NCHW and
permutes the dense rows instead: the converter names no source for it.) TensorFlow is optional:
only verifying needs it (``pip install 'kindling[tensorflow]'``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import layout as L
from .errors import TensorFlowError
from .parse import tf_name


def import_tensorflow(why: str):
    try:
        import tensorflow as tf
    except ImportError as e:
        raise TensorFlowError(f"{why} needs TensorFlow: pip install 'kindling[tensorflow]' (tensorflow-cpu)") from e
    return tf


class TensorFlowReference:
    def __init__(self, graph_path, *, layout: str = "NHWC"):
        tf = import_tensorflow("--reference tf")
        self.tf, self.layout = tf, layout
        self.name = f"TensorFlow {tf.__version__}"
        graph_def = tf.compat.v1.GraphDef()
        try:
            graph_def.ParseFromString(Path(graph_path).read_bytes())
            self.graph = tf.Graph()
            with self.graph.as_default():
                tf.compat.v1.import_graph_def(graph_def, name="")
        except Exception as e:  # TensorFlow's own parse and import errors
            raise TensorFlowError(f"{graph_path}: TensorFlow cannot load this graph, so it cannot be the reference: "
                                  f"{str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}") from e

    def _tensor(self, name: str):
        try:
            return self.graph.get_tensor_by_name(tf_name(name))
        except (KeyError, ValueError) as e:
            raise TensorFlowError(f"the reference graph has no tensor {tf_name(name)!r}") from e

    def _to_tf(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        return x.transpose(L.TO_TF) if L.permuted(self.layout, x.ndim) else x

    def _to_kindling(self, y: np.ndarray) -> np.ndarray:
        return y.transpose(L.TO_KINDLING) if L.permuted(self.layout, y.ndim) else y

    def run(self, inputs: dict[str, np.ndarray], tensors: list[str]) -> dict[str, np.ndarray | None]:
        fetch = list(dict.fromkeys(tensors))
        feed = {self._tensor(n): self._to_tf(x) for n, x in inputs.items()}
        with self.tf.compat.v1.Session(graph=self.graph) as session:
            values = session.run([self._tensor(t) for t in fetch], feed) if fetch else []
        return {t: self._to_kindling(np.asarray(v)) for t, v in zip(fetch, values)}
