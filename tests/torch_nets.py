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
