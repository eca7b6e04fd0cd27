"""`kindling info` and `kindling run` through the real entry point."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import kindling
from kindling.runtime import nn


def kindling_cli(*args):
    return subprocess.run([sys.executable, "-m", "kindling", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    model = nn.Sequential(
        nn.Conv2d(1, 20, 5, name="conv1"), nn.MaxPool2d(2, 2, name="pool1"),
        nn.Conv2d(20, 50, 5, name="conv2"), nn.MaxPool2d(2, 2, name="pool2"),
        nn.Flatten(name="flatten"), nn.Linear(800, 500, name="ip1"), nn.ReLU(name="relu1"),
        nn.Linear(500, 10, name="ip2"), nn.LogSoftmax(name="prob"), name="lenet")
    path = tmp_path_factory.mktemp("m") / "lenet.kdl"
    kindling.save(model, path, metadata={"input_shape": [-1, 1, 28, 28], "labels": [str(i) for i in range(10)],
                                       "preprocessing": {"scale": 0.00390625, "channel_order": "gray"}})
    return path, model.evaluate()


def test_info_lists_layers_shapes_parameters_and_backend(lenet):
    path, _ = lenet
    r = kindling_cli("info", path)
    assert r.returncode == 0, r.stderr
    for text in ("conv1", "Conv2d", "(1, 20, 24, 24)", "(1, 10)", "parameters: 431,080", "backend:", "labels: 10",
                 "preprocessing: scale 0.00390625, channel_order gray"):
        assert text in r.stdout, text


def test_info_backend(monkeypatch):
    r = kindling_cli("info", "--backend")
    assert r.returncode == 0 and "backend:" in r.stdout and "threads:" in r.stdout


def test_info_backend_names_an_openblas_kernel_held_by_the_environment(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Sandybridge")
    monkeypatch.setenv("KINDLING_BLAS", "openblas")
    r = kindling_cli("info", "--backend")
    assert r.returncode == 0, r.stderr
    assert "numpy's OpenBLAS kernel: Sandybridge (held there by OPENBLAS_CORETYPE=Sandybridge" in r.stdout
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    monkeypatch.delenv("OPENBLAS_L2_SIZE", raising=False)
    r = kindling_cli("info", "--backend")
    assert "numpy's OpenBLAS kernel: " in r.stdout and "held there" not in r.stdout


def test_run_matches_forward_and_batches_agree(lenet, tmp_path):
    path, model = lenet
    x = np.random.default_rng(0).standard_normal((7, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    for bs in (0, 3):
        r = kindling_cli("run", path, "--input", tmp_path / "x.npy", "--output", tmp_path / f"y{bs}.npy",
                         "--batch-size", bs)
        assert r.returncode == 0, r.stderr
    y = np.load(tmp_path / "y0.npy")
    np.testing.assert_allclose(y, model.forward(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "y3.npy"), y, rtol=1e-5, atol=1e-6)


def test_run_npz_for_two_inputs_and_outputs(tmp_path):
    g = nn.Graph(inputs=["a", "b"], outputs=["sum", "neg"], name="g")
    g.add(nn.Linear(3, 2, name="fa"), ["a"])
    g.add(nn.Linear(4, 2, name="fb"), ["b"])
    g.add(nn.Add(name="sum"), ["fa", "fb"])
    g.add(nn.Scale(2, bias=False, axis=1, name="neg"), ["fa"])
    path = kindling.save(g, tmp_path / "g.kdl", metadata={"input_names": ["a", "b"], "output_names": ["sum", "neg"]})
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((5, 3)).astype(np.float32), rng.standard_normal((5, 4)).astype(np.float32)
    np.savez(tmp_path / "in.npz", a=a, b=b)
    r = kindling_cli("run", path, "--input", tmp_path / "in.npz", "--output", tmp_path / "out.npz", "--batch-size", 2)
    assert r.returncode == 0, r.stderr
    out = np.load(tmp_path / "out.npz")
    s, n = g.forward({"a": a, "b": b})
    # batches of 2 against one of 5: the GEMMs may sum in another order, and a sum that nearly
    # cancels (7.7e-5 here once) differs by a float32 rounding of its terms (6e-8), not of itself
    np.testing.assert_allclose(out["sum"], s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["neg"], n, rtol=1e-5, atol=1e-6)
    r = kindling_cli("run", path, "--input", tmp_path / "in.npz", "--output", tmp_path / "out.npy")
    assert r.returncode != 0 and "write them to an .npz" in r.stderr


def test_run_bad_input_shape_is_a_clear_error(lenet, tmp_path):
    path, _ = lenet
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3, 28, 28), np.float32))
    r = kindling_cli("run", path, "--input", tmp_path / "wrong.npy", "--output", tmp_path / "y.npy")
    assert r.returncode == 1
    assert "does not fit the model's [-1, 1, 28, 28]" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "y.npy").exists()
    r = kindling_cli("info", tmp_path / "wrong.npy")
    assert r.returncode == 1 and "not a kindling model" in r.stderr


def test_run_classifies_images_and_folders_as_the_predictor_does(tmp_path):
    from caffe_nets import FIXTURES, LENET
    from kindling.converters import caffe
    from kindling.runtime.predict import Predictor
    model = caffe.convert(LENET / "lenet.prototxt", LENET / "lenet_iter_10000.caffemodel",
                          labels=[f"d{i}" for i in range(10)],
                          preprocessing={"scale": 1 / 255, "channel_order": "gray", "input_size": [28, 28]})
    path = kindling.save(model, tmp_path / "lenet.kdl")
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (30 + i, 28), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    cat = FIXTURES / "images" / "cat.jpg"
    r = kindling_cli("run", path, "--input", cat, folder, "--top-k", "2", "--output", tmp_path / "y.npy")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    files = [cat, *sorted(folder.glob("*.png"))]
    expected = Predictor.load(path).classify(files, top_k=2)
    for f, c in zip(files, expected):
        line = next(x for x in lines if x.startswith(f"{f}: "))
        # the same labels; scores printed to 4 places, and this process's BLAS may sum in another
        # order than the command's (its thread count), so a score on a rounding boundary may differ
        # in the last place
        printed = [pair.split(" ") for pair in line[len(f"{f}: "):].split(", ")]
        assert [lab for lab, _ in printed] == list(c.labels), line
        np.testing.assert_allclose([float(s) for _, s in printed], c.scores, atol=1.5e-4)
    assert np.load(tmp_path / "y.npy").shape == (4, 10)
    r = kindling_cli("run", path, "--input", tmp_path / "lenet.kdl")
    assert r.returncode == 1 and "a kindling model, not an input: expected a tensor (.npy, .npz) or images" in r.stderr
    (tmp_path / "half.jpg").write_bytes(cat.read_bytes()[:4000])
    r = kindling_cli("run", path, "--input", tmp_path / "half.jpg")
    assert r.returncode == 1 and "half.jpg: JPEG data cannot be decoded" in r.stderr and "Traceback" not in r.stderr
    r = kindling_cli("run", path, "--input", tmp_path / "missing.png")
    assert r.returncode == 1 and "missing.png: no such file" in r.stderr


def test_run_images_of_their_own_sizes_on_a_free_size_model(tmp_path):
    """A net that takes any H and W (-1) takes each image at its own size: scores per image, and
    outputs of different sizes cannot share one tensor file."""
    conv = nn.Conv2d(3, 2, 1, name="conv")
    path = kindling.save(nn.Sequential(conv, name="fcn"), tmp_path / "fcn.kdl",
                         metadata={"input_shape": [-1, 3, -1, -1], "sample_shape": [1, 3, 8, 8]})
    for name, size in (("a.png", (12, 7)), ("b.png", (5, 9))):
        Image.fromarray(np.full((size[1], size[0], 3), 100, np.uint8)).save(tmp_path / name)
    r = kindling_cli("run", path, "--input", tmp_path / "a.png", tmp_path / "b.png", "--output", tmp_path / "y.npz")
    assert r.returncode == 1 and "outputs of different sizes" in r.stderr and not (tmp_path / "y.npz").exists()
    r = kindling_cli("run", path, "--input", tmp_path / "b.png", "--output", tmp_path / "y.npy")
    assert r.returncode == 0, r.stderr
    y = np.load(tmp_path / "y.npy")
    expected = conv.params["weight"].reshape(2, 3).sum(1) * 100 + conv.params["bias"]
    assert y.shape == (1, 2, 9, 5) and np.allclose(y[0, :, 0, 0], expected, rtol=1e-5)


def test_run_reads_inputs_strictly_and_writes_nothing_on_error(lenet, tmp_path):
    """numpy's reader evaluates the header and allocates what it claims; kindling's names the file."""
    path, model = lenet
    bad = tmp_path / "x.npy"
    bad.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4',")
    out = tmp_path / "y.npy"
    r = kindling_cli("run", path, "--input", bad, "--output", out)
    assert r.returncode == 1 and r.stderr == f"kindling run: error: {bad}: not a .npy header (expected a {{...}} " \
                                             f"dictionary)\n", r.stderr
    x = np.random.default_rng(0).uniform(0, 1, (3, 1, 28, 28)).astype(np.float32)
    np.savez(tmp_path / "x.npz", data=x)
    r = kindling_cli("run", path, "--input", tmp_path / "x.npz", "--output", out)
    assert r.returncode == 1 and "x.npz: no arrays named ['input']" in r.stderr and "'data'" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy", "x.npz"]  # no output, no temp file
    np.savez(tmp_path / "x.npz", input=x)
    r = kindling_cli("run", path, "--input", tmp_path / "x.npz", "--output", tmp_path / "y.npz")
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npz")["output"], model.forward(x), rtol=1e-5, atol=1e-6)
