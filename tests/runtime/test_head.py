"""new_head: the classifier of a converted model swapped for a fresh one (transfer learning), for
Linear heads and for the 1x1-convolution heads of SqueezeNet-style nets, in Sequential and Graph."""
import subprocess
import sys

import numpy as np
import pytest

import kindling
from caffe_nets import LENET, write_net
from kindling.commands.demo import write_digits
from kindling.converters import caffe
from kindling.runtime import nn
from kindling.runtime.head import classifier, new_head

# A SqueezeNet-style net: a fire module (squeeze 1x1, expand 1x1 and 3x3, concat), then the
# classifier is a 1x1 convolution, a ReLU, a global average pool and a softmax.
SQUEEZE = """name: "tiny_squeeze"
input: "data"
input_shape { dim: 1 dim: 1 dim: 28 dim: 28 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 16 kernel_size: 3 stride: 2 } }
layer { name: "relu_conv1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fire2/squeeze1x1" type: "Convolution" bottom: "conv1" top: "fire2/squeeze1x1" convolution_param { num_output: 8 kernel_size: 1 } }
layer { name: "fire2/relu_squeeze1x1" type: "ReLU" bottom: "fire2/squeeze1x1" top: "fire2/squeeze1x1" }
layer { name: "fire2/expand1x1" type: "Convolution" bottom: "fire2/squeeze1x1" top: "fire2/expand1x1" convolution_param { num_output: 16 kernel_size: 1 } }
layer { name: "fire2/expand3x3" type: "Convolution" bottom: "fire2/squeeze1x1" top: "fire2/expand3x3" convolution_param { num_output: 16 pad: 1 kernel_size: 3 } }
layer { name: "fire2/concat" type: "Concat" bottom: "fire2/expand1x1" bottom: "fire2/expand3x3" top: "fire2/concat" }
layer { name: "relu_fire2" type: "ReLU" bottom: "fire2/concat" top: "fire2/concat" }
layer { name: "conv10" type: "Convolution" bottom: "fire2/concat" top: "conv10" convolution_param { num_output: 1000 kernel_size: 1 } }
layer { name: "relu_conv10" type: "ReLU" bottom: "conv10" top: "conv10" }
layer { name: "pool10" type: "Pooling" bottom: "conv10" top: "pool10" pooling_param { pool: AVE global_pooling: true } }
layer { name: "prob" type: "Softmax" bottom: "pool10" top: "prob" }
"""
BLOBS = {"conv1": [(16, 1, 3, 3), (16,)], "fire2/squeeze1x1": [(8, 16, 1, 1), (8,)],
         "fire2/expand1x1": [(16, 8, 1, 1), (16,)], "fire2/expand3x3": [(16, 8, 3, 3), (16,)],
         "conv10": [(1000, 32, 1, 1), (1000,)]}


@pytest.fixture()
def squeeze(tmp_path):
    proto, weights = write_net(tmp_path, SQUEEZE, {k: [np.random.default_rng(1).normal(0, 0.2, s).astype(np.float32)
                                                       for s in v] for k, v in BLOBS.items()})
    return caffe.convert(proto, weights, preprocessing={"scale": 1 / 255, "channel_order": "gray",
                                                        "input_size": [28, 28]})


def test_a_convolution_head_is_replaced_in_a_graph_and_the_rest_kept(squeeze):
    assert isinstance(squeeze, nn.Graph) and classifier(squeeze).name == "conv10"
    before = {k: v.copy() for k, v in squeeze.state_dict().items()}
    old, new = new_head(squeeze, "conv10_digits", 10)
    assert old.name == "conv10" and old.out_channels == 1000
    assert (new.in_channels, new.out_channels, new.kernel_size) == (32, 10, (1, 1))
    after = squeeze.state_dict()
    assert {k for k in before if not k.startswith("conv10.")} == {k for k in after if not k.startswith("conv10_")}
    for k, v in after.items():
        if not k.startswith("conv10_"):
            assert np.array_equal(v, before[k]), k
    y = squeeze.evaluate().forward(np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32))
    assert y.shape == (3, 10, 1, 1) and np.allclose(y.sum(1), 1, atol=1e-5)  # the softmax reads the new head


