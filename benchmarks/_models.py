"""The benchmark workloads, built twice with identical weights: once in kindling, once in PyTorch."""
from __future__ import annotations

import numpy as np

from kindling.runtime import nn

VGG_CONFIG = [64, 64, "P", 128, 128, "P", 256, 256, "P"]


def lenet():
    return nn.Sequential(
        nn.Conv2d(1, 20, 5, name="conv1"), nn.MaxPool2d(2, 2, name="pool1"),
        nn.Conv2d(20, 50, 5, name="conv2"), nn.MaxPool2d(2, 2, name="pool2"),
        nn.Flatten(name="flatten"), nn.Linear(800, 500, name="ip1"), nn.ReLU(name="relu1"),
        nn.Linear(500, 10, name="ip2"), nn.LogSoftmax(name="prob"), name="lenet")


def vgg_cnn():
    layers, c = [], 3
    for i, v in enumerate(VGG_CONFIG):
        if v == "P":
            layers.append(nn.MaxPool2d(2, 2, name=f"pool{i}"))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1, name=f"conv{i}"), nn.ReLU(name=f"relu{i}")]
            c = v
    layers += [nn.Flatten(name="flatten"), nn.Linear(256 * 4 * 4, 512, name="fc1"), nn.ReLU(name="relu_fc1"),
               nn.Linear(512, 10, name="fc2"), nn.LogSoftmax(name="prob")]
    return nn.Sequential(*layers, name="vgg_cnn")


def _basic_block(prefix: str, cin: int, cout: int, stride: int):
    body = nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False, name=f"{prefix}.conv1"), nn.BatchNorm2d(cout, name=f"{prefix}.bn1"),
        nn.ReLU(name=f"{prefix}.relu1"),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False, name=f"{prefix}.conv2"), nn.BatchNorm2d(cout, name=f"{prefix}.bn2"),
        name=f"{prefix}.body")
    if stride != 1 or cin != cout:
        shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False, name=f"{prefix}.downsample.0"),
                                 nn.BatchNorm2d(cout, name=f"{prefix}.downsample.1"), name=f"{prefix}.downsample")
    else:
        shortcut = nn.Identity(name=f"{prefix}.shortcut")
    return nn.Sequential(nn.Add(body, shortcut, name=f"{prefix}.add"), nn.ReLU(name=f"{prefix}.relu"), name=prefix)


def resnet18(num_classes: int = 1000):
    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False, name="conv1"), nn.BatchNorm2d(64, name="bn1"), nn.ReLU(name="relu"),
              nn.MaxPool2d(3, 2, 1, name="maxpool")]
    cin = 64
    for stage, cout in enumerate([64, 128, 256, 512], start=1):
        for b in range(2):
            stride = 2 if stage > 1 and b == 0 else 1
            layers.append(_basic_block(f"layer{stage}.{b}", cin, cout, stride))
            cin = cout
    layers += [nn.AvgPool2d(global_pooling=True, name="avgpool"), nn.Flatten(name="flatten"),
               nn.Linear(512, num_classes, name="fc")]
    return nn.Sequential(*layers, name="resnet18")


# ---- the PyTorch twins ------------------------------------------------------------------------
def torch_twin(model):
    """A torch.nn module computing the same function as a kindling Sequential built above, with
    the same weights and running statistics."""
    import torch
    tn = torch.nn

    def convert(m):
        kind = type(m).__name__
        if kind == "Sequential":
            return tn.Sequential(*[convert(c) for c in m.children()])
        if kind == "Add":
            body, shortcut = (convert(c) for c in m.children())
            return _TorchAdd(body, shortcut)
        cfg = m.config()
        if kind in _WEIGHTED:
            t = _WEIGHTED[kind](**cfg)
        else:
            return _SIMPLE[kind](**cfg)
        with torch.no_grad():
            for k, v in {**m.params, **m.buffers}.items():
                getattr(t, k).copy_(torch.from_numpy(np.asarray(v)))
        return t

    class _TorchAdd(tn.Module):
        def __init__(self, a, b):
            super().__init__()
            self.a, self.b = a, b

        def forward(self, x):
            return self.a(x) + self.b(x)

    _WEIGHTED = {
        "Conv2d": lambda in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: tn.Conv2d(
            in_channels, out_channels, tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation), groups, bias),
        "Linear": lambda in_features, out_features, bias: tn.Linear(in_features, out_features, bias),
        "BatchNorm2d": lambda num_features, eps, momentum, affine: tn.BatchNorm2d(num_features, eps, momentum, affine),
    }
    _SIMPLE = {
        "ReLU": lambda: tn.ReLU(),
        "Identity": lambda: tn.Identity(),
        "Flatten": lambda **cfg: tn.Flatten(),
        "LogSoftmax": lambda axis=1: tn.LogSoftmax(dim=axis),
        "MaxPool2d": lambda kernel_size, stride, padding, ceil_mode, **_: tn.MaxPool2d(kernel_size, stride, padding,
                                                                                      ceil_mode=ceil_mode),
        "AvgPool2d": lambda kernel_size, stride, padding, ceil_mode, global_pooling, **_: (
            tn.AdaptiveAvgPool2d(1) if global_pooling else tn.AvgPool2d(kernel_size, stride, padding, ceil_mode)),
    }
    return convert(model)


VGG16_CONFIG = [64, 64, "P", 128, 128, "P", 256, 256, 256, "P", 512, 512, 512, "P", 512, 512, 512, "P"]


def vgg16(num_classes: int = 1000):
    """VGG16 with Caffe's layer names (conv1_1 ... fc8): 138 M parameters, about 550 MB."""
    layers, c, block, idx = [], 3, 1, 1
    for v in VGG16_CONFIG:
        if v == "P":
            layers.append(nn.MaxPool2d(2, 2, name=f"pool{block}"))
            block, idx = block + 1, 1
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1, name=f"conv{block}_{idx}"), nn.ReLU(name=f"relu{block}_{idx}")]
            c, idx = v, idx + 1
    layers += [nn.Flatten(name="flatten"), nn.Linear(512 * 7 * 7, 4096, name="fc6"), nn.ReLU(name="relu6"),
               nn.Dropout(name="drop6"), nn.Linear(4096, 4096, name="fc7"), nn.ReLU(name="relu7"),
               nn.Dropout(name="drop7"), nn.Linear(4096, num_classes, name="fc8"), nn.Softmax(name="prob")]
    return nn.Sequential(*layers, name="VGG_ILSVRC_16_layers")


def vgg16_torchvision(num_classes: int = 1000):
    """VGG16 with torchvision's module names (features.0 ... classifier.6), so that a torchvision
    state_dict loads into it by name."""
    layers, c, i = [], 3, 0
    for v in VGG16_CONFIG:
        if v == "P":
            layers.append(nn.MaxPool2d(2, 2, name=f"features.{i}"))
            i += 1
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1, name=f"features.{i}"), nn.ReLU(name=f"features.{i + 1}")]
            c, i = v, i + 2
    layers += [nn.Flatten(name="flatten"), nn.Linear(512 * 7 * 7, 4096, name="classifier.0"),
               nn.ReLU(name="classifier.1"), nn.Dropout(name="classifier.2"),
               nn.Linear(4096, 4096, name="classifier.3"), nn.ReLU(name="classifier.4"),
               nn.Dropout(name="classifier.5"), nn.Linear(4096, num_classes, name="classifier.6")]
    return nn.Sequential(*layers, name="vgg16")
