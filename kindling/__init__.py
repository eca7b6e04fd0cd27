"""kindling: bring a model trained elsewhere, fine-tune it on Spark, validate it and serve it."""
__version__ = "0.1.0"


def save(model, path, metadata=None):
    """Writes ``model`` to ``path`` in kindling's native format (atomically)."""
    from kindling.runtime.format import save as _save
    return _save(model, path, metadata=metadata)


def load(path):
    """Reads a model written by :func:`save`; checksums are verified before anything is returned."""
    from kindling.runtime.format import load as _load
    return _load(path)


__all__ = ["save", "load", "__version__"]
