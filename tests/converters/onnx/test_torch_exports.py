"""Files made by torch.onnx.export in the test (a LeNet, a ResNet-18 written here, a MobileNet-style
block) converted by kindling and run against onnxruntime on the same file, at several opsets,
with a fixed and a dynamic batch."""
import warnings

import numpy as np
import pytest

import kindling
from kindling.converters import onnx as konnx

ort = pytest.importorskip("onnxruntime")  # a test dependency (the test extra): a skip here means a broken install


def _ort(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    fixed = sess.get_inputs()[0].shape[0]
    if isinstance(fixed, int) and fixed != x.shape[0]:  # a file traced with batch 1: one image at a time
        return np.concatenate([sess.run(None, {name: x[i:i + fixed]})[0] for i in range(0, len(x), fixed)])
    return sess.run(None, {name: x})[0]


def _export(torch, module, shape, path, opset, dynamic):
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module, (torch.zeros(*shape),), str(path), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}} if dynamic else None)
    return path


def _check(torch, module, shape, tmp_path, opset, dynamic, batch=3, tol=1e-4):
    path = _export(torch, module, shape, tmp_path / f"m{opset}.onnx", opset, dynamic)
    model = konnx.convert(path).evaluate()
    x = np.random.default_rng(opset).standard_normal((batch, *shape[1:])).astype(np.float32)
    ours, theirs = np.asarray(model.forward(x)), _ort(path, x)
    assert ours.shape == theirs.shape
    err = float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-6))
    assert err <= tol, f"opset {opset}: relative error {err:.3g} against onnxruntime"
    return model, path


# ---- nets ----------------------------------------------------------------------------------------
def _lenet(torch):
    F = torch.nn.functional

    class LeNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = torch.nn.Conv2d(1, 20, 5), torch.nn.Conv2d(20, 50, 5)
            self.fc1, self.fc2 = torch.nn.Linear(800, 500), torch.nn.Linear(500, 10)

        def forward(self, x):
            x = F.max_pool2d(self.conv2(F.max_pool2d(self.conv1(x), 2)), 2)
            x = x.view(x.size(0), -1)  # Shape -> Gather -> Unsqueeze -> Concat -> Reshape
            return F.log_softmax(self.fc2(F.relu(self.fc1(x))), dim=1)
    return LeNet()


def _resnet18(torch):
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return torch.relu(y + (x if self.down is None else self.down(x)))

    class ResNet18(nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
            layers, cin = [], 64
            for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
                layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
                cin = cout
            self.layers = nn.Sequential(*layers)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, classes)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))

    net = ResNet18()
    with torch.no_grad():  # running statistics that are not the identity, so BatchNorm counts
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net


def _mobilenet_block(torch):
    """MobileNetV2/V3 pieces: an inverted residual with a depthwise convolution, ReLU6 (Clip),
    squeeze-and-excitation (global pooling, Hardsigmoid, a broadcast Mul), Hardswish, then an
    upsampling head (nearest Resize) and a concat."""
    nn = torch.nn

    class SE(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.fc1, self.fc2 = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)

        def forward(self, x):
            s = x.mean((2, 3), keepdim=True)
            return x * nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(s))))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.expand = nn.Sequential(nn.Conv2d(16, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6())
            self.dw = nn.Sequential(nn.Conv2d(64, 64, 3, 1, 1, groups=64, bias=False), nn.BatchNorm2d(64),
                                    nn.Hardswish())
            self.se = SE(64)
            self.project = nn.Sequential(nn.Conv2d(64, 16, 1, bias=False), nn.BatchNorm2d(16))
            self.head = nn.Conv2d(32, 8, 3, padding=1)

        def forward(self, x):
            y = x + self.project(self.se(self.dw(self.expand(x))))
            up = nn.functional.interpolate(nn.functional.avg_pool2d(y, 2), scale_factor=2, mode="nearest")
            return torch.sigmoid(self.head(torch.cat([y, up], 1)))
    return Block()


@pytest.mark.parametrize("opset,dynamic", [(9, False), (13, True), (17, False)])
def test_lenet_from_torch_matches_onnxruntime(torch, tmp_path, opset, dynamic):
    net = _lenet(torch)
    model, _ = _check(torch, net, (1, 1, 28, 28), tmp_path, opset, dynamic, batch=5)
    # weights stay addressable under the node names, as torch's exporter names them
    conv1 = next(m for m in model.modules() if m.name.startswith("conv1"))
    np.testing.assert_array_equal(conv1.params["weight"], net.conv1.weight.detach().numpy())
    assert type(model).__name__ == "Sequential"


@pytest.mark.parametrize("opset,dynamic", [(11, False), (17, True)])
def test_resnet18_from_torch_matches_onnxruntime(torch, tmp_path, opset, dynamic):
    model, _ = _check(torch, _resnet18(torch), (1, 3, 64, 64), tmp_path, opset, dynamic, batch=2)
    assert sum(type(m).__name__ == "Conv2d" for m in model.modules()) == 20
    assert sum(type(m).__name__ == "Add" for m in model.modules()) == 8  # the residual joins


@pytest.mark.parametrize("opset,dynamic", [(11, True), (13, False), (17, True)])
def test_mobilenet_block_from_torch_matches_onnxruntime(torch, tmp_path, opset, dynamic):
    model, _ = _check(torch, _mobilenet_block(torch), (1, 16, 12, 12), tmp_path, opset, dynamic)
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"Clip", "HardSigmoid", "Resize", "Concat"} <= kinds, kinds
    assert ("HardSwish" in kinds) == (opset >= 14), "HardSwish is an op from opset 14 (a Mul of HardSigmoid before)"


def test_converted_model_saves_loads_and_keeps_sources(torch, tmp_path):
    model, path = _check(torch, _resnet18(torch), (1, 3, 32, 32), tmp_path, 13, True, batch=1)
    assert model.metadata["source"]["framework"] == "onnx"
    assert model.metadata["input_shape"] == [-1, 3, 32, 32]
    fc = next(m for m in model.modules() if type(m).__name__ == "Linear")
    assert model.sources[fc.name] == "output"  # the module computing the graph's output, by its ONNX name
    back = kindling.load(kindling.save(model, tmp_path / "r.kdl")).evaluate()
    x = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(back.forward(x), model.forward(x))
