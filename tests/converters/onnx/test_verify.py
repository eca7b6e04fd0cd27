"""--verify for ONNX: every layer of a converted ResNet-18 against onnxruntime on the same file
(intermediate tensors as extra graph outputs), a wrong layer named as the first failure, and the
command line writing nothing then."""
import subprocess
import sys

import numpy as np

from kindling.converters import onnx as konnx
from kindling.converters.onnx.reference import OnnxRuntimeReference
from kindling.converters.verify import verify

from onnx_nets import export, resnet18


def cli(*args):
    return subprocess.run([sys.executable, "-m", "kindling", *map(str, args)], capture_output=True, text=True)


def _resnet_file(torch, tmp_path, dynamic=True):
    return export(torch, resnet18(torch), (1, 3, 32, 32), tmp_path / "r18.onnx", 13, dynamic)


def _x(seed=0, batch=2):
    return {"input": np.random.default_rng(seed).standard_normal((batch, 3, 32, 32)).astype(np.float32)}


def test_every_layer_of_a_resnet18_matches_onnxruntime(torch, tmp_path):
    path = _resnet_file(torch, tmp_path, dynamic=False)  # traced with batch 1: the reference runs it per image
    model = konnx.convert(path)
    report = verify(model, OnnxRuntimeReference(path), _x())
    assert report.first_failure is None, report.table()
    convs = [r for r in report.rows if r.type == "Conv2d"]
    assert len(convs) == 20 and all(r.max_abs is not None for r in report.rows)
    assert report.rows[-1].tensor == "output" and report.rows[-1].shape == (2, 10)


def test_a_wrong_layer_is_named_first(torch, tmp_path):
    path = _resnet_file(torch, tmp_path)
    model = konnx.convert(path)
    rows = verify(model, OnnxRuntimeReference(path), _x()).rows
    victim = [r.module for r in rows if r.type == "Conv2d"][7]
    model.find(victim).params["weight"][0] *= 1.5  # what a layout bug would do to one layer
    report = verify(model, OnnxRuntimeReference(path), _x())
    assert report.first_failure.module == victim and report.rows[-1].module == victim
    assert all(r.ok for r in report.rows[:-1])


def test_cli_verify_writes_only_when_every_layer_matches(torch, tmp_path):
    path = _resnet_file(torch, tmp_path)
    out = tmp_path / "r18.kdl"
    r = cli("convert", "onnx", path, "-o", out, "--verify")
    assert r.returncode == 0, r.stderr
    assert "vs onnxruntime" in r.stdout and "all within 0.0001" in r.stdout and out.exists()
    out.unlink()
    x = _x(3)["input"]
    good = OnnxRuntimeReference(path).run({"input": x}, ["output"])["output"]
    np.savez(tmp_path / "bad.npz", input=x, output=good + 0.1)
    r = cli("convert", "onnx", path, "-o", out, "--verify", "--reference", tmp_path / "bad.npz")
    assert r.returncode == 1 and "verify failed at" in r.stderr and not out.exists()
