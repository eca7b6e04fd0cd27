"""SavedModel folders and Keras .keras/.h5 files: frozen through TensorFlow, then converted as a
.pb; outputs equal Keras's own within 1e-5."""
import numpy as np
import pytest

import kindling
from kindling.cli import main

# Keras's own tensors warn about numpy 2's copy keyword; nothing of kindling's
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def keras_model():
    import keras
    from keras import layers
    keras.utils.set_random_seed(3)
    inp = keras.Input((9, 8, 3), name="image")
    x = layers.Conv2D(6, 3, strides=2, padding="same")(inp)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, layers.Dense(4, activation="softmax")(x))
    for w in model.weights:
        if "moving" in w.path or "gamma" in w.path or "beta" in w.path or "bias" in w.path:
            w.assign(np.random.default_rng(len(w.path)).uniform(0.5, 1.5, w.shape).astype(np.float32))
    return model


def _saved(model, tmp_path, kind: str):
    if kind == "savedmodel":
        path = tmp_path / "exported"
        model.export(str(path), verbose=False)
        return path
    path = tmp_path / f"model.{kind}"
    model.save(str(path))
    return path


@pytest.mark.parametrize("kind", ["keras", "h5", "savedmodel"])
def test_keras_files_and_savedmodels_convert_through_tensorflow(tmp_path, keras_model, kind, capsys):
    path = _saved(keras_model, tmp_path, kind)
    out = tmp_path / "m.kdl"
    code = main(["convert", "tf", "--graph", str(path), "-o", str(out), "--verify"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "vs TensorFlow" in printed.out
    model = kindling.load(out).evaluate()
    assert model.metadata["source"]["files"][0]["path"] == f"{path.name} (frozen)"
    x = np.random.default_rng(4).standard_normal((3, 9, 8, 3)).astype(np.float32)
    want = keras_model.predict(x, verbose=0)
    got = model.forward(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    assert np.abs(got - want).max() <= 1e-5


def test_a_folder_that_is_no_savedmodel_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["convert", "tf", "--graph", str(tmp_path / "empty"), "-o", str(tmp_path / "m.kdl")])
    assert code == 1 and "not a SavedModel folder (no saved_model.pb)" in capsys.readouterr().err
