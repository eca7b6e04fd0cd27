from ..graph import ConversionError


class TensorFlowError(ConversionError):
    """A TensorFlow graph that cannot be converted; the message names the file and, where it
    applies, the node."""
