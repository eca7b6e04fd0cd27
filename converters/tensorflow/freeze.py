"""SavedModel folders and Keras files (.keras, .h5) into a frozen GraphDef, through TensorFlow
(convert_variables_to_constants_v2), so they convert the same way as a .pb. Only this needs
TensorFlow (the optional ``tensorflow`` extra)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import TensorFlowError
from .reference import import_tensorflow

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


def needs_freezing(path) -> bool:
    path = Path(path)
    return path.is_dir() or path.suffix.lower() in KERAS_SUFFIXES


def _signature(tf, path: Path, signature: str | None):
    if path.is_dir():
        if not (path / "saved_model.pb").exists():
            raise TensorFlowError(f"{path}: not a SavedModel folder (no saved_model.pb)")
        loaded = tf.saved_model.load(str(path))
        signatures = dict(loaded.signatures)
        if not signatures:
            raise TensorFlowError(f"{path}: the SavedModel has no signatures to freeze")
        name = signature or ("serving_default" if "serving_default" in signatures else next(iter(signatures)))
        if name not in signatures:
            raise TensorFlowError(f"{path}: no signature {name!r}; it has {', '.join(signatures)}")
        return signatures[name], loaded
    import keras
    model = keras.models.load_model(str(path), compile=False)
    specs = [tf.TensorSpec([None, *t.shape[1:]], t.dtype, name=t.name.split(":")[0].replace("/", "_"))
             for t in model.inputs]
    fn = tf.function(lambda *xs: model(list(xs) if len(xs) > 1 else xs[0], training=False))
    return fn.get_concrete_function(*specs), model


def freeze(path, out, signature: str | None = None) -> Path:
    """Writes the frozen GraphDef of the SavedModel folder or Keras file at ``path`` to ``out``
    (atomically) and returns ``out``."""
    tf = import_tensorflow(f"{path}: converting a SavedModel or Keras file")
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    path, out = Path(path), Path(out)
    try:
        fn, keep = _signature(tf, path, signature)
        frozen = convert_variables_to_constants_v2(fn)
    except TensorFlowError:
        raise
    except Exception as e:  # TensorFlow's and Keras's own errors
        raise TensorFlowError(f"{path}: TensorFlow cannot load or freeze it: {type(e).__name__}: {e}") from e
    data = frozen.graph.as_graph_def().SerializeToString()
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise
    return out
