"""Cutting a net at named blobs (`--outputs`): only the layers those blobs need are converted
(a detector's backbone, a classifier's features), and they are the model's outputs."""
import subprocess
import sys

import numpy as np
import pytest

import kindling
from caffe_nets import LENET, ZOO, opencv_forward, photo, zoo_net
from helpers import assert_close
from kindling.converters import caffe

BACKBONE = ["conv11", "conv13"]  # MobileNet-SSD's two feature maps the detection heads read


def cli(*args):
    return subprocess.run([sys.executable, "-m", "kindling", *map(str, args)], capture_output=True, text=True)


def test_a_detectors_backbone_cut_from_mobilenet_ssd(tmp_path):
    """The blobs are what Caffe leaves in them: conv11 after its in-place ReLU. Nothing of the
    detection heads is converted (none of their layers is even looked at)."""
    proto, weights = zoo_net(tmp_path, ZOO / "mobilenet_ssd_voc_deploy.prototxt", outputs=BACKBONE)
    model = caffe.convert(proto, weights, outputs=BACKBONE).evaluate()
    assert model.metadata["output_names"] == BACKBONE
    names = {m.name for m in model.modules()}
    assert "conv13/relu" in names and not any("mbox" in n or n.startswith("conv14") for n in names)
    x = photo((300, 300))
    ours = model.forward(x)
    # OpenCV reads a whole net: give it the file's layers up to conv13's ReLU (the backbone is a chain)
    text = proto.read_text()
    head = tmp_path / "backbone.prototxt"
    head.write_text(text[:text.index("layer {", text.index('name: "conv13/relu"'))])
    theirs = opencv_forward(head, weights, {"data": x}, ["conv11/relu", "conv13/relu"])
    for a, b, blob in zip(ours, theirs, BACKBONE):
        assert_close(a, b, 1e-4, blob)


def test_features_of_a_classifier_through_the_command_line(tmp_path):
    out = tmp_path / "lenet_ip1.kdl"
    r = cli("convert", "caffe", "--prototxt", LENET / "lenet.prototxt", "--caffemodel",
            LENET / "lenet_iter_10000.caffemodel", "-o", out, "--outputs", "ip1", "--verify")
    assert r.returncode == 0, r.stderr
    model = kindling.load(out)
    assert model.metadata["output_names"] == ["ip1"] and "ip2" not in {m.name for m in model.modules()}
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    r = cli("run", out, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npz")
    assert r.returncode == 0, r.stderr
    y = np.load(tmp_path / "y.npz")["ip1"]
    # the blob ip1 holds what relu1 left in it (in place), OpenCV's relu1 output
    expected = opencv_forward(LENET / "lenet.prototxt", LENET / "lenet_iter_10000.caffemodel", {"data": x}, ["relu1"])
    assert y.shape == (3, 500)
    assert_close(y, expected[0], 1e-4)


def test_an_unknown_blob_is_refused_listing_the_blobs():
    with pytest.raises(caffe.CaffeError, match=r"--outputs names 'ip3', which no layer writes; the net's blobs are "
                                               r"conv1, conv2, data, ip1, ip2, pool1, pool2, prob"):
        caffe.convert(LENET / "lenet.prototxt", outputs=["ip1", "ip3"])
