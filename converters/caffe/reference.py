"""OpenCV's dnn module as the independent reference for Caffe conversions (``--verify``): it reads
the same prototxt and caffemodel with its own importer and answers by layer name. Fusion is turned
off so that a convolution's output is its own, not the ReLU's after it. OpenCV is optional: only
verifying needs it (``pip install 'opencv-python-headless<5'``; OpenCV 5 dropped the Caffe importer)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import CaffeError


class OpenCVReference:
    def __init__(self, prototxt, caffemodel):
        try:
            import cv2
        except ImportError as e:
            raise CaffeError("--reference opencv needs OpenCV: pip install 'opencv-python-headless<5'") from e
        if caffemodel is None:
            raise CaffeError(f"{prototxt}: verifying against OpenCV needs the caffemodel")
        self.name = f"OpenCV {cv2.__version__}"
        try:
            self.net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
        except cv2.error as e:
            raise CaffeError(f"{Path(prototxt).name}: OpenCV cannot read this net, so it cannot be the reference: "
                             f"{str(e).strip().splitlines()[-1]}") from e
        self.net.enableFusion(False)
        self.layers = set(self.net.getLayerNames())

    def run(self, inputs: dict[str, np.ndarray], tensors: list[str]) -> dict[str, np.ndarray | None]:
        for name, x in inputs.items():
            self.net.setInput(np.ascontiguousarray(x, np.float32), name)
        known = [t for t in tensors if t in self.layers]  # OpenCV merges some layers away: not compared
        outs = self.net.forward(known) if known else []
        return {**{t: None for t in tensors}, **dict(zip(known, outs))}
