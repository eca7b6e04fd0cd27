"""kindling convert onnx / kindling export onnx from the command line, and what they import."""
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort

import kindling
from onnx_nets import export, mobilenet_block


def cli(*args):
    return subprocess.run([sys.executable, "-m", "kindling", *map(str, args)], capture_output=True, text=True)


def test_convert_then_export_from_the_command_line(torch, tmp_path):
    src = export(torch, mobilenet_block(torch), (1, 16, 12, 12), tmp_path / "block.onnx", 17, True)
    kdl, again = tmp_path / "block.kdl", tmp_path / "again.onnx"
    (tmp_path / "labels.txt").write_text("\n".join(f"class {i}" for i in range(8)))
    r = cli("convert", "onnx", src, "-o", kdl, "--labels", tmp_path / "labels.txt", "--mean", "0.5", "--std", "0.25")
    assert r.returncode == 0, r.stderr
    assert "converted block.onnx" in r.stdout
    r = cli("export", "onnx", kdl, "-o", again, "--opset", "18", "--dynamic-batch")
    assert r.returncode == 0, r.stderr
    assert "opset 18, any batch" in r.stdout
    proto = onnx.load(str(again))
    assert proto.opset_import[0].version == 18 and proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    props = {p.key: p.value for p in proto.metadata_props}
    assert '"mean": [0.5]' in props["kindling.preprocessing"] and "class 7" in props["kindling.labels"]
    x = np.random.default_rng(0).standard_normal((3, 16, 12, 12)).astype(np.float32)
    theirs = ort.InferenceSession(str(again)).run(None, {"input": x})[0]
    ours = kindling.load(kdl).evaluate().forward(x)
    assert np.abs(theirs - ours).max() <= 1e-4


def test_export_errors_name_the_problem_and_leave_nothing(tmp_path):
    from kindling.runtime import nn
    model = nn.Sequential(nn.Pad([0, 0, 0, 0, 1, 1], mode="wrap"))
    kdl = kindling.save(model, tmp_path / "pad.kdl", metadata={"input_shape": [-1, 3, 5]})
    out = tmp_path / "pad.onnx"
    r = cli("export", "onnx", kdl, "-o", out, "--opset", "17")
    assert r.returncode == 1 and "wrap padding needs opset 19" in r.stderr and not out.exists()
    r = cli("export", "onnx", kdl, "-o", out, "--opset", "12")
    assert r.returncode == 1 and "kindling exports opsets 13 to" in r.stderr and not out.exists()
    assert cli("export", "onnx", kdl, "-o", out, "--opset", "19").returncode == 0 and out.exists()


def test_converting_and_exporting_import_no_reference_framework(tmp_path):
    code = ("import sys, numpy as np\n"
            "from kindling.runtime import nn\n"
            "from kindling.converters import onnx\n"
            "m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())\n"
            f"p = onnx.export(m, r'{tmp_path / 'm.onnx'}', input_shape=[1, 3, 8, 8])\n"
            "onnx.convert(p)\n"
            "print(sorted(n for n in ('onnxruntime', 'torch', 'cv2', 'tensorflow') if n in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
