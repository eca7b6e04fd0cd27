from ..graph import ConversionError


class TorchError(ConversionError):
    """A PyTorch (.pt/.pth) or safetensors file that cannot be read; the message names the file and,
    where it applies, the tensor key."""
