from ..graph import ConversionError


class OnnxError(ConversionError):
    """An ONNX file that cannot be converted (or a model that cannot be exported); the message
    names the file and, where it applies, the node."""
