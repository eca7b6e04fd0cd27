"""Parity on the spot: the converted real LeNet against OpenCV layer by layer, and a wrong layer
named as the first over the tolerance, with nothing written."""
import subprocess
import sys

import numpy as np
import pytest

from caffe_nets import LENET, opencv_forward
from kindling.converters import caffe
from kindling.converters.caffe.reference import OpenCVReference
from kindling.converters.graph import ConversionError
from kindling.converters.verify import NpzReference, verify

PROTO, WEIGHTS = LENET / "lenet.prototxt", LENET / "lenet_iter_10000.caffemodel"
LAYERS = ["conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2", "prob"]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "kindling", *map(str, args)], capture_output=True, text=True)


def _x(seed=0):
    return {"data": np.random.default_rng(seed).random((2, 1, 28, 28), dtype=np.float32)}


def test_every_layer_of_the_real_lenet_matches_opencv_in_execution_order():
    model = caffe.convert(PROTO, WEIGHTS)
    report = verify(model, OpenCVReference(PROTO, WEIGHTS), _x())
    assert [r.module for r in report.rows] == LAYERS and report.first_failure is None
    assert all(r.max_abs is not None and r.max_abs <= 1e-4 for r in report.rows)


def test_a_wrong_layer_is_the_first_failure_and_the_rows_stop_there():
    model = caffe.convert(PROTO, WEIGHTS)
    model.find("conv2").params["weight"][0, 0, 0, 0] += 0.5  # what a layout bug would do to one layer
    report = verify(model, OpenCVReference(PROTO, WEIGHTS), _x())
    assert report.first_failure.module == "conv2" and [r.module for r in report.rows] == LAYERS[:3]
    assert report.rows[0].ok and report.rows[1].ok and "over the tolerance" in report.table()


def test_cli_verify_against_stored_outputs_names_the_layer_and_writes_nothing(tmp_path):
    x = _x(1)["data"]
    outs = opencv_forward(PROTO, WEIGHTS, {"data": x}, LAYERS)
    stored = dict(zip(LAYERS, outs))
    np.savez(tmp_path / "good.npz", data=x, **stored)
    out = tmp_path / "lenet.kdl"
    r = cli("convert", "caffe", "--prototxt", PROTO, "--caffemodel", WEIGHTS, "-o", out, "--verify",
            "--reference", tmp_path / "good.npz")
    assert r.returncode == 0, r.stderr
    assert "verify: 8 of 8 layers compared with good.npz" in r.stdout and out.exists()
    out.unlink()
    stored["ip1"] = stored["ip1"] * 1.01
    np.savez(tmp_path / "bad.npz", data=x, **stored)
    r = cli("convert", "caffe", "--prototxt", PROTO, "--caffemodel", WEIGHTS, "-o", out, "--verify",
            "--reference", tmp_path / "bad.npz")
    assert r.returncode == 1 and "verify failed at ip1 (Linear)" in r.stderr and not out.exists()
    assert "relu1" not in r.stdout  # nothing after the first failure


def test_cli_verify_defaults_to_opencv_and_unknown_references_are_refused(tmp_path):
    out = tmp_path / "lenet.kdl"
    r = cli("convert", "caffe", "--prototxt", PROTO, "--caffemodel", WEIGHTS, "-o", out, "--verify")
    assert r.returncode == 0, r.stderr
    assert "vs OpenCV" in r.stdout and "all within 0.0001" in r.stdout
    r = cli("convert", "caffe", "--prototxt", PROTO, "--caffemodel", WEIGHTS, "-o", out, "--verify",
            "--reference", "tf")
    assert r.returncode == 1 and "--reference tf: not a reference for caffe models; known: opencv, FILE.npz" in r.stderr


def test_stored_outputs_without_the_inputs_are_refused(tmp_path):
    np.savez(tmp_path / "r.npz", conv1=np.zeros((1, 20, 24, 24), np.float32))
    with pytest.raises(ConversionError, match=r"r.npz: no arrays for the model's inputs \['data'\]"):
        NpzReference(tmp_path / "r.npz", ["data"])
