"""kindling's error types. Every one is a ValueError whose message is one line that names the file
and, where there is one, the layer or field: the CLI prints it as it is, with no traceback.

Formats add their own below these (runtime.format.FormatError for .kdl files,
converters.graph.ConversionError and its CaffeError for foreign models)."""
from __future__ import annotations


class KindlingError(ValueError):
    """Bad input, said so that the user can act on it."""


class DataError(KindlingError):
    """A data file (labels, an image, an array) that cannot be read; the message starts with its path."""


class TooLarge(KindlingError):
    """Something that would need more memory than this process can have."""
