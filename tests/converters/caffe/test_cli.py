"""`kindling convert caffe` end to end: convert, --check, run."""
import subprocess
import sys

import numpy as np

import kindling
from caffe_nets import LENET, STAGED, opencv_forward, write_net


def cli(*args):
    return subprocess.run([sys.executable, "-m", "kindling", *map(str, args)], capture_output=True, text=True)


def test_convert_check_and_run_the_real_lenet(tmp_path):
    proto, weights = LENET / "lenet.prototxt", LENET / "lenet_iter_10000.caffemodel"
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", opencv_forward(proto, weights, {"data": x}, ["prob"])[0])
    (tmp_path / "labels.txt").write_text("\n".join(f"digit {i}" for i in range(10)) + "\n")
    out = tmp_path / "lenet.kdl"
    r = cli("convert", "caffe", "--prototxt", proto, "--caffemodel", weights, "-o", out, "--labels",
            tmp_path / "labels.txt", "--mean", "0", "--scale", "0.00390625", "--channel-order", "gray",
            "--check", tmp_path / "x.npy", tmp_path / "expected.npy")
    assert r.returncode == 0, r.stderr
    assert "check: max abs difference" in r.stdout and "431,080 parameters" in r.stdout and "peak memory" in r.stdout
    meta = kindling.load(out).metadata
    assert meta["labels"][3] == "digit 3"
    assert meta["preprocessing"] == {"mean": [0.0], "scale": 0.00390625, "channel_order": "gray"}
    r = cli("run", out, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
    assert r.returncode == 0, r.stderr
    assert np.abs(np.load(tmp_path / "y.npy") - np.load(tmp_path / "expected.npy")).max() <= 1e-4


def test_check_failure_exits_non_zero_and_writes_nothing(tmp_path):
    proto, weights = LENET / "lenet.prototxt", LENET / "lenet_iter_10000.caffemodel"
    x = np.random.default_rng(1).random((2, 1, 28, 28), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "wrong.npy", np.full((2, 10), 0.1, np.float32))
    out = tmp_path / "lenet.kdl"
    r = cli("convert", "caffe", "--prototxt", proto, "--caffemodel", weights, "-o", out,
            "--check", tmp_path / "x.npy", tmp_path / "wrong.npy")
    assert r.returncode == 1 and "check failed" in r.stderr
    assert not out.exists()


def test_stage_and_input_select_a_digits_deploy_net(tmp_path):
    w = np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32)
    proto, weights = write_net(tmp_path, STAGED, {"ip": [w, np.zeros(3, np.float32)]})
    out = tmp_path / "digits.kdl"
    r = cli("convert", "caffe", "--prototxt", proto, "--caffemodel", weights, "-o", out)
    assert r.returncode != 0 and "--stage" in r.stderr and not out.exists()
    r = cli("convert", "caffe", "--prototxt", proto, "--caffemodel", weights, "-o", out,
            "--stage", "deploy", "--input", "data=1,8")
    assert r.returncode == 0, r.stderr
    model = kindling.load(out).evaluate()
    assert [m.name for m in model.children()] == ["scale", "ip", "softmax"]
    x = np.random.default_rng(3).standard_normal((2, 8)).astype(np.float32)
    z = 0.5 * x @ w.T
    e = np.exp(z - z.max(1, keepdims=True))
    assert np.abs(model.forward(x) - e / e.sum(1, keepdims=True)).max() <= 1e-6
