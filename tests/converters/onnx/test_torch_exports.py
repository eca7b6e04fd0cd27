"""Files made by torch.onnx.export in the test (a LeNet, a ResNet-18 written here, a MobileNet-style
block) converted by kindling and run against onnxruntime on the same file, at several opsets,
with a fixed and a dynamic batch."""
import numpy as np
import pytest

import kindling
from kindling.converters import onnx as konnx

from onnx_nets import export, lenet, mobilenet_block, ort_run, resnet18


def _check(torch, module, shape, tmp_path, opset, dynamic, batch=3, tol=1e-4):
    path = export(torch, module, shape, tmp_path / f"m{opset}.onnx", opset, dynamic)
    model = konnx.convert(path).evaluate()
    x = np.random.default_rng(opset).standard_normal((batch, *shape[1:])).astype(np.float32)
    ours, theirs = np.asarray(model.forward(x)), ort_run(path, x)
    assert ours.shape == theirs.shape
    err = float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-6))
    assert err <= tol, f"opset {opset}: relative error {err:.3g} against onnxruntime"
    return model, path


@pytest.mark.parametrize("opset,dynamic", [(9, False), (13, True), (17, False)])
def test_lenet_from_torch_matches_onnxruntime(torch, tmp_path, opset, dynamic):
    net = lenet(torch)
    model, _ = _check(torch, net, (1, 1, 28, 28), tmp_path, opset, dynamic, batch=5)
    # weights stay addressable under the node names, as torch's exporter names them
    conv1 = next(m for m in model.modules() if m.name.startswith("conv1"))
    np.testing.assert_array_equal(conv1.params["weight"], net.conv1.weight.detach().numpy())
    assert type(model).__name__ == "Sequential"


@pytest.mark.parametrize("opset,dynamic", [(11, False), (17, True)])
def test_resnet18_from_torch_matches_onnxruntime(torch, tmp_path, opset, dynamic):
    model, _ = _check(torch, resnet18(torch), (1, 3, 64, 64), tmp_path, opset, dynamic, batch=2)
    assert sum(type(m).__name__ == "Conv2d" for m in model.modules()) == 20
    assert sum(type(m).__name__ == "Add" for m in model.modules()) == 8  # the residual joins


@pytest.mark.parametrize("opset,dynamic", [(11, True), (13, False), (17, True)])
def test_mobilenet_block_from_torch_matches_onnxruntime(torch, tmp_path, opset, dynamic):
    model, _ = _check(torch, mobilenet_block(torch), (1, 16, 12, 12), tmp_path, opset, dynamic)
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"Clip", "HardSigmoid", "Resize", "Concat"} <= kinds, kinds
    assert ("HardSwish" in kinds) == (opset >= 14), "HardSwish is an op from opset 14 (a Mul of HardSigmoid before)"


def test_converted_model_saves_loads_and_keeps_sources(torch, tmp_path):
    model, path = _check(torch, resnet18(torch), (1, 3, 32, 32), tmp_path, 13, True, batch=1)
    assert model.metadata["source"]["framework"] == "onnx"
    assert model.metadata["input_shape"] == [-1, 3, 32, 32]
    fc = next(m for m in model.modules() if type(m).__name__ == "Linear")
    assert model.sources[fc.name] == "output"  # the module computing the graph's output, by its ONNX name
    back = kindling.load(kindling.save(model, tmp_path / "r.kdl")).evaluate()
    x = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(back.forward(x), model.forward(x))
