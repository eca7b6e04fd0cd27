"""A new last layer for transfer learning: the classifier of a model brought in from elsewhere is
swapped for a freshly initialised one with a new name and class count (``fc8`` -> ``fc8_caltech256``),
so that loading the old weights by layer name leaves it alone.

    from kindling.runtime.head import new_head
    old, new = new_head(model, "fc8_caltech256", 257)

The classifier is the model's last Linear, or its last ungrouped Conv2d when that comes later:
SqueezeNet, NIN and Caffe's MobileNets classify with a 1x1 convolution before a global pooling.
"""
from __future__ import annotations

import contextlib

from . import init, nn
from .module import Module

#: mixed into the seed so that a head's weights do not repeat another use of the same seed (data order)
HEAD_SEED_PURPOSE = 0x4EAD


def _linear(old, name: str, classes: int) -> Module:
    return nn.Linear(old.in_features, classes, bias=old.has_bias, name=name)


def _conv2d(old, name: str, classes: int) -> Module:
    return nn.Conv2d(old.in_channels, classes, old.kernel_size, old.stride, old.padding, old.dilation,
                     bias=old.has_bias, name=name)


# type name -> how to make a fresh layer like it with another number of outputs
FRESH = {"Linear": _linear, "Conv2d": _conv2d}


def _run_order(module: Module):
    """Every module, containers first, children in the order they run (a Graph's nodes need not
    have been added in that order)."""
    yield module
    for child in module.order() if hasattr(module, "order") else module.children():
        yield from _run_order(child)


def classifier(model: Module) -> Module:
    """The layer that ``new_head`` replaces: the last Linear or ungrouped Conv2d, in the order the
    model runs its layers."""
    heads = [m for m in _run_order(model) if type(m).__name__ in FRESH and getattr(m, "groups", 1) == 1]
    if not heads:
        raise ValueError(f"model {model.name!r} has no Linear or Conv2d layer to replace by a new head")
    return heads[-1]


def new_head(model: Module, name: str, classes: int, seed: int | None = None) -> tuple[Module, Module]:
    """Replaces the classifier by a fresh layer called ``name`` with ``classes`` outputs; returns
    ``(old, new)``. The rest of the model, its weights and its wiring are kept. With ``seed`` the
    new weights are a function of it alone (``init.seeded``), else of the global generator."""
    if classes <= 0:
        raise ValueError(f"a new head needs a positive number of classes, got {classes}")
    old = classifier(model)
    if name != old.name and any(m.name == name for m in model.modules()):
        raise ValueError(f"model {model.name!r} already has a module named {name!r}")
    with init.seeded(seed, HEAD_SEED_PURPOSE) if seed is not None else contextlib.nullcontext():
        new = FRESH[type(old).__name__](old, name, classes)
    model.replace(old.name, new)
    return old, new
