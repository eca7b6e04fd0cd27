"""--verify for PyTorch conversions: every module compared, in execution order, with the outputs the
PyTorch model stored (reference_outputs, run here with torch); a wrong layer is named first."""
import subprocess
import sys
from pathlib import Path

import numpy as np

from kindling.converters import pytorch
from kindling.converters.verify import NpzReference, verify
from torch_nets import kindling_resnet18, randomize, torch_lenet, torch_outputs, torch_resnet18

NETS = Path(__file__).resolve().parents[2] / "torch_nets.py"


def resnet_case(torch, tmp_path):
    reference = randomize(torch, torch_resnet18(torch))
    torch.save(reference.state_dict(), tmp_path / "resnet18.pt")
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    np.savez(tmp_path / "ref.npz", **pytorch.reference_outputs(reference, {"data": x}))
    return reference, x


def test_reference_outputs_hold_the_inputs_and_every_named_module(torch, tmp_path):
    reference, x = resnet_case(torch, tmp_path)
    with np.load(tmp_path / "ref.npz") as z:
        assert np.array_equal(z["data"], x)
        assert {"conv1", "layer1.0.bn2", "layer2.0.downsample.0", "layer4", "fc"} <= set(z.files)
        assert np.allclose(z["fc"], torch_outputs(torch, reference, x), atol=1e-6)
    assert reference.training is False


def test_a_converted_resnet18_matches_every_stored_layer_in_execution_order(torch, tmp_path):
    _, x = resnet_case(torch, tmp_path)
    model = pytorch.convert(tmp_path / "resnet18.pt", kindling_resnet18, inputs={"data": [1, 3, 64, 64]})
    report = verify(model, NpzReference(tmp_path / "ref.npz", ["data"]))
    compared = [r.module for r in report.rows if r.max_abs is not None]
    assert report.first_failure is None
    assert compared[:4] == ["conv1", "bn1", "maxpool", "layer1.0.conv1"] and compared[-1] == "fc"
    # every module both name: 20 convolutions, 20 batch norms, 3 downsample Sequentials, 8 blocks,
    # maxpool and fc (the kindling net has no layer1..layer4 containers: its blocks are a flat chain)
    assert len(compared) == 53 and "layer2.0.downsample" in compared and "layer3.1" in compared, compared
    assert all(r.max_rel <= 1e-5 for r in report.rows if r.max_abs is not None)
    skipped = {r.module for r in report.rows if r.max_abs is None}
    assert "layer1.0.relu1" in skipped and "layer1.0.add" in skipped  # functional in the torch model


def test_a_wrong_layer_is_named_first_and_nothing_after_it_is_compared(torch, tmp_path):
    resnet_case(torch, tmp_path)
    model = pytorch.convert(tmp_path / "resnet18.pt", kindling_resnet18, inputs={"data": [1, 3, 64, 64]})
    model.find("layer2.1.conv1").params["weight"][3] *= -1  # what a layout mix-up does to one layer
    report = verify(model, NpzReference(tmp_path / "ref.npz", ["data"]))
    assert report.first_failure.module == "layer2.1.conv1"
    assert report.rows[-1].module == "layer2.1.conv1"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "kindling", *map(str, args)], capture_output=True, text=True)


def test_cli_verify_against_stored_outputs(torch, tmp_path):
    reference = randomize(torch, torch_lenet(torch))
    torch.save(reference.state_dict(), tmp_path / "lenet.pt")
    x = np.random.default_rng(1).standard_normal((2, 1, 28, 28)).astype(np.float32)
    stored = pytorch.reference_outputs(reference, {"data": x})
    np.savez(tmp_path / "good.npz", **stored)
    out = tmp_path / "lenet.kdl"
    base = ["convert", "torch", "--weights", tmp_path / "lenet.pt", "--model-def", f"{NETS}:kindling_lenet",
            "-o", out, "--input", "data=1,1,28,28", "--verify"]
    r = cli(*base, "--reference", tmp_path / "good.npz")
    assert r.returncode == 0, r.stderr
    assert "verify: 4 of 8 layers compared with good.npz" in r.stdout and out.exists()
    out.unlink()
    stored["fc1"] = stored["fc1"] * 1.01
    np.savez(tmp_path / "bad.npz", **stored)
    r = cli(*base, "--reference", tmp_path / "bad.npz")
    assert r.returncode == 1 and "verify failed at fc1 (Linear)" in r.stderr and not out.exists()
    r = cli(*base)
    assert r.returncode == 1 and "--reference FILE.npz" in r.stderr and not out.exists()