def test_a_linear_head_is_the_last_linear():
    model = caffe.convert(LENET / "lenet.prototxt", LENET / "lenet_iter_10000.caffemodel")
    old, new = new_head(model, "ip2_new", 4)
    assert old.name == "ip2" and (new.in_features, new.out_features) == (500, 4)
    assert [m.name for m in model.children()][-2:] == ["ip2_new", "prob"]


def test_the_head_is_found_in_run_order_not_insertion_order():
    # nodes added out of order: "late" runs after "early" although it was added first
    g = nn.Graph(nn.Linear(6, 3, name="late"), nn.Linear(4, 6, name="early"), inputs="input", outputs="late",
                 node_inputs={"late": ["early"], "early": ["input"]})
    assert classifier(g).name == "late"


def test_new_head_errors_name_the_problem():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, groups=1, name="c"), nn.Linear(8, 2, name="fc"), name="m")
    with pytest.raises(ValueError, match="already has a module named 'c'"):
        new_head(model, "c", 5)
    with pytest.raises(ValueError, match="positive number of classes"):
        new_head(model, "fc2", 0)
    with pytest.raises(ValueError, match="no Linear or Conv2d"):
        new_head(nn.Sequential(nn.ReLU(), name="bare"), "fc", 3)


# The real LeNet's convolutions with a fully convolutional classifier on top, as FCN-style and
# SqueezeNet-style nets have it: a convolution over 1000 "classes", then a global average pool.
CONV_HEAD = """name: "lenet_conv_head"
input: "data"
input_shape { dim: 1 dim: 1 dim: 28 dim: 28 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 20 kernel_size: 5 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2" convolution_param { num_output: 50 kernel_size: 5 } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv_cls" type: "Convolution" bottom: "pool2" top: "conv_cls" convolution_param { num_output: 1000 kernel_size: 4 } }
layer { name: "pool_cls" type: "Pooling" bottom: "conv_cls" top: "pool_cls" pooling_param { pool: AVE global_pooling: true } }
layer { name: "prob" type: "Softmax" bottom: "pool_cls" top: "prob" }
"""


def test_kindling_train_new_head_replaces_a_convolution_classifier(tmp_path):
    real = caffe.read_blobs(LENET / "lenet_iter_10000.caffemodel")
    proto, weights = write_net(tmp_path, CONV_HEAD, {"conv1": real["conv1"], "conv2": real["conv2"],
                                                      "conv_cls": [(1000, 50, 4, 4), (1000,)]})
    model = caffe.convert(proto, weights, preprocessing={"scale": 1 / 255, "channel_order": "gray",
                                                         "input_size": [28, 28]})
    kindling.save(model, tmp_path / "base.kdl")
    digits = tmp_path / "digits"
    write_digits(digits)
    r = subprocess.run([sys.executable, "-m", "kindling", "train", "--model", tmp_path / "base.kdl", "--train",
                        digits, "--new-head", "conv_cls_digits:10", "--freeze", "conv1,conv2", "--epochs", "2",
                        "--batch-size", "32", "--lr", "0.05", "--momentum", "0.9", "--checkpoint", tmp_path / "ckpt"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "replaced conv_cls (1000 outputs) by a new conv_cls_digits with 10 outputs" in r.stdout
    snap = kindling.load(sorted((tmp_path / "ckpt").glob("model.*"), key=lambda p: int(p.name.split(".")[1]))[-1])
    assert snap.find("conv_cls_digits").params["weight"].shape == (10, 50, 4, 4)
    assert np.array_equal(snap.find("conv2").params["weight"], real["conv2"][0])
    final = float(r.stdout.split("Top1Accuracy ")[1].split(",")[0])
    assert final > 0.8, r.stdout  # chance is 0.1: the new head learned on the real LeNet's features
