"""Loading Caffe weights by layer name into a model of your own: the transfer-learning path."""
import numpy as np
import pytest

from caffe_nets import LENET
from helpers import assert_close
from kindling.converters import caffe
from kindling.runtime import nn

PROTOTXT, WEIGHTS = LENET / "lenet.prototxt", LENET / "lenet_iter_10000.caffemodel"


def lenet(last="ip2", classes=10):
    return nn.Sequential(
        nn.Conv2d(1, 20, 5, name="conv1"), nn.MaxPool2d(2, 2, name="pool1"),
        nn.Conv2d(20, 50, 5, name="conv2"), nn.MaxPool2d(2, 2, name="pool2"),
        nn.Flatten(name="flatten"), nn.Linear(800, 500, name="ip1"), nn.ReLU(name="relu1"),
        nn.Linear(500, classes, name=last), name="mine")


def test_all_layers_match():
    model = lenet()
    report = caffe.load_weights(model, PROTOTXT, WEIGHTS, match_all=True)
    assert sorted(report["loaded"]) == ["conv1", "conv2", "ip1", "ip2"] and report["skipped"] == []
    reference = caffe.convert(PROTOTXT, WEIGHTS)
    for name in ("conv1", "conv2", "ip1", "ip2"):
        for p in ("weight", "bias"):
            assert np.array_equal(model.find(name).params[p], reference.find(name).params[p])


def test_renamed_last_layer_keeps_its_initialisation():
    model = lenet(last="ip2_digits", classes=7)
    fresh = model.find("ip2_digits").params["weight"].copy()
    report = caffe.load_weights(model, PROTOTXT, WEIGHTS)
    assert report["skipped"] == ["ip2_digits"] and report["unused"] == ["ip2"]
    assert np.array_equal(model.find("ip2_digits").params["weight"], fresh)
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    features = caffe.convert(PROTOTXT, WEIGHTS)
    model.evaluate()
    # everything below the new head computes what the Caffe net computes
    assert_close(nn.Sequential(*model.children()[:-1], name="f").forward(x),
                 nn.Sequential(*features.children()[:-2], name="g").forward(x))
    with pytest.raises(caffe.CaffeError, match="no weights for modules ip2_digits"):
        caffe.load_weights(lenet(last="ip2_digits", classes=7), PROTOTXT, WEIGHTS, match_all=True)


def test_shape_mismatch_names_both_shapes():
    model = lenet()
    model.replace("ip1", nn.Linear(800, 300, name="ip1"))
    model.replace("ip2", nn.Linear(300, 10, name="ip2"))
    with pytest.raises(caffe.CaffeError, match=r"layer 'ip1' weight: the caffemodel has shape \[500, 800\], "
                                               r"the model expects \[300, 800\]"):
        caffe.load_weights(model, PROTOTXT, WEIGHTS)
