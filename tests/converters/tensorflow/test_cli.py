"""`kindling convert tf` end to end: convert, --check, run; TensorFlow is never imported for a .pb;
--verify against stored outputs and against TensorFlow itself, which names the first layer that
went wrong and writes nothing."""
import subprocess
import sys

import numpy as np
import pytest

import kindling
from kindling.cli import main
from kindling.converters.tensorflow import common
from tf_graphs import FIXTURES, stored


def cli(*args):
    return subprocess.run([sys.executable, "-m", "kindling", *map(str, args)], capture_output=True, text=True)


def test_convert_check_and_run(tmp_path):
    want = stored("mobilenet_v2")
    np.save(tmp_path / "x.npy", want["x"])
    np.save(tmp_path / "expected.npy", want["Identity:0"])
    (tmp_path / "labels.txt").write_text("\n".join(f"class {i}" for i in range(10)) + "\n")
    out = tmp_path / "mnv2.kdl"
    r = cli("convert", "tf", "--graph", FIXTURES / "mobilenet_v2.pb", "-o", out, "--labels", tmp_path / "labels.txt",
            "--mean", "127.5", "--std", "127.5", "--check", tmp_path / "x.npy", tmp_path / "expected.npy")
    assert r.returncode == 0, r.stderr
    assert "check: max abs difference" in r.stdout and "output shape [1, 10]" in r.stdout
    meta = kindling.load(out).metadata
    assert meta["extra"]["source_layout"] == "NHWC" and meta["labels"][3] == "class 3"
    r = cli("run", out, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
    assert r.returncode == 0, r.stderr
    assert np.abs(np.load(tmp_path / "y.npy") - want["Identity:0"]).max() <= 1e-5


BLOCK_TENSORFLOW = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow.") or name == "keras":
            raise ImportError("tensorflow must not be imported by convert tf")
sys.meta_path.insert(0, Blocker())
from kindling.cli import main
code = main(["convert", "tf", "--graph", sys.argv[1], "-o", sys.argv[2]])
assert not [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")]
sys.exit(code)
"""


def test_convert_tf_never_imports_tensorflow(tmp_path):
    out = tmp_path / "m.kdl"
    r = subprocess.run([sys.executable, "-c", BLOCK_TENSORFLOW, FIXTURES / "keras_blocks.pb", out],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.exists()


def test_verify_against_stored_outputs(tmp_path):
    out = tmp_path / "m.kdl"
    r = cli("convert", "tf", "--graph", FIXTURES / "tf1_graph.pb", "-o", out, "--verify",
            "--reference", FIXTURES / "tf1_graph.npz", "--tolerance", "1e-5")
    assert r.returncode == 0, r.stderr
    assert "verify: 26 of 26 layers compared with tf1_graph.npz" in r.stdout and out.exists()


def test_verify_names_the_first_layer_that_differs_and_writes_nothing(tmp_path):
    ref = stored("tf1_graph")
    ref["depthwise:0"] = ref["depthwise:0"] + 0.01  # as if the depthwise layer had been converted wrongly
    np.savez(tmp_path / "ref.npz", **ref)
    out = tmp_path / "m.kdl"
    r = cli("convert", "tf", "--graph", FIXTURES / "tf1_graph.pb", "-o", out, "--verify", "--reference",
            tmp_path / "ref.npz")
    assert r.returncode == 1
    assert "verify failed at depthwise (Conv2d), the first layer over the tolerance" in r.stderr
    table = r.stdout.splitlines()
    assert table[-1].startswith("depthwise") and "over the tolerance" in table[-1]
    assert not out.exists()


def test_verify_against_tensorflow_itself(tmp_path, capsys):
    out = tmp_path / "m.kdl"
    code = main(["convert", "tf", "--graph", str(FIXTURES / "keras_blocks.pb"), "-o", str(out), "--verify",
                 "--reference", "tf", "--tolerance", "1e-5"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "vs TensorFlow 2." in printed and "verify: 26 of 26 layers compared with TensorFlow" in printed
    assert out.exists()


SAME_PADS = common.same_pads


def test_verify_against_tensorflow_catches_misplaced_same_padding(tmp_path, capsys, monkeypatch):
    """Had the converter put SAME's odd extra row on top, verify names the first convolution
    where it shows."""
    monkeypatch.setattr(common, "same_pads", lambda *args: SAME_PADS(*args)[::-1])
    out = tmp_path / "m.kdl"
    code = main(["convert", "tf", "--graph", str(FIXTURES / "trap_same_conv.pb"), "-o", str(out), "--verify"])
    captured = capsys.readouterr()
    assert code == 1 and not out.exists()
    assert "verify failed at Conv2D (Conv2d), the first layer over the tolerance" in captured.err


def test_reference_for_another_framework_is_refused(tmp_path):
    r = cli("convert", "tf", "--graph", FIXTURES / "trap_mean.pb", "-o", tmp_path / "m.kdl", "--verify",
            "--reference", "opencv")
    assert r.returncode == 1 and "not a reference for tf models; known: tf, FILE.npz" in r.stderr


@pytest.mark.parametrize("flag", ["--inputs", "--outputs"])
def test_inputs_and_outputs_flags(tmp_path, flag):
    value = "Relu:0"
    args = ["--input", "Relu=1,4,7,5"] if flag == "--inputs" else []
    r = cli("convert", "tf", "--graph", FIXTURES / "trap_flatten_7x5.pb", "-o", tmp_path / "m.kdl", flag, value, *args)
    assert r.returncode == 0, r.stderr
    meta = kindling.load(tmp_path / "m.kdl").metadata
    assert (meta["input_names"] if flag == "--inputs" else meta["output_names"]) == ["Relu"]
