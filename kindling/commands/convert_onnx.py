"""kindling convert onnx: an ONNX model (opset 7 and later; initializers may live in external
data files beside it)."""
from __future__ import annotations

HELP = "an ONNX model (.onnx, opset 7 and later)"


def add_arguments(p):
    p.add_argument("model", help="the .onnx file (external data files, if any, beside it)")
    p.add_argument("--exact", action="store_true",
                   help="keep every input shape as the file declares it, batch included (by default the batch "
                        "size stays free)")


def _onnxruntime(model):
    from kindling.converters.onnx.reference import OnnxRuntimeReference
    return OnnxRuntimeReference(model)


# --verify's references for ONNX models (besides stored outputs, --reference FILE.npz)
REFERENCES = {"onnxruntime": lambda args: _onnxruntime(args.model)}
DEFAULT_REFERENCE = "onnxruntime"


def onnx_module():
    """kindling.converters.onnx, or a clear error when the onnx package is not installed."""
    try:
        from kindling.converters import onnx
    except ModuleNotFoundError as e:
        if e.name != "onnx":
            raise
        raise ValueError("ONNX support needs the onnx package: pip install 'kindling[onnx]'") from e
    return onnx


def convert(args, *, inputs: dict, labels, preprocessing: dict | None):
    return onnx_module().convert(args.model, inputs=inputs, labels=labels, preprocessing=preprocessing,
                                 exact=args.exact)
