"""Nets written twice for the PyTorch converter tests: in torch (the reference, saved with
torch.save) and in kindling (the architecture the weights are loaded into, with PyTorch's module
names). Also factories for `kindling convert torch --model-def tests/torch_nets.py:NAME`."""
from __future__ import annotations

import numpy as np

from kindling.runtime import nn


def kindling_lenet():
    return nn.Sequential(
        nn.Conv2d(1, 20, 5, name="conv1"), nn.MaxPool2d(2, 2, name="pool1"),
        nn.Conv2d(20, 50, 5, name="conv2"), nn.MaxPool2d(2, 2, name="pool2"),
        nn.Flatten(name="flatten"), nn.Linear(800, 500, name="fc1"), nn.ReLU(name="relu"),
        nn.Linear(500, 10, name="fc2"), name="lenet")


def torch_lenet(torch):
    tn = torch.nn

    class LeNet(tn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = tn.Conv2d(1, 20, 5), tn.Conv2d(20, 50, 5)
            self.fc1, self.fc2 = tn.Linear(800, 500), tn.Linear(500, 10)

        def forward(self, x):
            x = torch.max_pool2d(self.conv1(x), 2, 2)
            x = torch.max_pool2d(self.conv2(x), 2, 2)
            return self.fc2(torch.relu(self.fc1(x.flatten(1))))

    return LeNet()


# ---- ResNet-18, written twice (torchvision's module names) -------------------------------------------------
def torch_resnet18(torch, num_classes=10):
    tn = torch.nn

    class BasicBlock(tn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = tn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = tn.BatchNorm2d(cout)
            self.conv2 = tn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = tn.BatchNorm2d(cout)
            self.downsample = (tn.Sequential(tn.Conv2d(cin, cout, 1, stride, bias=False), tn.BatchNorm2d(cout))
                               if stride != 1 or cin != cout else None)

        def forward(self, x):
            y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(y + (self.downsample(x) if self.downsample is not None else x))

    class ResNet18(tn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = tn.Conv2d(3, 64, 7, 2, 3, bias=False), tn.BatchNorm2d(64)
            self.maxpool = tn.MaxPool2d(3, 2, 1)
            cin = 64
            for stage, cout in enumerate([64, 128, 256, 512], start=1):
                stride = 1 if stage == 1 else 2
                setattr(self, f"layer{stage}", tn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
                cin = cout
            self.fc = tn.Linear(512, num_classes)

        def forward(self, x):
            x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(x.mean((2, 3)))

    return ResNet18()


def kindling_resnet18(num_classes=10):
    def block(prefix, cin, cout, stride):
        body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False, name=f"{prefix}.conv1"), nn.BatchNorm2d(cout, name=f"{prefix}.bn1"),
            nn.ReLU(name=f"{prefix}.relu1"),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False, name=f"{prefix}.conv2"), nn.BatchNorm2d(cout, name=f"{prefix}.bn2"),
            name=f"{prefix}.body")
        shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False, name=f"{prefix}.downsample.0"),
                                  nn.BatchNorm2d(cout, name=f"{prefix}.downsample.1"), name=f"{prefix}.downsample")
                    if stride != 1 or cin != cout else nn.Identity(name=f"{prefix}.identity"))
        return nn.Sequential(nn.Add(body, shortcut, name=f"{prefix}.add"), nn.ReLU(name=f"{prefix}.relu"), name=prefix)

    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False, name="conv1"), nn.BatchNorm2d(64, name="bn1"), nn.ReLU(name="relu"),
              nn.MaxPool2d(3, 2, 1, name="maxpool")]
    cin = 64
    for stage, cout in enumerate([64, 128, 256, 512], start=1):
        for b in range(2):
            layers.append(block(f"layer{stage}.{b}", cin, cout, 2 if stage > 1 and b == 0 else 1))
            cin = cout
    layers += [nn.AvgPool2d(global_pooling=True, name="avgpool"), nn.Flatten(name="flatten"),
               nn.Linear(512, num_classes, name="fc")]
    return nn.Sequential(*layers, name="resnet18")


def randomize(torch, model, seed: int = 0):
    """Non-degenerate weights and BatchNorm statistics (a fresh BatchNorm is the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(7)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif name.endswith("bn1.weight") or name.endswith("bn2.weight") or ".downsample.1.weight" in name:
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                fan_in = int(np.prod(t.shape[1:])) or 1
                t.copy_(torch.randn(t.shape, generator=g) / fan_in ** 0.5)
    return model.eval()


def torch_outputs(torch, model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()
