"""The real Caffe-trained LeNet (../shared/fixtures) against OpenCV's dnn module on real digits."""
import hashlib

import numpy as np
import pytest
from PIL import Image

import kindling
from caffe_nets import LENET, opencv_forward
from kindling.converters import caffe

PROTOTXT, WEIGHTS = LENET / "lenet.prototxt", LENET / "lenet_iter_10000.caffemodel"


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    d = load_digits()
    # each 8x8 digit (0..16) stretched over 28x28 and scaled to [0, 1], as the fixture's README says
    x = np.stack([np.asarray(Image.fromarray((im * 255 / 16).astype(np.uint8)).resize((28, 28), Image.BILINEAR),
                             np.float32) / 255 for im in d.images])[:, None]
    return x, d.target


def test_real_lenet_matches_opencv_on_all_digits(digits, tmp_path):
    x, labels = digits
    model = caffe.convert(PROTOTXT, WEIGHTS)
    path = kindling.save(model, tmp_path / "lenet.kdl")
    model = kindling.load(path).evaluate()
    ours = np.concatenate([np.array(model.forward(x[i:i + 256])) for i in range(0, len(x), 256)])
    theirs = opencv_forward(PROTOTXT, WEIGHTS, {"data": x}, ["prob"])[0]
    assert np.abs(ours - theirs).max() <= 1e-4
    assert np.array_equal(ours.argmax(1), theirs.argmax(1))
    accuracy = float((ours.argmax(1) == labels).mean())
    print(f"\nreal Caffe LeNet on {len(x)} scikit-learn digits (stretched to 28x28): top-1 {accuracy:.4f}")
    assert accuracy == float((theirs.argmax(1) == labels).mean())
    assert accuracy > 0.5, "the trained LeNet should recognise most digits"


def test_real_lenet_structure_and_metadata():
    model = caffe.convert(PROTOTXT, WEIGHTS, labels=[str(i) for i in range(10)])
    assert [m.name for m in model.children()] == ["conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2", "prob"]
    assert model.metadata["input_shape"] == [-1, 1, 28, 28]
    assert model.metadata["source"]["framework"] == "caffe"
    files = {f["path"]: f for f in model.metadata["source"]["files"]}
    assert set(files) == {PROTOTXT.name, WEIGHTS.name}
    for path in (PROTOTXT, WEIGHTS):  # checksums as sha256sum gives them (the caffemodel's hashed while read)
        assert files[path.name]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert files[path.name]["size"] == path.stat().st_size
    assert model.find("conv1").params["weight"].shape == (20, 1, 5, 5)
