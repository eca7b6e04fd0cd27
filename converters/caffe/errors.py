from ..graph import ConversionError


class CaffeError(ConversionError):
    """A Caffe file that cannot be converted; the message names the file and, where it applies,
    the layer."""
