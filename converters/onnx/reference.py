"""onnxruntime as the reference for ONNX conversions (``--verify``): it runs the same file with
every tensor kindling asks about added as an extra graph output, and answers by tensor name
(ONNX is NCHW, as kindling, so every tensor aligns). onnxruntime is optional: only verifying
needs it (``pip install onnxruntime``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from .errors import OnnxError


class OnnxRuntimeReference:
    def __init__(self, path):
        try:
            import onnxruntime
        except ImportError as e:
            raise OnnxError("--reference onnxruntime needs onnxruntime: pip install onnxruntime") from e
        self.ort, self.path = onnxruntime, Path(path)
        self.name = f"onnxruntime {onnxruntime.__version__}"
        # external data was checked (confined to the model's folder) when kindling converted the file
        self.model = onnx.load_model(str(self.path), load_external_data=True)
        self._sessions: dict[tuple, object] = {}

    def _session(self, tensors: tuple):
        if tensors not in self._sessions:
            m = onnx.ModelProto()
            m.CopyFrom(self.model)
            present = {o.name for o in m.graph.output}
            m.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                                  for t in tensors if t not in present)
            options = self.ort.SessionOptions()
            options.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # every tensor its own
            self._sessions = {tensors: self.ort.InferenceSession(m.SerializeToString(), options,
                                                                 providers=["CPUExecutionProvider"])}
        return self._sessions[tensors]

    def run(self, inputs: dict[str, np.ndarray], tensors: list[str]) -> dict[str, np.ndarray | None]:
        session = self._session(tuple(tensors))
        feeds = {i.name: np.ascontiguousarray(inputs[i.name], np.float32) for i in session.get_inputs()}
        fixed = session.get_inputs()[0].shape[0]
        n = next(iter(feeds.values())).shape[0]
        step = fixed if isinstance(fixed, int) and 0 < fixed < n else n  # a file traced with a fixed batch
        chunks = [session.run(list(tensors), {k: v[i:i + step] for k, v in feeds.items()}) for i in range(0, n, step)]
        return {t: np.concatenate([c[j] for c in chunks]) if step < n else chunks[0][j] for j, t in enumerate(tensors)}
